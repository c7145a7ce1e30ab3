"""SPIFFE identities as Istio writes them: ``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``
(istio/istio ``pkg/spiffe/spiffe.go``). The Rust core formats and checks the
same form (``native/src/mesh.rs``); ``tests/cases/mesh.cases`` holds both
suites' cases."""

from __future__ import annotations

from dataclasses import dataclass

from pymesh.mesh.defaults import DEFAULT_TRUST_DOMAIN
from pymesh.mesh.errors import AuthError

SCHEME = "spiffe://"


@dataclass(frozen=True)
class Identity:
    trust_domain: str
    namespace: str
    service_account: str

    @property
    def uri(self) -> str:
        return spiffe_uri(self.trust_domain, self.namespace, self.service_account)

    def __str__(self) -> str:
        return self.uri


def spiffe_uri(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"


def _label_ok(s: str) -> bool:
    # Kubernetes names: DNS-1123 labels/subdomains; reject anything that could smuggle a '/'.
    return bool(s) and len(s) <= 253 and all(c.isascii() and (c.isalnum() or c in "-.") for c in s)


def identity(namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Identity:
    for what, v in (("namespace", namespace), ("service account", service_account), ("trust domain", trust_domain)):
        if not _label_ok(v):
            raise AuthError(f"{what} {v!r} is not a valid name (lower-case letters, digits, '-', '.')")
    return Identity(trust_domain, namespace, service_account)


def parse_spiffe(uri: str) -> Identity:
    """``spiffe://td/ns/NS/sa/SA`` → Identity; anything else is an AuthError."""
    if not uri.startswith(SCHEME):
        raise AuthError(f"identity {uri!r} is not a spiffe:// URI")
    parts = uri[len(SCHEME) :].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        raise AuthError(f"identity {uri!r} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<account>")
    return identity(parts[2], parts[4], parts[0])


def workload_spiffe(namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The identity a workload's endpoint carries in EDS (``""`` without a
    service account), as istiod fills ``istio.service_account``."""
    return spiffe_uri(trust_domain, namespace, service_account) if service_account else ""

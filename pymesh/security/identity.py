"""SPIFFE identities as Istio writes them: ``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``
(istio ``pkg/spiffe``), and the identity checks of ``pilot/pkg/xds/auth.go`` and
``ensureProxyCanControlEntry`` (shared/reference/istio-vm-workloads.md §2.5)."""

from __future__ import annotations

from dataclasses import dataclass

from pymesh.security.errors import AuthError

DEFAULT_TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Identity:
    trust_domain: str
    namespace: str
    service_account: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri


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
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        raise AuthError(f"identity {uri!r} is not a spiffe:// URI")
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        raise AuthError(f"identity {uri!r} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<account>")
    return identity(parts[2], parts[4], parts[0])


def verify_proxy(identities: list[Identity], namespace: str, service_account: str = "") -> Identity:
    """istiod's xDS authorization: the first identity whose namespace is the
    proxy's and, when the node metadata names a service account, whose account
    is that one. None: PERMISSION_DENIED naming both sides."""
    for ident in identities:
        if ident.namespace == namespace and (not service_account or ident.service_account == service_account):
            return ident
    have = ", ".join(i.uri for i in identities) or "none"
    want = f"namespace {namespace!r}" + (f", service account {service_account!r}" if service_account else "")
    raise AuthError(
        f"authenticated identity ({have}) does not match the proxy's metadata ({want})", code="PERMISSION_DENIED"
    )


def check_entry(ident: Identity, namespace: str, service_account: str, what: str) -> None:
    """``ensureProxyCanControlEntry``: the identity's namespace must be the
    entry's (group's) and, when the template sets a service account, its account
    too. An empty template account lets any account of the namespace register,
    as in Istio."""
    if ident.namespace != namespace:
        raise AuthError(
            f"identity {ident.uri} may not register in namespace {namespace!r} ({what})", code="PERMISSION_DENIED"
        )
    if service_account and ident.service_account != service_account:
        raise AuthError(
            f"identity {ident.uri} is not service account {service_account!r} required by {what}",
            code="PERMISSION_DENIED",
        )

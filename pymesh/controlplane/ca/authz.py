"""The CA's and the xDS server's identity checks: istiod's xDS authorization
(istio/istio ``pilot/pkg/xds/auth.go``, ``authenticate`` / ``checkConnectionIdentity``)
and ``ensureProxyCanControlEntry`` (``pilot/pkg/autoregistration/controller.go``)."""

from __future__ import annotations

from pymesh.mesh.errors import AuthError
from pymesh.mesh.identity import Identity


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

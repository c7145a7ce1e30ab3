"""The control plane's certificate authority: the CA (:mod:`.ca`), bootstrap
tokens (:mod:`.tokens`), the ``IstioCertificateService`` and the identity
checks on xDS streams (:mod:`.service`, :mod:`.authz`), the TLS port
(:mod:`.tlsfront`) and the ``pymesh ca`` / ``pymesh token`` commands
(:mod:`.cli`). It runs inside the control plane's process, as istiod's CA
does (istio/istio ``security/pkg/server/ca``); the VM's side (fetching and
renewing its certificate) is ``pymesh.agent.certs``. Heavy parts (gRPC)
load only when used."""

from pymesh.controlplane.ca.errors import AuthError, CaError, SecurityError, TokenError

__all__ = ["AuthError", "CaError", "SecurityError", "TokenError"]

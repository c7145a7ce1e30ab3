"""pymesh's security: the mesh CA, bootstrap tokens, the TLS port and the
identity checks (issue 7). Heavy parts (gRPC, the CA service) load only
when used."""

from pymesh.security.errors import AuthError, CaError, SecurityError, TokenError
from pymesh.security.identity import Identity, identity, parse_spiffe

__all__ = ["AuthError", "CaError", "Identity", "SecurityError", "TokenError", "identity", "parse_spiffe"]

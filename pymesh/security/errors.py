"""The security layer's errors: every one is a ``pymesh.PymeshError``."""

from __future__ import annotations

from pymesh._native import PymeshError


class SecurityError(PymeshError):
    """Base class of the security layer's errors."""


class CaError(SecurityError):
    """The CA cannot load or create its keys, or cannot sign a request
    (a malformed CSR, a plug-in file that does not parse); names the file or field."""


class TokenError(SecurityError):
    """A bootstrap token is malformed, badly signed, for another audience, or expired."""


class AuthError(SecurityError):
    """A caller is not authenticated or not allowed what it asks (``code`` is
    the gRPC status name the call or stream fails with)."""

    def __init__(self, message: str, *, code: str = "UNAUTHENTICATED") -> None:
        self.code = code
        super().__init__(message)

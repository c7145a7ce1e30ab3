"""The CA's errors: every one is a ``pymesh.PymeshError``. ``SecurityError``
and ``AuthError`` are the mesh's (:mod:`pymesh.mesh.errors`), shared with the
agent's certificate code; the CA adds its own two."""

from __future__ import annotations

from pymesh.mesh.errors import AuthError, SecurityError


class CaError(SecurityError):
    """The CA cannot load or create its keys, or cannot sign a request
    (a malformed CSR, a plug-in file that does not parse); names the file or field."""


class TokenError(SecurityError):
    """A bootstrap token is malformed, badly signed, for another audience, or expired."""


__all__ = ["AuthError", "CaError", "SecurityError", "TokenError"]

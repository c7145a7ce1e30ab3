"""Errors raised by the mesh's conventions. Every one is a
``pymesh.PymeshError``; processes convert them to their own where a caller
needs a file, line or gRPC code attached."""

from __future__ import annotations

from pymesh._native import PymeshError


class MeshError(PymeshError):
    """A value does not follow one of the mesh's conventions."""


class AddressError(MeshError, ValueError):
    """Not a ``host:port`` (or the port is out of range)."""


class ValueFormatError(MeshError, ValueError):
    """A duration, boolean or similar setting that does not parse."""


class ProbeError(MeshError, ValueError):
    """A readiness probe specification is invalid; ``field`` is the JSON path
    of the offending field inside the probe ("" for the probe itself) and
    ``reason`` the message without it."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class XdsResourceError(MeshError, ValueError):
    """An xDS resource of the wrong type or that does not decode."""


class SecurityError(PymeshError):
    """Base class of the errors about certificates, keys, tokens and identities."""


class AuthError(SecurityError):
    """A caller is not authenticated or not allowed what it asks (``code`` is
    the gRPC status name the call or stream fails with), or an identity is
    not a valid SPIFFE identity."""

    def __init__(self, message: str, *, code: str = "UNAUTHENTICATED") -> None:
        self.code = code
        super().__init__(message)

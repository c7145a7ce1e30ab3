"""The agent's errors: every one is a ``pymesh.PymeshError``."""

from __future__ import annotations

from pymesh._native import PymeshError
from pymesh.mesh.errors import ProbeError


class AgentError(PymeshError):
    """Base class of the VM agent's errors."""


class BootstrapError(AgentError):
    """A bootstrap file (cluster.env, mesh.yaml, root-cert.pem, istio-token,
    hosts) cannot be read or is malformed. Names the file, the line (when
    one is known) and the key, so the message alone says what to fix."""

    def __init__(self, message: str, *, file: str = "", line: int = 0, key: str = "") -> None:
        self.file = file
        self.line = line
        self.key = key
        self.reason = message
        where = file + (f":{line}" if line else "")
        parts = [p for p in (where, f"key {key}" if key else "") if p]
        super().__init__(f"{': '.join(parts)}: {message}" if parts else message)


class XdsClientError(AgentError):
    """A push could not be applied (the reason is sent back as the NACK)."""


class StateError(AgentError):
    """The state directory cannot be written."""


__all__ = ["AgentError", "BootstrapError", "ProbeError", "StateError", "XdsClientError"]

"""pymesh's control plane: Istio-style resources (Service, Pod,
WorkloadGroup, WorkloadEntry, ServiceEntry, DestinationRule,
PeerAuthentication), service association, VM auto-registration and
health, and an ADS server (SotW and delta) whose CDS/EDS/LDS/RDS gRPC's
own xDS client consumes, whose NDS table the pymesh agent's DNS proxy
loads and whose ``virtualInbound`` listener carries a sidecar's mTLS mode.

Embed it with :class:`ControlPlane`; run it with ``pymesh controlplane``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymesh.controlplane.errors import (
    ControlPlaneError,
    NodeError,
    RegistrationError,
    StoreError,
    ValidationError,
)
from pymesh.controlplane.store import default_data_dir

if TYPE_CHECKING:
    from pymesh.controlplane.server import ControlPlane


def __getattr__(name: str) -> Any:
    # ControlPlane (and with it gRPC) loads on first use, so `pymesh` commands
    # that only build the CLI parser do not pay for it.
    if name == "ControlPlane":
        from pymesh.controlplane.server import ControlPlane

        return ControlPlane
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ControlPlane",
    "ControlPlaneError",
    "NodeError",
    "RegistrationError",
    "StoreError",
    "ValidationError",
    "default_data_dir",
]

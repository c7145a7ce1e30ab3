"""pymesh's control plane: Istio-style resources (Service, Pod,
WorkloadGroup, WorkloadEntry, ServiceEntry, DestinationRule), service
association, VM auto-registration and health, and an ADS server (SotW and
delta) whose CDS/EDS/LDS/RDS gRPC's own xDS client consumes and whose NDS
table the pymesh agent's DNS proxy loads.

Embed it with :class:`ControlPlane`; run it with ``pymesh controlplane``.
"""

from __future__ import annotations

from pymesh.controlplane.errors import (
    ControlPlaneError,
    NodeError,
    RegistrationError,
    StoreError,
    ValidationError,
)
from pymesh.controlplane.server import ControlPlane
from pymesh.controlplane.store import default_data_dir

__all__ = [
    "ControlPlane",
    "ControlPlaneError",
    "NodeError",
    "RegistrationError",
    "StoreError",
    "ValidationError",
    "default_data_dir",
]

"""Defaults shared by the control plane and its CLI (a light module: the
``pymesh`` parser imports it without loading gRPC)."""

from __future__ import annotations

# istiod's PILOT_WORKLOAD_ENTRY_GRACE_PERIOD.
DEFAULT_GRACE_PERIOD = 10.0
# istiod serves plaintext xDS on 15010.
DEFAULT_XDS_LISTEN = "127.0.0.1:15010"
DEFAULT_DEBOUNCE = 0.1
# A replica's etcd lease (pymesh.controlplane.replicas): its VMs are released this long after it dies.
DEFAULT_LEASE_TTL = 10
# ADS streams being set up at once (pymesh.controlplane.ads admission). Each holds a registration
# write to the store (etcd: one or two transactions of a few ms, 4 at a time in
# pymesh.controlplane.replicas); 64 keeps the last admitted one's wait near a quarter second on
# loopback and refuses the rest of a reconnect flood at once, to be retried elsewhere.
DEFAULT_MAX_PENDING_STREAMS = 64

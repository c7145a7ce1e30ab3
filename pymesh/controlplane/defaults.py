"""Defaults shared by the control plane and its CLI (a light module: the
``pymesh`` parser imports it without loading gRPC)."""

from __future__ import annotations

# istiod's PILOT_WORKLOAD_ENTRY_GRACE_PERIOD.
DEFAULT_GRACE_PERIOD = 10.0
# istiod serves plaintext xDS on 15010.
DEFAULT_XDS_LISTEN = "127.0.0.1:15010"
DEFAULT_DEBOUNCE = 0.1

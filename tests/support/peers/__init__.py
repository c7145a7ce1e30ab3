"""Programs the tests run as subprocesses (``python PATH ARGS``), often inside a network
namespace and as another user, with PYTHONPATH set to the repository root. Each is a script
first (run by its path below); none imports the support package.

- ``netns_peer.py``: TCP/UDP servers and clients, the outbound proxy, capture rules (netns tier).
- ``netns_mtls_peer.py``: the two sides of workload mTLS between namespaces.
- ``e2e_http.py``: the HTTP servers and client of the VM end-to-end test.
- ``e2e_mtls_peer.py``: a STRICT-mTLS pod and an mTLS client for the end-to-end test with mTLS.
- ``cp_xds_client.py``: gRPC's own xDS client (one XdsClient per process).
- ``http_backend.py``: HTTP/1.1, resetting and gRPC backends, a raw-bytes and a gRPC client
  (the HTTP relay tests).
- ``cp_agents.py``: a fleet of simulated VM agents, real ADS streams (the replica fault tests and
  the control-plane benchmarks; driven through ``support.fleet``).
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
NETNS_PEER = str(_HERE / "netns_peer.py")
NETNS_MTLS_PEER = str(_HERE / "netns_mtls_peer.py")
E2E_HTTP = str(_HERE / "e2e_http.py")
E2E_MTLS_PEER = str(_HERE / "e2e_mtls_peer.py")
CP_XDS_CLIENT = str(_HERE / "cp_xds_client.py")
HTTP_BACKEND = str(_HERE / "http_backend.py")
CP_AGENTS = str(_HERE / "cp_agents.py")

"""gRPC's own xDS client, run as a subprocess by the control-plane tests:
``cp_xds_client.py TARGET CALLS [NAME=VALUE...]`` (bootstrap in GRPC_XDS_BOOTSTRAP_CONFIG).
Calls /pymesh.test.Echo/Who CALLS times through ``xds:///TARGET`` and prints
``{"counts": {backend: n}, "errors": [...]}``."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import grpc


def main() -> int:
    target, calls = sys.argv[1], int(sys.argv[2])
    # Optional "name=value" gRPC metadata (a consistent-hash key).
    metadata = tuple(tuple(a.split("=", 1)) for a in sys.argv[3:])
    counts: Counter[str] = Counter()
    errors: list[str] = []
    with grpc.insecure_channel(f"xds:///{target}") as channel:
        who = channel.unary_unary("/pymesh.test.Echo/Who")
        # One uncounted call resolves the xDS config; round robin then connects every
        # endpoint's subchannel, so a short pause lets the counted calls see them all.
        try:
            who(b"", timeout=20, wait_for_ready=True, metadata=metadata)
        except grpc.RpcError as e:
            errors.append(f"{e.code().name}: {e.details()}")
        time.sleep(0.3)
        for _ in range(calls):
            try:
                counts[who(b"", timeout=20, wait_for_ready=True, metadata=metadata).decode()] += 1
            except grpc.RpcError as e:
                errors.append(f"{e.code().name}: {e.details()}")
    print(json.dumps({"counts": dict(counts), "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

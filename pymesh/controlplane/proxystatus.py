"""``pymesh proxy-status``: every connected proxy's xDS sync state, as
``istioctl proxy-status`` prints it (``istioctl/pkg/writer/pilot/status.go``):
one row per proxy, the columns NAME, CLUSTER, then the status of each type
(SYNCED / NOT SENT / STALE, :mod:`pymesh.controlplane.adminapi`), ISTIOD (the
replica holding the stream) and VERSION (the proxy's ``ISTIO_VERSION``).

It reads ``/api/v1/proxies`` on the control plane's monitoring port:
``--control-plane URL`` (repeatable, or comma-separated: one per replica,
as istioctl asks every istiod, since each knows only its own streams), else
``$PYMESH_CONTROL_PLANE``, else ``http://127.0.0.1:15014`` (istiod's monitoring
port, where ``pymesh controlplane --monitoring-listen 127.0.0.1:15014`` serves
it). A type whose last response was NACKed shows ``STALE (NACK)`` and the NACK's
message is written to stderr, so the table stays one line per proxy.
``-o json``: ``{"proxies": [...]}``, the API's rows of every replica asked.

Standard library only (``urllib``): the command loads no gRPC, YAML or
control-plane state, and starts as fast as ``pymesh get``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from pymesh.controlplane.errors import ControlPlaneError
from pymesh.mesh.defaults import MONITORING_PORT

ENV = "PYMESH_CONTROL_PLANE"
DEFAULT_URL = f"http://127.0.0.1:{MONITORING_PORT}"
TYPES = ("CDS", "LDS", "EDS", "RDS", "NDS")  # adminapi.TYPES, without importing the server side
HEADER = ("NAME", "CLUSTER", *TYPES, "ISTIOD", "VERSION")
TIMEOUT = 10.0


def control_planes(flags: list[str] | None) -> list[str]:
    given = flags or [os.environ.get(ENV) or DEFAULT_URL]
    urls = [u.strip() for f in given for u in f.split(",") if u.strip()]
    return [u if "://" in u else f"http://{u}" for u in urls]


def fetch(base: str, path: str) -> Any:
    url = base.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ControlPlaneError(
            f"cannot read {url}: {reason} (is the control plane's monitoring port there? --control-plane URL or ${ENV})"
        ) from None


def _cell(w: dict[str, Any]) -> str:
    status = str(w.get("status") or "NOT SENT")
    return f"{status} (NACK)" if w.get("nacked") else status


def rows(proxies: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    out = []
    for p in sorted(proxies, key=lambda p: (p.get("proxyId", ""), p.get("replica", ""))):
        xds = p.get("xds") or {}
        out.append(
            (
                p.get("proxyId") or p.get("nodeId", "?"),
                p.get("clusterId") or "-",
                *(_cell(xds.get(t) or {}) for t in TYPES),
                p.get("replica") or "-",
                p.get("istioVersion") or "-",
            )
        )
    return out


def table(lines: list[tuple[str, ...]]) -> str:
    """Columns padded as Go's tabwriter pads istioctl's (minimum width, padding 3)."""
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines)


def cmd_proxy_status(args: argparse.Namespace) -> int:
    proxies: list[dict[str, Any]] = []
    for base in control_planes(args.control_plane):
        proxies += fetch(base, "/api/v1/proxies").get("proxies") or []
    if args.output == "json":
        print(json.dumps({"proxies": proxies}, indent=2, sort_keys=True))
        return 0
    print(table([HEADER, *rows(proxies)]))
    for p in proxies:
        for t in TYPES:
            w = (p.get("xds") or {}).get(t) or {}
            if w.get("nacked") and w.get("lastNack"):
                print(f"{p.get('proxyId')} {t} NACK: {w['lastNack'].get('message', '')}", file=sys.stderr)
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("proxy-status", help="every connected proxy's xDS sync state, as istioctl proxy-status")
    p.add_argument(
        "--control-plane",
        action="append",
        metavar="URL",
        help=f"the control plane's monitoring port (repeatable or comma-separated, one per replica; "
        f"default ${ENV}, else {DEFAULT_URL})",
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_proxy_status)

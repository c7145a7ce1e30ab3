"""The agent's local status port (istio-agent's 15020, localhost only).

- ``GET /healthz/ready``: 200 once the agent holds a cluster set to route
  with (a CDS push applied, from the control plane or the saved state) and its DNS proxy runs when
  enabled; 503 with the reason otherwise. Istio answers this for Envoy's
  readiness; here it says the data path has tables.
- ``GET /debug/ndsz``: the name table as JSON (istio-agent's debug view).
- ``GET /debug/clusters``: every cluster's endpoints as the lbtable sees them.
- ``GET /debug/status``: :meth:`Agent.status`.
- ``GET /metrics`` (also ``/stats/prometheus``): the DNS proxy's metrics and
  the agent's own (``pymesh_agent_*``).
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from pymesh.agent.errors import AgentError

if TYPE_CHECKING:
    from pymesh.agent.agent import Agent


def ready(agent: Agent) -> tuple[bool, str]:
    if not agent.synced:
        return False, "no clusters yet (no push from the control plane and no saved state)"
    if agent.dns_enabled and (agent.dns is None or not agent.dns.server.running):
        return False, "DNS proxy not running"
    return True, "ready"


def metrics(agent: Agent) -> str:
    st = agent.status()
    stats = st["stats"]
    lines = [
        "# HELP pymesh_agent_xds_connected 1 while an ADS stream to the control plane is up.",
        "# TYPE pymesh_agent_xds_connected gauge",
        f"pymesh_agent_xds_connected {1 if st['xds'] == 'connected' else 0}",
        "# TYPE pymesh_agent_xds_responses_total counter",
        f"pymesh_agent_xds_responses_total {stats.get('responses', 0)}",
        "# TYPE pymesh_agent_xds_acks_total counter",
        f"pymesh_agent_xds_acks_total {stats.get('acks', 0)}",
        "# TYPE pymesh_agent_xds_nacks_total counter",
        f"pymesh_agent_xds_nacks_total {stats.get('nacks', 0)}",
        "# TYPE pymesh_agent_xds_stream_failures_total counter",
        f"pymesh_agent_xds_stream_failures_total {stats.get('failures', 0)}",
        "# TYPE pymesh_agent_clusters gauge",
        f"pymesh_agent_clusters {st['clusters']}",
        "# TYPE pymesh_agent_endpoints gauge",
        f"pymesh_agent_endpoints {st['endpoints']}",
        "# TYPE pymesh_agent_names gauge",
        f"pymesh_agent_names {st['names']}",
        "# HELP pymesh_agent_healthy The readiness probe's last state (1 healthy, 0 unhealthy, -1 none yet).",
        "# TYPE pymesh_agent_healthy gauge",
        f"pymesh_agent_healthy {-1 if st['health'] is None else int(bool(st['health'][0]))}",
    ]
    out = "\n".join(lines) + "\n"
    if agent.dns is not None:
        out += agent.dns.server.metrics_text()
    return out


class StatusServer:
    def __init__(self, agent: Agent, listen: str) -> None:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise AgentError(f"status listen address {listen!r}: expected ADDRESS:PORT")
        host = host.strip("[]") or "127.0.0.1"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                code, ctype, body = 200, "application/json", b""
                if path == "/healthz/ready":
                    ok, why = ready(agent)
                    code, ctype, body = (200 if ok else 503), "text/plain", why.encode()
                elif path == "/debug/ndsz":
                    names = agent.names
                    body = json.dumps(list(names) if names is not None else [], indent=1).encode()
                elif path == "/debug/clusters":
                    data: dict[str, Any] = agent.endpoints()
                    body = json.dumps(data, indent=1).encode()
                elif path == "/debug/status":
                    body = json.dumps(agent.status(), indent=1, default=str).encode()
                elif path in ("/metrics", "/stats/prometheus"):
                    ctype, body = "text/plain; version=0.0.4", metrics(agent).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        try:
            self.server = Server((host, int(port)), Handler)
        except OSError as e:
            raise AgentError(f"status port {listen}: {e.strerror or e}") from e
        bound_host, bound_port = str(self.server.server_address[0]), int(self.server.server_address[1])
        self.address = f"[{bound_host}]:{bound_port}" if family == socket.AF_INET6 else f"{bound_host}:{bound_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="pymesh-agent-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

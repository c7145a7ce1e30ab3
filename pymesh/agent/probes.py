"""The WorkloadGroup readiness probe, run on the VM as istio-agent runs it
(istio/istio ``pkg/istio-agent/health``: ``health_check.go``,
``health_probers.go``). The probe's model and validation are
:mod:`pymesh.mesh.probe`, shared with the control plane.

The probe comes from mesh.yaml ``defaultConfig.readinessProbe`` (istioctl
copies the group's ``probe`` there; istiod never pushes it). One of:

- ``httpGet`` {path, port, host, scheme, httpHeaders}: GET, 2xx-3xx healthy;
  ``User-Agent: istio-probe/1.0`` unless given, ``Connection: close``, a
  ``Host`` header sets the request host, HTTPS does not verify the
  certificate;
- ``tcpSocket`` {host, port}: a connect within the timeout is healthy;
- ``exec`` {command}: exit status 0 is healthy; killed at the timeout;
- ``grpc`` {port, service}: ``grpc.health.v1.Health/Check`` on the default
  host, ``SERVING`` is healthy. The request and response are encoded here
  (two fields), so no grpcio-health-checking dependency is needed; a
  ``NOT_SERVING`` answer is reported with its status name (istio-agent
  dereferences a nil error there: ``GRPCProber.Probe`` in health_probers.go).

Timing: sleep ``initialDelaySeconds``, probe at once, then every
``periodSeconds``, each attempt bounded by ``timeoutSeconds``. Defaults are
the agent's effective ones (``fillInDefaults``): timeout 1, period 10,
success threshold 1, failure threshold **1** — istio-agent's code, not the
documented 3, so a VM behaves as it did under Istio. Non-integral seconds
are accepted (a pymesh extension; tests use short periods).

State machine: consecutive successes / failures are counted; only
transitions are reported — healthy after ``successThreshold`` successes,
unhealthy (with the probe's error text) after ``failureThreshold``
failures; the first report may be either.

Source address: HTTP and TCP probes of a local destination (loopback or one
of the VM's own IPs) are sent from 127.0.0.6, which istio-iptables' rules
return before the inbound redirect; a remote destination is probed from an
unbound socket (istio/istio#34407: binding 127.0.0.6 breaks NATed IPs).
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Collection

from pymesh.mesh.errors import ProbeError
from pymesh.mesh.probe import KINDS, ProbeSpec, parse_probe

log = logging.getLogger(__name__)

USER_AGENT = "istio-probe/1.0"
PROBE_SOURCE_V4 = "127.0.0.6"
GRPC_HEALTH_METHOD = "/grpc.health.v1.Health/Check"
# grpc.health.v1.HealthCheckResponse.ServingStatus
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}

__all__ = ["KINDS", "Probe", "ProbeError", "ProbeSpec", "Prober", "parse_probe"]


# --- one attempt ------------------------------------------------------------------------


def _source_for(host: str, local_ips: Collection[str]) -> str | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return PROBE_SOURCE_V4 if host == "localhost" else None
    if ip.version == 4 and (ip.is_loopback or str(ip) in local_ips):
        return PROBE_SOURCE_V4
    return None


def _connect(host: str, port: int, timeout: float, source: str | None) -> socket.socket:
    if source is not None:
        try:
            return socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
        except OSError as e:
            import errno

            if e.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.ENETUNREACH):
                raise
            # 127.0.0.6 not usable here (lo down, no route): probe unbound.
    return socket.create_connection((host, port), timeout=timeout)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def encode_health_request(service: str) -> bytes:
    """``grpc.health.v1.HealthCheckRequest{service}`` wire bytes."""
    if not service:
        return b""
    raw = service.encode()
    n = len(raw)
    out = bytearray(b"\x0a")
    while True:
        if n < 0x80:
            out.append(n)
            break
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(out) + raw


def decode_health_response(data: bytes) -> int:
    """The ``status`` of a ``HealthCheckResponse`` (0 when absent, as proto3)."""
    i = status = 0
    while i < len(data):
        tag, i = _varint(data, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _varint(data, i)
            if field == 1:
                status = v
        elif wire == 2:
            n, i = _varint(data, i)
            if i + n > len(data):
                raise ValueError("truncated field")
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(data):
            raise ValueError("truncated field")
    return status


class Probe:
    """Runs one probe attempt: ``check()`` returns (healthy, message)."""

    def __init__(self, spec: ProbeSpec, *, default_host: str = "localhost", local_ips: Collection[str] = ()) -> None:
        self.spec = spec
        self.default_host = default_host
        self.local_ips = frozenset(local_ips)

    def check(self) -> tuple[bool, str]:
        try:
            return getattr(self, f"_check_{self.spec.kind}")()  # type: ignore[no-any-return]
        except Exception as e:  # a probe failure of any kind is a result, never a crash
            return False, f"{type(e).__name__}: {e}"

    def _check_httpGet(self) -> tuple[bool, str]:
        s = self.spec
        host = s.host or self.default_host
        headers = list(s.headers)
        names = {n.lower() for n, _ in headers}
        conn: http.client.HTTPConnection
        source = _source_for(host, self.local_ips)
        sock = _connect(host, s.port, s.timeout, source)
        if s.scheme == "https":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            # Istio's HTTP prober skips verification (health_probers.go: InsecureSkipVerify).
            ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(host, s.port, timeout=s.timeout, context=ctx)
            sock = ctx.wrap_socket(sock, server_hostname=host)
        else:
            conn = http.client.HTTPConnection(host, s.port, timeout=s.timeout)
        conn.sock = sock
        try:
            conn.putrequest("GET", s.path, skip_host="host" in names, skip_accept_encoding=True)
            if "user-agent" not in names:
                conn.putheader("User-Agent", USER_AGENT)
            conn.putheader("Connection", "close")
            for n, v in headers:
                conn.putheader(n, v)
            conn.endheaders()
            resp = conn.getresponse()
            resp.read(64 * 1024)
            code = resp.status
        finally:
            conn.close()
        if 200 <= code < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {code} (status code was not from [200,400))"

    def _check_tcpSocket(self) -> tuple[bool, str]:
        s = self.spec
        host = s.host or self.default_host
        sock = _connect(host, s.port, s.timeout, _source_for(host, self.local_ips))
        sock.close()
        return True, ""

    def _check_exec(self) -> tuple[bool, str]:
        s = self.spec
        try:
            r = subprocess.run(list(s.command), capture_output=True, timeout=s.timeout, check=False)
        except subprocess.TimeoutExpired:
            return False, f"command {s.command[0]!r} timed out after {s.timeout:g}s (killed)"
        except OSError as e:
            return False, f"command {s.command[0]!r} could not run: {e.strerror or e}"
        if r.returncode == 0:
            return True, ""
        tail = (r.stderr or r.stdout).decode(errors="replace").strip()[-200:]
        return False, f"command {s.command[0]!r} exited with status {r.returncode}" + (f": {tail}" if tail else "")

    def _check_grpc(self) -> tuple[bool, str]:
        import grpc

        s = self.spec
        host = self.default_host  # Istio always dials the default host for gRPC probes
        target = f"[{host}]:{s.port}" if ":" in host else f"{host}:{s.port}"
        channel = grpc.insecure_channel(target, options=[("grpc.primary_user_agent", USER_AGENT)])
        try:
            call = channel.unary_unary(GRPC_HEALTH_METHOD, request_serializer=None, response_deserializer=None)
            data = call(encode_health_request(s.service), timeout=s.timeout)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            return False, f"rpc error: code = {getattr(code, 'name', code)} desc = {details}"
        finally:
            channel.close()
        try:
            status = decode_health_response(data)
        except ValueError as e:
            return False, f"malformed HealthCheckResponse: {e}"
        if status == 1:
            return True, ""
        return False, f"gRPC health check: service {s.service!r} is {SERVING_STATUS.get(status, str(status))}"


# --- the loop ---------------------------------------------------------------------------


class Prober:
    """Runs a probe on its schedule in a thread and calls ``on_change(healthy,
    message)`` on each transition (istio-agent's ``WorkloadHealthChecker``)."""

    def __init__(
        self,
        spec: ProbeSpec,
        on_change: Callable[[bool, str], None],
        *,
        default_host: str = "localhost",
        local_ips: Collection[str] = (),
    ) -> None:
        self.spec = spec
        self.probe = Probe(spec, default_host=default_host, local_ips=local_ips)
        self.on_change = on_change
        self.state: bool | None = None  # undefined until the first transition
        self.message = ""
        self.successes = 0
        self.failures = 0
        self.attempts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self._run, name="pymesh-agent-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.spec.timeout + 5)
            self._thread = None

    def _run(self) -> None:
        if self._stop.wait(self.spec.initial_delay):
            return
        while not self._stop.is_set():
            ok, msg = self.probe.check()
            self.record(ok, msg)
            if self._stop.wait(self.spec.period):
                return

    def record(self, ok: bool, message: str) -> None:
        """One attempt's result into the state machine."""
        self.attempts += 1
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.spec.success_threshold and self.state is not True:
                self._transition(True, "")
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.spec.failure_threshold and self.state is not False:
                self._transition(False, message or "probe failed")

    def _transition(self, healthy: bool, message: str) -> None:
        self.state, self.message = healthy, message
        log.info("readiness probe: %s%s", "healthy" if healthy else "unhealthy", f" ({message})" if message else "")
        try:
            self.on_change(healthy, message)
        except Exception:
            log.exception("health transition handler failed")

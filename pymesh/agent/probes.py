"""The WorkloadGroup readiness probe, run on the VM as istio-agent runs it
(``pkg/istio-agent/health``; shared/reference/istio-vm-workloads.md §3.1-3.2).

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
  dereferences a nil error there, reference §3.2).

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
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pymesh.agent.errors import ProbeError

log = logging.getLogger("pymesh.agent.probe")

USER_AGENT = "istio-probe/1.0"
PROBE_SOURCE_V4 = "127.0.0.6"
GRPC_HEALTH_METHOD = "/grpc.health.v1.Health/Check"
# grpc.health.v1.HealthCheckResponse.ServingStatus
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_HEADER_NAME = re.compile(r"^[-_A-Za-z0-9]+$")
KINDS = ("httpGet", "tcpSocket", "exec", "grpc")


class _FieldError(ProbeError):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}" if field else message)


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # one of KINDS
    initial_delay: float = 0.0
    timeout: float = 1.0
    period: float = 10.0
    success_threshold: int = 1
    failure_threshold: int = 1
    port: int = 0
    host: str = ""
    path: str = "/"
    scheme: str = "http"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    service: str = ""

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "initialDelaySeconds": self.initial_delay,
            "timeoutSeconds": self.timeout,
            "periodSeconds": self.period,
            "successThreshold": self.success_threshold,
            "failureThreshold": self.failure_threshold,
        }
        if self.kind == "httpGet":
            d.update(port=self.port, host=self.host, path=self.path, scheme=self.scheme.upper())
            if self.headers:
                d["httpHeaders"] = [{"name": n, "value": v} for n, v in self.headers]
        elif self.kind == "tcpSocket":
            d.update(port=self.port, host=self.host)
        elif self.kind == "exec":
            d["command"] = list(self.command)
        else:
            d.update(port=self.port, service=self.service)
        return d


def _seconds(d: Mapping[str, Any], key: str, default: float) -> float:
    v = d.get(key)
    if v is None or v == 0:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise _FieldError(key, f"expected a number of seconds >= 0, got {v!r}")
    return float(v)


def _count(d: Mapping[str, Any], key: str, default: int) -> int:
    v = d.get(key)
    if v is None or v == 0:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _FieldError(key, f"expected an integer >= 0, got {v!r}")
    return v


def _port(d: Mapping[str, Any], where: str) -> int:
    p = d.get("port")
    if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536:
        raise _FieldError(f"{where}.port", f"expected a port 1-65535, got {p!r}")
    return p


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _FieldError(f"{where}.{key}", f"expected a string, got {type(v).__name__}")
    return v


def parse_probe(d: Any) -> ProbeSpec:
    """Validates a ``readinessProbe`` mapping (WorkloadGroup ``probe`` JSON
    names); a :class:`ProbeError` carries the offending field in ``.field``."""
    if not isinstance(d, Mapping):
        raise _FieldError("", f"expected a mapping, got {type(d).__name__}")
    kinds = [k for k in KINDS if d.get(k) is not None]
    if len(kinds) != 1:
        raise _FieldError(
            "", "exactly one of httpGet, tcpSocket, exec, grpc must be set" + (f" (got {kinds})" if kinds else "")
        )
    kind = kinds[0]
    body = d[kind]
    if not isinstance(body, Mapping):
        raise _FieldError(kind, f"expected a mapping, got {type(body).__name__}")
    common: dict[str, Any] = {
        "initial_delay": _seconds(d, "initialDelaySeconds", 0.0),
        "timeout": _seconds(d, "timeoutSeconds", 1.0),
        "period": _seconds(d, "periodSeconds", 10.0),
        "success_threshold": _count(d, "successThreshold", 1),
        "failure_threshold": _count(d, "failureThreshold", 1),
    }
    if kind == "httpGet":
        scheme = _str(body, "scheme", kind) or "HTTP"
        if scheme.upper() not in ("HTTP", "HTTPS"):
            raise _FieldError(f"{kind}.scheme", f"{scheme!r} is not HTTP or HTTPS")
        headers = []
        raw = body.get("httpHeaders") or []
        if not isinstance(raw, list):
            raise _FieldError(f"{kind}.httpHeaders", "expected a list of {name, value}")
        for i, h in enumerate(raw):
            if not isinstance(h, Mapping) or not isinstance(h.get("name"), str) or not _HEADER_NAME.match(h["name"]):
                raise _FieldError(f"{kind}.httpHeaders[{i}].name", "expected a header name ([-_A-Za-z0-9]+)")
            headers.append((h["name"], str(h.get("value") or "")))
        path = _str(body, "path", kind) or "/"
        if not path.startswith("/"):
            path = "/" + path
        return ProbeSpec(
            kind=kind,
            port=_port(body, kind),
            host=_str(body, "host", kind),
            path=path,
            scheme=scheme.lower(),
            headers=tuple(headers),
            **common,
        )
    if kind == "tcpSocket":
        return ProbeSpec(kind=kind, port=_port(body, kind), host=_str(body, "host", kind), **common)
    if kind == "exec":
        cmd = body.get("command")
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) and c for c in cmd):
            raise _FieldError(f"{kind}.command", "expected a non-empty list of non-empty strings")
        return ProbeSpec(kind=kind, command=tuple(cmd), **common)
    return ProbeSpec(kind=kind, port=_port(body, kind), service=_str(body, "service", kind), **common)


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
            ctx.verify_mode = ssl.CERT_NONE  # Istio's probe skips verification (reference §3.2)
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

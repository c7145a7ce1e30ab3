"""``pymesh up``: the whole local mesh on the embedded default, step by step.

What runs, all on loopback, unprivileged and on ports chosen at start:

1. an embedded :class:`~pymesh.controlplane.ControlPlane` with the example
   resources (``pymesh/examples/mesh``: Service ``product`` with one pod,
   WorkloadGroup ``product-vm``, a ServiceEntry and product's DestinationRule);
2. two small gRPC servers: the pod ``product-pod-0`` on 127.0.0.2 and the VM's
   own workload on 127.0.0.3, both on the Service's target port (8080, or a
   free port when 8080 is taken: the resources are then rewritten in a temp
   copy), each answering ``/product.Product/Get`` with who it is and the
   standard ``grpc.health.v1.Health/Check`` (the WorkloadGroup's probe);
3. the VM's bootstrap files, as ``istioctl x workload entry configure`` writes
   them, in a temp dir;
4. the VM agent (:class:`~pymesh.agent.Agent`): it connects, auto-registers
   as WorkloadEntry ``product-vm-127.0.0.3``, runs the probe and serves DNS
   on 127.0.0.1:<port>;
5. real DNS queries (UDP) to that server;
6. requests to ``product.default.svc.cluster.local:8080``: the name is
   resolved through the agent's DNS, each call is routed by the agent's
   tables (``agent.route(VIP, port)``: the redirection table then the
   cluster's load-balancing policy, as the outbound proxy on 15001 does for a
   captured connection) and sent to the endpoint picked; the answers are
   counted per backend;
7. everything stopped and the temp dir removed (also on Ctrl-C).

Capture rules and the outbound proxy need root and are not used by default:
the route each connection would take through 15001 is the same
``agent.route``. ``pymesh up --capture`` (root) runs the same in a private
network namespace of its own (``unshare --net``, nothing on the host
changes) with the real data path: the agent installs the capture rules and
runs the outbound proxy on 127.0.0.1:15001, and a client process running as
another user (uid 4242) asks the resolv.conf name server (10.99.0.53:53,
captured to the agent's DNS) and connects to the VIP itself, each
connection redirected to the proxy, which picks the endpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import yaml

POD_IP = "127.0.0.2"
VM_IP = "127.0.0.3"
SERVICE = "product.default.svc.cluster.local"
EXAMPLE_PORT = 8080
GET_METHOD = "/product.Product/Get"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING}
DEFAULT_NAMES = ("product.default.svc.cluster.local", "product", "api.payments.example.com")
# --capture: the private namespace's resolv.conf name server (captured, never reached), the
# application user whose traffic is captured, the marker of the re-executed child.
NAMESERVER = "10.99.0.53"
APP_UID = 4242
NETNS_ENV = "PYMESH_UP_NETNS"


class UpError(Exception):
    """A step of ``pymesh up`` failed; the message names the step."""


# --- small real peers ----------------------------------------------------------------------


class Workload:
    """A gRPC server on ``ip:port`` that answers ``/product.Product/Get``
    with its own name and the standard health check (raw bytes: no
    generated code needed)."""

    def __init__(self, name: str, ip: str, port: int) -> None:
        from concurrent import futures

        import grpc

        self.name = name
        self.address = f"{ip}:{port}"
        reply = f"{name} ({self.address})".encode()
        self.calls = 0

        def get(_req: bytes, _ctx: Any) -> bytes:
            self.calls += 1
            return reply

        def health(_req: bytes, _ctx: Any) -> bytes:
            return SERVING

        ident: Callable[[bytes], bytes] = lambda b: b  # noqa: E731
        handlers = {
            GET_METHOD: grpc.unary_unary_rpc_method_handler(get, ident, ident),
            HEALTH_METHOD: grpc.unary_unary_rpc_method_handler(health, ident, ident),
        }

        class Generic(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: Any) -> Any:
                return handlers.get(details.method)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers((Generic(),))
        try:
            bound = self.server.add_insecure_port(self.address)
        except RuntimeError as e:  # grpcio raises on a failed bind (older versions return 0)
            raise UpError(f"{name}: cannot listen on {self.address}: {e}") from None
        if bound == 0:
            raise UpError(f"{name}: cannot listen on {self.address}")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait(5)


def _port_free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def _free_port(kind: int = socket.SOCK_STREAM, ip: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ip, 0))
        port: int = s.getsockname()[1]
    return port


def _service_port() -> int:
    """8080 as in the example when both backend addresses can take it, else
    one free port both can take."""
    port = EXAMPLE_PORT
    for _ in range(20):
        if _port_free(POD_IP, port) and _port_free(VM_IP, port):
            return port
        port = _free_port(ip=POD_IP)
    raise UpError("no port free on both 127.0.0.2 and 127.0.0.3")


def _example_mesh(dest: Path, port: int) -> Path:
    """The example resources, copied; the port rewritten when it is not 8080."""
    dest.mkdir()
    src = resources.files("pymesh") / "examples" / "mesh"
    for f in src.iterdir():
        if not f.name.endswith(".yaml"):
            continue
        text = f.read_text()
        if port != EXAMPLE_PORT:
            docs = [d for d in yaml.safe_load_all(text) if d]
            for d in docs:
                _rewrite_port(d, port)
            text = yaml.safe_dump_all(docs, sort_keys=False)
        (dest / f.name).write_text(text)
    return dest


def _rewrite_port(doc: dict[str, Any], port: int) -> None:
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "Service":
        for p in spec.get("ports", []):
            if p.get("port") == EXAMPLE_PORT:
                p["port"] = p["targetPort"] = port
    elif kind == "Pod":
        for c in spec.get("containers", []):
            for p in c.get("ports", []):
                if p.get("containerPort") == EXAMPLE_PORT:
                    p["containerPort"] = port
    elif kind == "WorkloadGroup":
        ports = spec.get("template", {}).get("ports", {})
        for k, v in list(ports.items()):
            if v == EXAMPLE_PORT:
                ports[k] = port
        for probe in spec.get("probe", {}).values():
            if isinstance(probe, dict) and probe.get("port") == EXAMPLE_PORT:
                probe["port"] = port


def _vm_files(d: Path, cp_port: int, probe: dict[str, Any] | None) -> Path:
    """cluster.env, mesh.yaml, hosts, root-cert.pem, istio-token as istioctl
    writes them for WorkloadGroup product-vm (reference section 5.3)."""
    import json

    d.mkdir()
    labels = json.dumps({"app": "product", "version": "vm"}, separators=(",", ":"))
    env = {
        "CANONICAL_REVISION": "latest",
        "CANONICAL_SERVICE": "product",
        "ISTIO_INBOUND_PORTS": "*",
        "ISTIO_LOCAL_EXCLUDE_PORTS": "22,15090,15021,15020",
        "ISTIO_METAJSON_LABELS": labels,
        "ISTIO_META_AUTO_REGISTER_GROUP": "product-vm",
        "ISTIO_META_CLUSTER_ID": "Kubernetes",
        "ISTIO_META_DNS_CAPTURE": "true",
        "ISTIO_META_NETWORK": "",
        "ISTIO_META_WORKLOAD_NAME": "product-vm",
        "ISTIO_NAMESPACE": "default",
        "ISTIO_SERVICE": "product-vm.default",
        "ISTIO_SERVICE_CIDR": "*",
        "ISTIO_SVC_IP": VM_IP,
        "POD_NAMESPACE": "default",
        "SERVICE_ACCOUNT": "product",
        "TRUST_DOMAIN": "cluster.local",
    }
    (d / "cluster.env").write_text("".join(f"{k}='{v}'\n" for k, v in sorted(env.items())))
    md = {k: v for k, v in env.items() if k.startswith(("ISTIO_META", "CANONICAL", "POD_", "SERVICE_", "TRUST"))}
    cfg: dict[str, Any] = {"discoveryAddress": f"istiod.istio-system.svc:{cp_port}", "proxyMetadata": md}
    if probe:
        cfg["readinessProbe"] = probe
    (d / "mesh.yaml").write_text(yaml.safe_dump({"defaultConfig": cfg}))
    (d / "hosts").write_text("127.0.0.1 istiod.istio-system.svc\n")
    # Plaintext control plane for now: the agent checks these files' shape, not trust.
    (d / "root-cert.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2h5c2ljYWxseSBhIHRlc3Q=\n-----END CERTIFICATE-----\n"
    )
    (d / "istio-token").write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwcm9kdWN0In0.c2ln\n")
    (d / "resolv.conf").write_text("search default.svc.cluster.local svc.cluster.local cluster.local\n")
    return d


# --- a DNS client (stdlib only: the wheel does not depend on dnspython) ---------------------

QTYPE = {"A": 1, "AAAA": 28, "CNAME": 5, "SRV": 33, "TXT": 16, "PTR": 12, "MX": 15, "NS": 2, "SOA": 6, "ANY": 255}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _read_name(msg: bytes, off: int) -> tuple[str, int]:
    labels: list[str] = []
    end = -1
    for _ in range(128):  # bounded: compression loops end here
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if end < 0:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            continue
        if n == 0:
            return ".".join(labels) + ".", (end if end >= 0 else off + 1)
        labels.append(msg[off + 1 : off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    raise ValueError("DNS name too long or looping")


def dns_query(server: tuple[str, int], name: str, qtype: str = "A", timeout: float = 2.0) -> tuple[str, list[str]]:
    """One UDP query; (rcode, ["name ttl IN TYPE data", ...])."""
    qid = random.getrandbits(16)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", QTYPE[qtype], 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, server)
        while True:
            msg = s.recv(4096)
            if len(msg) >= 12 and struct.unpack(">H", msg[:2])[0] == qid:
                break
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        _, off = _read_name(msg, off)
        off += 4
    names = {v: k for k, v in QTYPE.items()}
    records = []
    for _ in range(an):
        rname, off = _read_name(msg, off)
        rtype, _, ttl, rdlen = struct.unpack(">HHIH", msg[off : off + 10])
        off += 10
        rdata = msg[off : off + rdlen]
        if rtype == 1:
            data = socket.inet_ntop(socket.AF_INET, rdata)
        elif rtype == 28:
            data = socket.inet_ntop(socket.AF_INET6, rdata)
        elif rtype == 5:
            data = _read_name(msg, off)[0]
        else:
            data = rdata.hex()
        off += rdlen
        records.append(f"{rname} {ttl} IN {names.get(rtype, str(rtype))} {data}")
    return RCODES.get(flags & 0xF, str(flags & 0xF)), records


# --- the run ------------------------------------------------------------------------------


class Steps:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.n = 0
        self.t0 = time.monotonic()

    def step(self, text: str) -> None:
        self.n += 1
        self.say(f"{self.n}. {text}", indent="")

    def say(self, text: str, indent: str = "   ") -> None:
        print(f"{indent}{text}", file=self.out, flush=True)


def _wait(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > end:
            raise UpError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """The parts log at INFO for operators; here the steps say what happens."""
    import logging

    root = logging.getLogger("pymesh")
    old = root.level
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(old)


def run(
    names: Sequence[str] = (),
    qtype: str = "A",
    requests: int = 20,
    hold: bool = False,
    out: TextIO = sys.stdout,
    capture: bool = False,
) -> int:
    from pymesh import __version__

    if capture and os.environ.get(NETNS_ENV) != "1":
        return _reexec_in_netns()
    st = Steps(out)
    restore = _interrupt_on_signals()
    st.say(f"pymesh {__version__}: the local mesh on the embedded default (Ctrl-C stops it cleanly)", indent="")
    tmp = Path(tempfile.mkdtemp(prefix="pymesh-up-"))
    stack = contextlib.ExitStack()
    stack.callback(shutil.rmtree, tmp, True)
    try:
        with stack, _quiet_logs():
            _run(st, stack, tmp, names, qtype, requests, hold, capture)
            st.step("stopping: agent, control plane, workloads")
        st.say(f"stopped; temp dir {'still there' if tmp.exists() else 'removed'}")
        st.say(f"done in {time.monotonic() - st.t0:.1f}s", indent="")
        return 0
    except KeyboardInterrupt:
        st.say("interrupted: everything stopped, temp dir removed", indent="")
        return 130
    except UpError as e:
        print(f"pymesh up: error: {e}", file=sys.stderr)
        return 1
    finally:
        restore()


def _interrupt_on_signals() -> Callable[[], None]:
    """SIGINT and SIGTERM stop the run through the same clean-up path (also
    when started in the background, where a shell leaves SIGINT ignored)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in old:
        signal.signal(sig, signal.default_int_handler)

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    return restore


def _reexec_in_netns() -> int:
    """Runs this command again in a new network namespace (root only), so the
    capture rules never touch the host's traffic."""
    if os.geteuid() != 0:
        print("pymesh up: error: --capture needs root (it runs in a network namespace of its own)", file=sys.stderr)
        return 1
    unshare = shutil.which("unshare")
    if unshare is None:
        print("pymesh up: error: --capture needs the unshare command (util-linux)", file=sys.stderr)
        return 1
    env = {**os.environ, NETNS_ENV: "1"}
    os.execve(unshare, [unshare, "--net", "--", sys.executable, "-m", "pymesh", *sys.argv[1:]], env)


def _netns_setup(st: Steps, tmp: Path) -> None:
    """Loopback up, and a link with a default route so connections to VIPs
    have a route to be captured from (nothing is at its other end)."""
    for argv in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", "pm0", "type", "veth", "peer", "name", "pm1"],  # veth: no dummy module needed
        ["ip", "addr", "add", "10.99.0.1/24", "dev", "pm0"],
        ["ip", "link", "set", "pm1", "up"],
        ["ip", "link", "set", "pm0", "up"],
        ["ip", "route", "add", "default", "dev", "pm0"],
    ):
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise UpError(f"network namespace setup: {' '.join(argv)}: {p.stderr.strip()}")
    st.step("network namespace: private (unshare --net): lo, pm0 10.99.0.1/24 (veth), default route via pm0")


def _run(
    st: Steps,
    stack: contextlib.ExitStack,
    tmp: Path,
    names: Sequence[str],
    qtype: str,
    requests: int,
    hold: bool,
    capture: bool = False,
) -> None:
    from pymesh.agent import Agent, AgentOptions, load_bootstrap
    from pymesh.controlplane import ControlPlane

    if capture:
        _netns_setup(st, tmp)
    port = _service_port()
    mesh = _example_mesh(tmp / "mesh", port)
    cp = ControlPlane(mesh, xds_listen="127.0.0.1:0", data_dir=tmp / "cp", grace_period=2, debounce=0.05)
    cp.start()
    stack.callback(cp.stop)
    objs = cp.objects()
    kinds = Counter(o.kind for o in objs)
    st.step(f"control plane: embedded, xDS (ADS, plaintext) on 127.0.0.1:{cp.port}")
    st.say(f"resources: {', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))} (pymesh/examples/mesh)")
    for e in cp.errors:
        st.say(f"rejected: {e}")
    st.say(f"Service product: VIP 10.96.0.20:{port}; pod product-pod-0 at {POD_IP}; WorkloadGroup product-vm")

    pod = Workload("pod product-pod-0", POD_IP, port)
    stack.callback(pod.stop)
    vmw = Workload("vm product-vm", VM_IP, port)
    stack.callback(vmw.stop)
    st.step(f"workloads: gRPC servers for the pod on {pod.address} and the VM's own workload on {vmw.address}")

    group = next(o for o in objs if o.key == ("WorkloadGroup", "default", "product-vm"))
    probe = dict(group.raw.get("spec", {}).get("probe") or {})
    vm_dir = _vm_files(tmp / "vm", cp.port, probe)
    if capture:
        resolv = (vm_dir / "resolv.conf").read_text()
        (vm_dir / "resolv.conf").write_text(f"nameserver {NAMESERVER}\n{resolv}")
    st.step(f"VM files (istioctl's five): {vm_dir}/{{cluster.env,mesh.yaml,hosts,root-cert.pem,istio-token}}")
    kind = next((k for k in ("grpc", "httpGet", "tcpSocket", "exec") if k in probe), "none")
    st.say(f"auto-register group product-vm, instance IP {VM_IP}, readiness probe {kind} from the WorkloadGroup")

    dns_port = _free_port(socket.SOCK_DGRAM)
    opts = AgentOptions(
        dns_listen=[f"127.0.0.1:{dns_port}"],
        dns_upstreams=[],  # no network assumed: other names are not forwarded here
        dns_workers=1,
        resolv_conf=str(vm_dir / "resolv.conf"),
        state_dir=str(tmp / "agent"),
        instance_ip=VM_IP,
        extra_ips=[],
        pod_name="vm-1",
        backoff_base=0.1,
        backoff_max=1.0,
        capture="auto" if capture else None,
        outbound_listen=["127.0.0.1:15001"] if capture else (),
    )
    agent = Agent(load_bootstrap(vm_dir), opts)
    agent.start()
    stack.callback(agent.stop)
    st.step(f"agent: node {agent.node.id}")
    st.say(f"DNS proxy on 127.0.0.1:{dns_port} (udp+tcp); control plane {agent.target}")
    if capture:
        backend = agent.capture_rules.backend if agent.capture_rules is not None else "?"
        st.say(f"capture rules installed ({backend}): DNS to {NAMESERVER}:53 and outbound TCP, not the agent's uid")
        st.say(f"outbound proxy on {', '.join(agent.proxy.addresses) if agent.proxy else '?'}")
    entry_name = f"product-vm-{VM_IP}"
    entry = _wait(lambda: cp.registered_entry("default", entry_name), 10, f"WorkloadEntry {entry_name}")
    st.step(f"registered: WorkloadEntry default/{entry_name} (address {entry.get('spec', {}).get('address')})")

    def healthy() -> bool:
        e = cp.registered_entry("default", entry_name) or {}
        conds = e.get("status", {}).get("conditions", [])
        return any(c.get("type") == "Healthy" and c.get("status") == "True" for c in conds)

    _wait(healthy, 15, f"the {kind} probe to report {entry_name} healthy")
    cluster = f"outbound|{port}||{SERVICE}"

    def both_endpoints() -> bool:
        return len(agent.endpoints().get(cluster, [])) >= 2

    _wait(both_endpoints, 15, f"the agent's cluster {cluster} to hold the pod and the VM")
    eps = [e.get("address", "?") for e in agent.endpoints()[cluster]]
    st.say(f"probe {kind}: Healthy=True; the agent's {cluster}: endpoints {', '.join(sorted(map(str, eps)))}")

    st.step(f"DNS: real UDP queries to the agent on 127.0.0.1:{dns_port}")
    for name in names or DEFAULT_NAMES:
        rcode, records = dns_query(("127.0.0.1", dns_port), name, qtype)
        st.say(f"{name} {qtype}: {rcode}" + ("" if records else " (no records)"))
        for r in records:
            st.say(f"  {r}")

    _, addrs = dns_query(("127.0.0.1", dns_port), SERVICE, "A")
    vip = next((r.split()[-1] for r in addrs if " IN A " in r), None)
    if vip is None:
        raise UpError(f"the agent's DNS did not answer {SERVICE}")
    st.step(f"requests: {requests} gRPC calls {GET_METHOD} to {SERVICE}:{port} (VIP {vip})")
    if capture:
        st.say(f"from a client running as uid {APP_UID}: it asks {NAMESERVER}:53 (captured) for {SERVICE},")
        st.say("then connects to that VIP once per call; the rules redirect each connection to the outbound proxy")
        counts = _send_captured(vip, port, requests)
    else:
        st.say("each routed by the agent's tables (redirection table, then the cluster's load-balancing policy)")
        counts = _send(agent, vip, port, requests)
    for backend, n in sorted(counts.items()):
        st.say(f"{n:3d}  {backend}")
    if capture and agent.proxy is not None:
        ps = agent.proxy.stats()
        st.say(f"outbound proxy: {ps['accepted']} connections accepted, {ps['cluster']} routed to a cluster")
    if hold:
        st.say(f"serving until Ctrl-C: dig @127.0.0.1 -p {dns_port} product.default.svc.cluster.local", indent="")
        threading.Event().wait()


def _send(agent: Any, vip: str, port: int, n: int) -> Counter[str]:
    import grpc

    channels: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    try:
        for _ in range(n):
            route = agent.route(vip, port)
            if route.verdict != "cluster" or route.endpoint is None:
                counts[f"(no route: {route.verdict})"] += 1
                continue
            ch = channels.get(route.endpoint)
            if ch is None:
                ch = channels[route.endpoint] = grpc.insecure_channel(route.endpoint)
            try:
                reply: bytes = ch.unary_unary(GET_METHOD)(b"", timeout=5)
                counts[reply.decode()] += 1
                agent.lb.report(route.cluster, route.endpoint, "success")
            except grpc.RpcError as e:
                counts[f"failed: {route.endpoint} {e.code().name}"] += 1
                agent.lb.report(route.cluster, route.endpoint, "connect_failure")
    finally:
        for ch in channels.values():
            ch.close()
    return counts


def _send_captured(vip: str, port: int, n: int) -> Counter[str]:
    argv = ["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups"]
    argv += [sys.executable, "-m", "pymesh.up", "client", NAMESERVER, SERVICE, str(port), str(n)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd="/")
    if p.returncode != 0:
        raise UpError(f"the client (uid {APP_UID}) failed: {p.stderr.strip()[-500:]}")
    got = json.loads(p.stdout.strip().splitlines()[-1])
    if got["vip"] != vip:
        raise UpError(f"the captured DNS answered {got['vip']!r}, the agent's DNS {vip!r}")
    return Counter(got["counts"])


def _client(nameserver: str, name: str, port: int, n: int) -> dict[str, Any]:
    """The application side of ``--capture``: DNS to the resolv.conf name
    server, then one connection (a new gRPC channel, its own subchannel) per
    call to the answered VIP."""
    import grpc

    rcode, records = dns_query((nameserver, 53), name, "A")
    vip = next((r.split()[-1] for r in records if " IN A " in r), None)
    counts: Counter[str] = Counter()
    for _ in range(n if vip else 0):
        ch = grpc.insecure_channel(f"{vip}:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            reply: bytes = ch.unary_unary(GET_METHOD)(b"", timeout=5)
            counts[reply.decode()] += 1
        except grpc.RpcError as e:
            counts[f"failed: {e.code().name}"] += 1
        finally:
            ch.close()
    return {"rcode": rcode, "vip": vip, "counts": counts}


if __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    print(json.dumps(_client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))

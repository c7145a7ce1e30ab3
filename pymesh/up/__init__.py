"""``pymesh up``: the whole local mesh on the embedded default, step by step.

What runs, on loopback and on ports chosen at start:

1. a private network namespace for the real data path (as root ``unshare
   --net``; otherwise an unprivileged user + network namespace, see
   :mod:`.netns`), or, where the kernel forbids that or ``--in-process`` is
   given, nothing: the routes are then taken in-process (step 7);
2. an embedded :class:`~pymesh.controlplane.ControlPlane` with the example
   resources (``pymesh/examples/mesh``: Service ``product`` with one pod,
   WorkloadGroup ``product-vm``, a ServiceEntry and product's DestinationRule);
3. two small gRPC servers (:mod:`.peers`): the pod ``product-pod-0`` on
   127.0.0.2 and the VM's own workload on 127.0.0.3, on the Service's target
   port (8080, or a free port when 8080 is taken: the resources are then
   rewritten in a temp copy);
4. the VM's bootstrap files, as ``istioctl x workload entry configure`` writes
   them (:func:`pymesh.agent.bootstrap.write_vm_files`), in a temp dir;
5. the VM agent (:class:`~pymesh.agent.Agent`) with its whole data path in the
   namespace: capture rules, DNS proxy, outbound proxy on 127.0.0.1:15001; it
   auto-registers as WorkloadEntry ``product-vm-127.0.0.3`` and runs the probe;
6. real DNS queries (UDP) to the agent's DNS proxy;
7. requests to ``product.default.svc.cluster.local:8080``: in the namespace a
   client process asks the resolv.conf name server (captured to the agent's
   DNS) and connects to the VIP, each connection redirected to the outbound
   proxy, which picks the endpoint; in-process each call is routed by the
   agent's tables (``agent.route(VIP, port)``, the same decision the proxy
   makes); the answers are counted per backend;
8. everything stopped and the temp dir removed (also on Ctrl-C).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from pymesh.up import netns
from pymesh.up.dns import query as dns_query
from pymesh.up.peers import (
    GET_METHOD,
    POD_IP,
    VM_IP,
    UpError,
    Workload,
    example_mesh,
    free_port,
    service_port,
)

SERVICE = "product.default.svc.cluster.local"
DEFAULT_NAMES = ("product.default.svc.cluster.local", "product", "api.payments.example.com")

__all__ = ["UpError", "run"]


def _vm_files(d: Path, cp_port: int, probe: dict[str, Any] | None, *, capture_dns: bool = True) -> Path:
    """cluster.env, mesh.yaml, hosts, root-cert.pem, istio-token as istioctl
    writes them for WorkloadGroup product-vm (plaintext control plane: the
    agent checks the certificate's and the token's shape, not their trust)."""
    import json

    from pymesh.agent.bootstrap import write_vm_files

    env = {
        "CANONICAL_REVISION": "latest",
        "CANONICAL_SERVICE": "product",
        "ISTIO_INBOUND_PORTS": "*",
        "ISTIO_LOCAL_EXCLUDE_PORTS": "22,15090,15021,15020",
        "ISTIO_METAJSON_LABELS": json.dumps({"app": "product", "version": "vm"}, separators=(",", ":")),
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
    if not capture_dns:
        env["REDIRECT_DNS"] = "false"  # istio-iptables' switch: the DNS proxy runs, queries are not redirected
    write_vm_files(
        d,
        env,
        discovery_address=f"istiod.istio-system.svc:{cp_port}",
        probe=probe,
        hosts={"istiod.istio-system.svc": "127.0.0.1"},
        control_plane_auth="NONE",  # the embedded control plane's plaintext xDS on loopback
        root_cert=(
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2h5c2ljYWxseSBhIHRlc3Q=\n-----END CERTIFICATE-----\n"
        ),
        token="eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwcm9kdWN0In0.c2ln\n",
    )
    (d / "resolv.conf").write_text("search default.svc.cluster.local svc.cluster.local cluster.local\n")
    return d


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
    in_process: bool = False,
) -> int:
    from pymesh import __version__

    fallback = ""
    if not in_process and not netns.inside():
        ok, why = netns.can_enter()
        if ok:
            return netns.reexec()
        fallback = why
    st = Steps(out)
    restore = _interrupt_on_signals()
    st.say(f"pymesh {__version__}: the local mesh on the embedded default (Ctrl-C stops it cleanly)", indent="")
    if fallback:
        st.say(f"no private network namespace here ({fallback}): routing in-process instead", indent="")
    tmp = Path(tempfile.mkdtemp(prefix="pymesh-up-"))
    stack = contextlib.ExitStack()
    stack.callback(shutil.rmtree, tmp, True)
    try:
        with stack, _quiet_logs():
            _run(st, stack, tmp, names, qtype, requests, hold, capture=bool(netns.inside()))
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
        st.step(netns.setup())
    port = service_port()
    mesh = example_mesh(tmp / "mesh", port)
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
    vm_dir = _vm_files(tmp / "vm", cp.port, probe, capture_dns=not capture or netns.captures_dns())
    if capture:
        netns.resolv_conf(vm_dir)
    st.step(f"VM files (istioctl's five): {vm_dir}/{{cluster.env,mesh.yaml,hosts,root-cert.pem,istio-token}}")
    kind = next((k for k in ("grpc", "httpGet", "tcpSocket", "exec") if k in probe), "none")
    st.say(f"auto-register group product-vm, instance IP {VM_IP}, readiness probe {kind} from the WorkloadGroup")

    import socket

    dns_port = free_port(socket.SOCK_DGRAM)
    user_ns = netns.inside() == "user"
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
        # In a user namespace only uid 0 exists: the proxy is exempted by its mark, the
        # owner match names a uid nothing runs as.
        capture_mark=netns.PROXY_MARK if user_ns else None,
        proxy_uid=netns.NOBODY_PROXY_UID if user_ns else None,
    )
    agent = Agent(load_bootstrap(vm_dir), opts)
    agent.start()
    stack.callback(agent.stop)
    st.step(f"agent: node {agent.node.id}")
    st.say(f"DNS proxy on 127.0.0.1:{dns_port} (udp+tcp); control plane {agent.target}")
    if capture:
        backend = agent.capture_rules.backend if agent.capture_rules is not None else "?"
        exempt = "not the proxy's marked sockets" if user_ns else "not the agent's uid"
        what = f"DNS to {netns.NAMESERVER}:53 and outbound TCP" if netns.captures_dns() else "outbound TCP"
        st.say(f"capture rules installed ({backend}): {what}, {exempt}")
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
        st.say(f"{netns.client_description(dns_port)} for {SERVICE},")
        st.say("then connects to that VIP once per call; the rules redirect each connection to the outbound proxy")
        counts = netns.send_captured(vip, port, requests, SERVICE, dns_port)
    else:
        st.say("each routed by the agent's tables (redirection table, then the cluster's load-balancing policy)")
        counts = _send(agent, vip, port, requests)
    for backend, n in sorted(counts.items()):
        st.say(f"{n:3d}  {backend}")
    if capture and agent.proxy is not None:
        ps, hs = agent.proxy.stats(), agent.proxy.http_stats()
        # gRPC (an HTTP port): each call is a request its HTTP path routed; TCP ports: connections.
        st.say(
            f"outbound proxy: {ps['accepted']} connections accepted, {ps['cluster']} routed to a cluster, "
            f"{hs['http_requests']} HTTP requests routed"
        )
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

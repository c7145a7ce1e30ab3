"""The VM agent: joins the mesh from Istio's VM files and keeps the local
tables (names, clusters, redirection) in step with the control plane.

    from pymesh.agent import Agent, AgentOptions, load_bootstrap
    agent = Agent(load_bootstrap("vm-files/"), AgentOptions(dns_listen=["127.0.0.1:15053"]))
    agent.start()
    ...
    agent.stop()

What it runs (each part configurable, nothing bound to fixed ports):
- an ADS client to the control plane (``discoveryAddress``, its host
  resolved through the ``hosts`` file) subscribing CDS, EDS (the EDS
  clusters' service names) and NDS; each push is validated by building the
  native table, then ACKed, or NACKed with the error while the last good
  table keeps serving;
- the DNS proxy (native serving loop) on ``dns_listen``, answering from the
  NDS table, forwarding the rest to the resolv.conf name servers; it runs
  when the node captures DNS (``ISTIO_META_DNS_CAPTURE=true``) unless
  ``dns_enabled`` says otherwise;
- the readiness probe from mesh.yaml, its transitions reported as
  ``istio.v1.HealthInformation`` on the stream (re-sent on every new
  stream and every ``health_resend_interval`` seconds);
- the last good CDS/EDS/NDS persisted in ``state_dir`` and loaded at start,
  so DNS and routing serve at once — before the first push, and across a
  restart while the control plane is unreachable;
- optionally the status port (``status_listen``, see :mod:`.status`) and the
  data path itself: the outbound proxy (``outbound_listen``) kept on these
  tables and the capture rules (``capture``) installed at start and removed
  at stop.

The interface for the outbound proxy and the capture side
-----------------------------------------------------------
- ``agent.lb``: one live :class:`pymesh.LbTable` for the agent's lifetime.
  An accepted push rebuilds the clusters it changed (one atomic upsert,
  endpoint state carried over) and removes the ones gone; unchanged
  resources cost nothing. The proxy keeps the reference and calls
  ``pick(cluster, hash_key)``,
  ``request_started``, ``report(cluster, endpoint, outcome)`` on it. The
  agent calls ``lb.tick()`` once a second (outlier ejection timers).
- ``agent.redirect``: the current :class:`pymesh.RedirectTable` (immutable;
  replaced by one attribute store when clusters or names change). Read it
  once per connection: ``classify(ip, port)`` → ``("cluster", name)``,
  ``("passthrough", None)`` or ``("bypass", None)``. It maps every VIP the
  NDS table gives a service host to ``outbound|<port>||<host>``; its
  include/exclude ranges and excluded ports are cluster.env's
  ``ISTIO_SERVICE_CIDR`` (``*`` when empty), ``ISTIO_SERVICE_EXCLUDE_CIDR``
  and ``ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE``.
- ``agent.logical_dns``: ``{cluster: (host, port)}`` for LOGICAL_DNS
  clusters (DNS ServiceEntries), which the lbtable does not hold: connect
  to ``host:port`` by name.
- ``agent.services``: the ``{"address", "port", "cluster"}`` list the
  redirection table is built from (``AgentOptions.redirect_builder`` builds
  it another way, e.g. with ``pymesh.capture.redirect_table``), and
  ``agent.environment()`` the effective cluster.env environment.
- ``agent.tables``: all of the above as one immutable :class:`Tables`
  snapshot with a generation number; ``agent.on_update(cb)`` calls
  ``cb(tables)`` (in the xDS thread; keep it short) after every change.
- ``agent.route(ip, port, hash_key=None)``: classify + pick in one call.
- ``agent.attach(proxy)``: keeps a ``pymesh.relay.OutboundProxy`` on the
  current tables (``swap_tables`` after every change).
- ``agent.capture``: the :class:`CaptureSettings` from cluster.env
  (istio-iptables' variables) for the rules, plus ``agent.options.dns_listen``
  for the DNS redirect target.

Warming: a new EDS cluster joins the lbtable and the redirection table when
its endpoints arrive (its VIPs pass through until then), or after
``warm_timeout`` seconds with none; a changed one keeps its previous version
serving meanwhile, as Envoy does.

Workload mTLS (issue 7): with MUTUAL_TLS to the control plane the agent holds
the workload certificate (pymesh.security.client), and hands it — chain, key,
the trusted roots and TRUST_DOMAIN — to the native outbound proxy and the
inbound listener (``set_identity``) at start (a valid one kept on disk) and
after every renewal or root change; a certificate the relay refuses is logged
and the previous identity keeps serving. The outbound proxy then originates
mTLS to endpoints whose EDS metadata says ``tlsMode: istio``. When the agent
runs the inbound listener it subscribes to the control plane's
``virtualInbound`` listener (LDS) and applies the PeerAuthentication mode its
filter chains carry (``set_peer_authentication``: STRICT, PERMISSIVE or
DISABLE), persisted like the other tables so a restart without the control
plane keeps the policy; until a mode is known the listener runs Istio's
default, PERMISSIVE.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymesh._native import LbTable, NameTable, PymeshError, RedirectTable
from pymesh.agent.bootstrap import Bootstrap, CaptureSettings, capture_settings, truthy
from pymesh.agent.errors import XdsClientError
from pymesh.agent.node import NodeInfo, build_node
from pymesh.agent.persist import CDS, EDS, LDS, NDS, StateDir, default_state_dir
from pymesh.agent.probes import Prober
from pymesh.agent.xds_client import XdsClient
from pymesh.names import DEFAULT_DOMAIN, read_resolv_conf

log = logging.getLogger("pymesh.agent")

DEFAULT_DNS_LISTEN = ("127.0.0.1:15053",)


def default_dns_listen(port: int = 15053) -> list[str]:
    """istio-agent's DNS listeners: 127.0.0.1 and, where the host has IPv6
    loopback, [::1] (captured queries to IPv6 name servers land there)."""
    import socket

    out = [f"127.0.0.1:{port}"]
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        out.append(f"[::1]:{port}")
    except OSError:
        pass
    return out


# Cluster types the lbtable serves (endpoints are IPs); others are DNS-resolved by the proxy.
LB_TYPES = ("STATIC", "EDS", None)


@dataclass
class AgentOptions:
    dns_listen: Sequence[str] = DEFAULT_DNS_LISTEN
    dns_upstreams: Sequence[str] | None = None  # None: the resolv.conf name servers
    dns_enabled: bool | None = None  # None: the node's DNS_CAPTURE
    dns_workers: int = 0
    dns_ttl: int = 30
    dns_timeout: float = 1.0
    resolv_conf: str = "/etc/resolv.conf"
    domain: str = DEFAULT_DOMAIN
    state_dir: str | None = None  # None: default_state_dir()
    persist: bool = True
    xds_address: str | None = None  # overrides discoveryAddress (+ hosts)
    xds_delta: bool = False  # incremental ADS instead of state-of-the-world
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    probe: bool = True
    health_resend_interval: float = 60.0
    instance_ip: str | None = None
    extra_ips: Sequence[str] | None = None  # None: the host's addresses
    pod_name: str | None = None
    namespace: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    lb_seed: int | None = None
    # Envoy's cluster warming: a new EDS cluster joins the lbtable (and the
    # redirection table) when its endpoints arrive, or after this many seconds
    # without them (Envoy's initial_fetch_timeout default), then with none.
    warm_timeout: float = 15.0
    # Builds the redirection table from the service VIP:port list; the default
    # uses cluster.env's capture variables. The capture side passes
    # ``lambda services: pymesh.capture.redirect_table(config, services)`` so the
    # proxy and the kernel rules agree on what is captured.
    redirect_builder: Callable[[list[dict[str, Any]]], RedirectTable] | None = None
    # istio-agent's status port (15020): /healthz/ready, /debug/ndsz, /metrics... None: off.
    status_listen: str | None = None
    # The data path in the agent's process (pymesh.relay / pymesh.capture), both off by default:
    # the outbound proxy on these addresses (e.g. 127.0.0.1:15001), serving the agent's tables;
    outbound_listen: Sequence[str] = ()
    # and the capture rules ("auto", "nftables", "iptables") from cluster.env's istio-iptables
    # variables, installed at start and removed at stop, never capturing ``proxy_uid`` (None:
    # the agent's own user), DNS redirected to the first dns_listen port, outbound to the proxy's;
    # inbound to ``inbound_port`` (None: cluster.env's INBOUND_CAPTURE_PORT, else 15006) where
    # cluster.env's ISTIO_INBOUND_PORTS enables it, served by the inbound passthrough unless
    # ``inbound_passthrough`` is off (another listener, e.g. inbound mTLS, takes that port).
    capture: str | None = None
    capture_name: str = "pymesh"
    proxy_uid: int | None = None
    inbound_port: int | None = None
    inbound_passthrough: bool = True
    # Control-plane transport (pymesh.security.agent): "MUTUAL_TLS" or "NONE"; None: mesh.yaml's
    # defaultConfig.controlPlaneAuthPolicy (NONE when unset). Certificates are kept in cert_dir
    # (None: OUTPUT_CERTS, else <state_dir>/certs), requested for cert_ttl seconds (None: SECRET_TTL, 24h).
    control_plane_auth: str | None = None
    cert_dir: str | None = None
    cert_ttl: float | None = None


@dataclass(frozen=True)
class Tables:
    """What the data path reads, as of one change."""

    generation: int
    lb: LbTable
    redirect: RedirectTable
    names: NameTable | None
    logical_dns: dict[str, tuple[str, int]]
    services: tuple[dict[str, Any], ...] = ()  # {"address", "port", "cluster"}: what ``redirect`` maps


@dataclass(frozen=True)
class Route:
    verdict: str  # "cluster", "passthrough", "bypass"
    cluster: str | None = None
    endpoint: str | None = None  # "ip:port"; None when the cluster has no endpoint to take it


def _unpack(any_msg: Any, type_url: str, cls: Any) -> Any:
    if any_msg.type_url != type_url:
        raise XdsClientError(f"resource of type {any_msg.type_url!r} in a {type_url} response")
    msg = cls()
    try:
        msg.ParseFromString(any_msg.value)
    except Exception as e:
        raise XdsClientError(f"{type_url.rsplit('.', 1)[-1]} does not decode: {e}") from e
    return msg


def _to_dict(msg: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    d: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return d


class Agent:
    def __init__(self, bootstrap: Bootstrap, options: AgentOptions | None = None) -> None:
        self.bootstrap = bootstrap
        self.options = options or AgentOptions()
        o = self.options
        self.node: NodeInfo = build_node(
            bootstrap,
            instance_ip=o.instance_ip,
            extra_ips=o.extra_ips,
            pod_name=o.pod_name,
            namespace=o.namespace,
            domain=o.domain,
            metadata=o.metadata,
        )
        self.capture: CaptureSettings = capture_settings(bootstrap)
        self.target = o.xds_address or bootstrap.control_plane_target()
        self.dns_enabled = o.dns_enabled if o.dns_enabled is not None else self.node.dns_capture
        resolv = read_resolv_conf(o.resolv_conf)
        self.search = resolv.search
        listen = list(o.dns_listen)
        if o.dns_upstreams is not None:
            self.upstreams = list(o.dns_upstreams)
        else:
            self.upstreams = [
                f"[{ns}]:53" if ":" in ns else f"{ns}:53" for ns in resolv.nameservers if f"{ns}:53" not in listen
            ]
        self.state = StateDir(o.state_dir or default_state_dir()) if o.persist else None

        self.capture_config: Any = self._capture_config() if o.capture else None
        self.lb = LbTable(seed=o.lb_seed)
        self.names: NameTable | None = None
        self.services: list[dict[str, Any]] = []
        self.redirect = self._build_redirect([])
        self.logical_dns: dict[str, tuple[str, int]] = {}
        self.tables = Tables(0, self.lb, self.redirect, None, {})
        # Last good resources (protobuf Any by name) and their dict forms.
        self._cds: dict[str, Any] = {}
        self._eds: dict[str, Any] = {}
        self._nds: Any = None
        self._clusters: dict[str, dict[str, Any]] = {}
        self._cla: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, str] = {}
        self._apply_lock = threading.Lock()
        self._callbacks: list[Callable[[Tables], None]] = []
        self.loaded_from_disk: list[str] = []
        self._identity_saved = False
        self._warming: dict[str, float] = {}  # cluster -> monotonic deadline
        self.health: tuple[bool, str] | None = None
        # Inbound mTLS mode from the control plane's virtualInbound listener (None: none yet),
        # and the SPIFFE identity the data path holds ("" : none).
        self.peer_authentication: str | None = None
        self._pa_applied = False
        self._lds: Any = None
        self.data_path_identity = ""

        self.dns: Any = None  # pymesh.dnsproxy.DnsProxy when running
        self.status_server: Any = None  # pymesh.agent.status.StatusServer when running
        self.proxy: Any = None  # pymesh.relay.OutboundProxy when outbound_listen is set
        self.inbound: Any = None  # pymesh.relay inbound passthrough while inbound capture is on
        self.capture_rules: Any = None  # pymesh.capture.Capture while installed
        self.client: XdsClient | None = None
        from pymesh.security.agent import auth_mode

        self.control_plane_auth = auth_mode(bootstrap, o.control_plane_auth)
        self.certs: Any = None  # pymesh.security.client.WorkloadCerts with MUTUAL_TLS
        self.prober: Prober | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.started = False

    # --- what it would do ----------------------------------------------------------------

    def plan(self) -> dict[str, Any]:
        """What the agent configures, as data (``pymesh agent --dry-run``)."""
        b = self.bootstrap
        probe = b.readiness_probe
        return {
            "node": {
                "id": self.node.id,
                "ip": self.node.ip,
                "ips": list(self.node.ips),
                "namespace": self.node.namespace,
                "metadata": self.node.metadata,
            },
            "control_plane": {
                "discovery_address": b.discovery_address,
                "target": self.target,
                "transport": "mtls" if self.control_plane_auth == "MUTUAL_TLS" else "plaintext",
                "variant": "delta" if self.options.xds_delta else "sotw",
                "subscriptions": ["CDS", "EDS", "NDS", "LDS virtualInbound"],
            },
            "dns": {
                "enabled": self.dns_enabled,
                "listen": list(self.options.dns_listen),
                "upstreams": self.upstreams,
                "search": list(self.search),
                "namespace": self.node.namespace,
                "domain": self.options.domain,
            },
            "capture": self.capture.as_dict()
            | {
                "install": self.options.capture or None,
                "proxy_uid": self.capture_config.proxy_uid if self.capture_config is not None else None,
            },
            "outbound_listen": list(self.options.outbound_listen),
            "probe": (probe.as_dict() | {"default_host": self._probe_host()}) if probe and self.options.probe else None,
            "state_dir": str(self.state.path) if self.state else None,
            "status_listen": self.options.status_listen,
            "files": {
                "cluster_env": b.paths.cluster_env,
                "mesh": b.paths.mesh,
                "root_cert": b.paths.root_cert if b.root_cert is not None else None,
                "token": b.paths.token if b.token is not None else None,
                "hosts": b.paths.hosts,
            },
            "token": {"subject": b.token.subject, "expires": b.token.expires} if b.token else None,
            "notes": list(b.notes),
        }

    @property
    def synced(self) -> bool:
        """A cluster set has been applied (from the control plane or the saved
        state), possibly empty: the data path has what it needs."""
        return CDS in self._versions

    def environment(self) -> dict[str, str]:
        """The effective environment (mesh.yaml proxyMetadata < process env <
        cluster.env): what ``pymesh.capture.CaptureConfig.from_env`` reads."""
        return {k: v.value for k, v in self.bootstrap.env.items()}

    def _probe_host(self) -> str:
        # Istio: the first proxy IP, or localhost when asked to (§1.2 "default host").
        if truthy(self.bootstrap.get("REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION")) or not self.node.ip:
            return "localhost"
        return self.node.ip

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Agent:
        if self.started:
            return self
        self._stop.clear()
        self._load_persisted()
        if self.dns_enabled:
            from pymesh.dnsproxy.server import DnsProxy

            self.dns = DnsProxy(
                None,
                listen=list(self.options.dns_listen),
                upstreams=self.upstreams,
                workers=self.options.dns_workers,
                ttl=self.options.dns_ttl,
                timeout=self.options.dns_timeout,
            )
            if self.names is not None:
                self.dns.server.swap_table(self.names)
            addrs = self.dns.start()
            log.info("DNS proxy on %s, upstreams %s", ", ".join(addrs), self.upstreams)
        try:
            self._start_data_path()
        except BaseException:
            self.started = True
            self.stop()
            raise
        # LDS: only the one listener that carries this workload's PeerAuthentication mode.
        subs: dict[str, set[str] | None] = {CDS: None, EDS: self._eds_names(), NDS: None, LDS: {"virtualInbound"}}
        self.client = XdsClient(
            self.target,
            self.node.to_proto(),
            {CDS: self._on_cds, EDS: self._on_eds, NDS: self._on_nds, LDS: self._on_lds},
            subscriptions=subs,
            versions=dict(self._versions),
            backoff_base=self.options.backoff_base,
            backoff_max=self.options.backoff_max,
            on_state=self._on_xds_state,
            delta=self.options.xds_delta,
        )
        if self.health is not None:
            self.client.send_health(*self.health)
        if self.control_plane_auth == "MUTUAL_TLS":
            from pymesh.security.agent import attach_tls

            self.certs = attach_tls(self, self.client)
            self.certs.on_renew = self._apply_identity
            held = self.certs.held
            if held is not None and held.valid():
                self._apply_identity(held)  # kept on disk: the data path has it before any CA call
        self.client.start()
        probe = self.bootstrap.readiness_probe
        if probe is not None and self.options.probe:
            self.prober = Prober(
                probe, self._on_health, default_host=self._probe_host(), local_ips=self.node.ips
            ).start()
        self._ticker = threading.Thread(target=self._tick, name="pymesh-agent-tick", daemon=True)
        self._ticker.start()
        if self.options.status_listen:
            from pymesh.agent.status import StatusServer

            try:
                self.status_server = StatusServer(self, self.options.status_listen)
            except PymeshError:
                self.started = True
                self.stop()
                raise
        self.started = True
        log.info("agent %s started; control plane %s", self.node.id, self.target)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.status_server is not None:
            self.status_server.stop()
            self.status_server = None
        if self.prober is not None:
            self.prober.stop()
            self.prober = None
        if self.client is not None:
            self.client.stop()
            self.client = None
        if self.certs is not None:
            self.certs.stop()
            self.certs = None
        if self.capture_rules is not None:
            # Rules first: nothing may be redirected to a proxy that is going away.
            try:
                self.capture_rules.remove()
            except PymeshError as e:
                log.error("capture rules not removed: %s", e)
            self.capture_rules = None
        if self.inbound is not None:
            self.inbound.stop()
            self.inbound = None
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.dns is not None:
            self.dns.stop()
            self.dns = None
        if self._ticker is not None:
            self._ticker.join(5)
            self._ticker = None
        self.started = False

    def _capture_config(self) -> Any:
        import os

        from pymesh.capture import CaptureConfig

        def port_of(addrs: Sequence[str], default: int) -> int:
            for a in addrs:
                p = a.rpartition(":")[2]
                if p.isdigit() and int(p) > 0:
                    return int(p)
            return default

        o = self.options
        extra: dict[str, object] = {} if o.inbound_port is None else {"inbound_port": o.inbound_port}
        # Inbound capture (cluster.env's ISTIO_INBOUND_PORTS, as istioctl writes it) sends
        # connections to inbound_port, including the proxy's own to this VM's IP (istio-iptables'
        # lo rule, so the VM's own workload is reached through the inbound path as in Istio);
        # the inbound passthrough started before the rules listens there, so they are not refused.
        return CaptureConfig.from_env(
            self.environment(),
            proxy_uid=os.getuid() if o.proxy_uid is None else o.proxy_uid,
            dns_port=port_of(o.dns_listen, 15053),
            outbound_port=port_of(o.outbound_listen, 15001),
            dns_servers=read_resolv_conf(o.resolv_conf).nameservers,
            redirect_dns=bool(self.dns_enabled and self.capture.dns),
            name=o.capture_name,
            **extra,
        )

    def _inbound_listen(self) -> list[str]:
        # REDIRECT in PREROUTING delivers to the receiving interface's primary address: a
        # wildcard listener. IPv6 only where ::6 is local (Istio adds it to lo), else the app's
        # replies to ::6 would leave the host; such connections are refused rather than hung.
        import socket

        port = self.capture_config.inbound_port
        listen = [f"0.0.0.0:{port}"]
        if self.capture_config.ipv6 and socket.has_ipv6:
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                    s.bind(("::6", 0))
                listen.append(f"[::]:{port}")
            except OSError:
                pass
        return listen

    def _start_data_path(self) -> None:
        if self.options.outbound_listen:
            from pymesh.relay import start_outbound_proxy

            self.proxy = start_outbound_proxy(
                self.lb, self.redirect, listen=list(self.options.outbound_listen), logical_dns=self.logical_dns
            )
            log.info("outbound proxy on %s", ", ".join(self.proxy.addresses))
        if self.capture_config is not None and self.capture_config.inbound_enabled and self.options.inbound_passthrough:
            # Before the rules: a captured inbound connection never meets a closed port.
            from pymesh.relay import start_inbound_passthrough

            self.inbound = start_inbound_passthrough(listen=self._inbound_listen())
            log.info("inbound passthrough on %s", ", ".join(self.inbound.addresses))
            if self.peer_authentication is not None:
                self._apply_peer_authentication(self.peer_authentication)  # the saved policy
        if self.capture_config is not None:
            from pymesh.capture import Capture

            self.capture_rules = Capture(self.capture_config, backend=self.options.capture or "auto")  # type: ignore[arg-type]
            self.capture_rules.install()
            log.info(
                "capture rules installed (%s, table/chains %r)", self.capture_rules.backend, self.options.capture_name
            )

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tick(self) -> None:
        last_health = time.monotonic()
        iv = self.options.health_resend_interval
        step = min(1.0, iv) if iv > 0 else 1.0
        while not self._stop.wait(step):
            try:
                self.lb.tick()
            except PymeshError:
                log.exception("lbtable tick failed")
            if self._warming:
                self._expire_warming(time.monotonic())
            if iv > 0 and time.monotonic() - last_health >= iv and self.client is not None:
                self.client.resend_health()
                last_health = time.monotonic()

    def _expire_warming(self, now: float) -> None:
        with self._apply_lock:
            expired = {n: self._clusters[n] for n, t in self._warming.items() if t <= now and n in self._clusters}
            if not expired:
                return
            log.warning(
                "no endpoints for %s within %gs; serving without endpoints",
                ", ".join(sorted(expired)),
                self.options.warm_timeout,
            )
            try:
                self.lb.load(self._lb_input(expired, self._cla), replace=False)
            except PymeshError as e:  # validated at CDS time; kept out rather than crash the ticker
                log.error("warming clusters not added: %s", e)
            for n in expired:
                self._warming.pop(n, None)
            self._rebuild_redirect()
            self._publish()

    def _on_xds_state(self, state: str, detail: str) -> None:
        if state == "connected":
            log.info("connected to the control plane at %s", detail)
        elif state == "backoff":
            log.warning("control plane unreachable (%s); serving the last good tables", detail)

    def _on_health(self, healthy: bool, message: str) -> None:
        self.health = (healthy, message)
        if self.client is not None:
            self.client.send_health(healthy, message)

    # --- the interface for the data path ---------------------------------------------------

    def on_update(self, callback: Callable[[Tables], None]) -> None:
        """Calls ``callback(tables)`` after every change (and once now)."""
        self._callbacks.append(callback)
        callback(self.tables)

    def attach(self, proxy: Any) -> None:
        """Keeps an outbound proxy (``pymesh.relay.OutboundProxy``, or anything
        with its ``swap_tables(redirect=, lb=, logical_dns=)``) serving this
        agent's tables: swapped now and after every change."""

        def update(t: Tables) -> None:
            proxy.swap_tables(redirect=t.redirect, lb=t.lb, logical_dns=t.logical_dns)

        self.on_update(update)

    def route(self, address: str, port: int, hash_key: str | bytes | None = None) -> Route:
        """Where a captured connection to ``address:port`` goes."""
        verdict, cluster = self.redirect.classify(address, port)
        if verdict != "cluster" or cluster is None:
            return Route(verdict)
        if cluster in self.logical_dns:
            host, p = self.logical_dns[cluster]
            return Route("cluster", cluster, f"{host}:{p}")
        try:
            return Route("cluster", cluster, self.lb.pick(cluster, hash_key))
        except PymeshError:
            return Route("cluster", cluster, None)

    def endpoints(self) -> dict[str, list[dict[str, Any]]]:
        """Every cluster's endpoints as the lbtable sees them (a cluster removed
        by a push while this runs is left out)."""
        out = {}
        for name in self.lb.clusters():
            try:
                out[name] = self.lb.endpoints(name)
            except PymeshError:
                continue
        return out

    def status(self) -> dict[str, Any]:
        c = self.client
        return {
            "node": self.node.id,
            "control_plane": self.target,
            "xds": c.state if c else "stopped",
            "last_error": c.last_error if c else "",
            "versions": dict(c.versions) if c else dict(self._versions),
            "stats": dict(c.stats) if c else {},
            "last_nack": c.last_nack if c else None,
            "clusters": len(self._clusters),
            "endpoints": sum(len(eps) for eps in self.endpoints().values()),
            "names": len(self.names) if self.names is not None else 0,
            "generation": self.tables.generation,
            "warming": sorted(self._warming),
            "health": self.health,
            "loaded_from_disk": list(self.loaded_from_disk),
            "dns": self.dns.server.addresses if self.dns is not None else [],
            "status": self.status_server.address if self.status_server is not None else None,
            "peer_authentication": self.peer_authentication,
            "identity": self.data_path_identity,
        }

    # --- applying pushes -------------------------------------------------------------------

    @staticmethod
    def _svc(name: str, cluster: dict[str, Any]) -> str:
        """The EDS resource name of a cluster: its service_name, else its name."""
        return str((cluster.get("eds_cluster_config") or {}).get("service_name") or name)

    def _eds_names(self) -> set[str]:
        return {self._svc(n, c) for n, c in self._clusters.items() if c.get("type") in ("EDS", 3)}

    def _lb_input(self, clusters: dict[str, dict[str, Any]], cla: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for name, c in sorted(clusters.items()):
            if c.get("type") not in LB_TYPES:
                continue
            if c.get("type") == "EDS":
                svc = str((c.get("eds_cluster_config") or {}).get("service_name") or name)
                a = cla.get(svc)
                c = dict(c)
                if a is not None:
                    c["load_assignment"] = a
                else:
                    c.pop("load_assignment", None)
            out.append(c)
        return out

    def _on_cds(self, type_url: str, resources: list[Any], version: str, *, persist: bool = True) -> None:
        from envoy.config.cluster.v3 import cluster_pb2

        clusters: dict[str, dict[str, Any]] = {}
        anys: dict[str, Any] = {}
        logical: dict[str, tuple[str, int]] = {}
        changed: set[str] = set()
        for i, a in enumerate(resources):
            msg = _unpack(a, CDS, cluster_pb2.Cluster)
            if not msg.name:
                raise XdsClientError(f"clusters[{i}]: no name")
            if msg.name in clusters:
                raise XdsClientError(f"cluster {msg.name!r} appears twice")
            old = self._cds.get(msg.name)
            if old is not None and old.value == a.value and msg.name in self._clusters:
                d = self._clusters[msg.name]  # same bytes: no conversion, no rebuild
            else:
                d = _to_dict(msg)
                changed.add(msg.name)
            ctype = d.get("type")
            if ctype not in LB_TYPES:
                if ctype in ("LOGICAL_DNS", "STRICT_DNS"):
                    try:
                        sa = d["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
                            "socket_address"
                        ]
                        logical[msg.name] = (str(sa["address"]), int(sa.get("port_value", 0)))
                    except (KeyError, IndexError, TypeError, ValueError):
                        raise XdsClientError(f"cluster {msg.name!r}: {ctype} without an endpoint address") from None
                elif msg.name in changed:
                    log.warning("cluster %s: type %s not served by the lbtable; left out", msg.name, ctype)
            clusters[msg.name] = d
            anys[msg.name] = a
        with self._apply_lock:
            # Warming (Envoy's make-before-break, reference §B.2): a changed EDS
            # cluster whose endpoints are not known yet waits for its EDS (its
            # previous version, if any, keeps serving). It is still validated
            # now, on a scratch table, so a bad definition is this push's NACK.
            warming = {
                n for n in changed if clusters[n].get("type") == "EDS" and self._svc(n, clusters[n]) not in self._cla
            }
            if warming:
                LbTable(seed=0).load(self._lb_input({n: clusters[n] for n in warming}, {}), replace=True)
            # SotW CDS carries every cluster; only the new and changed ones are
            # built (one upsert: the lbtable validates them all first and swaps
            # atomically, so an error leaves the serving table unchanged), then
            # the clusters no longer served are removed.
            upsert = self._lb_input({n: clusters[n] for n in changed - warming}, self._cla)
            if upsert:
                self.lb.load(upsert, replace=False)
            served = {n for n, c in clusters.items() if c.get("type") in LB_TYPES}
            gone = [n for n in self.lb.clusters() if n not in served]
            if gone:
                self.lb.remove(gone)
            self._clusters, self._cds, self.logical_dns = clusters, anys, logical
            now = time.monotonic()
            self._warming = {
                n: self._warming.get(n, now + self.options.warm_timeout)
                for n in warming | set(self._warming)
                if n in clusters and n not in changed - warming
            }
            self._versions[CDS] = version
            wanted = self._eds_names()
            # Forget endpoints of clusters that are gone (EDS deletion is implicit, §B.2).
            self._cla = {k: v for k, v in self._cla.items() if k in wanted}
            self._eds = {k: v for k, v in self._eds.items() if k in wanted}
            if changed or gone:
                self._rebuild_redirect()
                self._publish()
        if self.client is not None:
            self.client.subscribe(EDS, wanted)
        if persist:
            self._save(CDS, version, list(anys.values()))
            self._save(EDS, self._versions.get(EDS, ""), list(self._eds.values()))

    def _on_eds(self, type_url: str, resources: list[Any], version: str, *, persist: bool = True) -> None:
        from envoy.config.endpoint.v3 import endpoint_pb2

        incoming: dict[str, dict[str, Any]] = {}
        anys: dict[str, Any] = {}
        for i, a in enumerate(resources):
            msg = _unpack(a, EDS, endpoint_pb2.ClusterLoadAssignment)
            if not msg.cluster_name:
                raise XdsClientError(f"load assignment [{i}]: no cluster_name")
            if msg.cluster_name in incoming or msg.cluster_name in anys:
                raise XdsClientError(f"load assignment {msg.cluster_name!r} appears twice")
            anys[msg.cluster_name] = a
            old = self._eds.get(msg.cluster_name)
            if old is not None and old.value == a.value and msg.cluster_name in self._cla:
                continue  # unchanged (e.g. the full set again after a reconnect): nothing to rebuild
            incoming[msg.cluster_name] = _to_dict(msg)
        with self._apply_lock:
            cla = {**self._cla, **incoming}
            # Only the clusters whose assignment came are rebuilt (an upsert);
            # the others keep their snapshots, round-robin positions and all.
            touched = {n: c for n, c in self._clusters.items() if self._svc(n, c) in incoming}
            if touched:
                self.lb.load(self._lb_input(touched, cla), replace=False)
            self._cla = cla
            self._eds = {**self._eds, **anys}
            self._versions[EDS] = version
            warmed = [n for n in touched if self._warming.pop(n, None) is not None]
            if warmed:
                self._rebuild_redirect()  # their VIPs now lead to them
            if touched:
                self._publish()
        if persist and incoming:
            self._save(EDS, version, list(self._eds.values()))

    def _on_nds(self, type_url: str, resources: list[Any], version: str, *, persist: bool = True) -> None:
        if not resources:
            return  # istio-agent ignores an empty NDS response and keeps its table
        if len(resources) != 1:
            raise XdsClientError(f"NDS response with {len(resources)} tables (expected one)")
        table = NameTable.from_nds(
            resources[0], namespace=self.node.namespace, domain=self.options.domain, search=list(self.search)
        )
        with self._apply_lock:
            self.names = table
            self._nds = resources[0]
            self._versions[NDS] = version
            if self.dns is not None:
                self.dns.server.swap_table(table)
            self._rebuild_redirect()
            self._publish()
        if persist:
            self._save(NDS, version, resources)

    def _on_lds(self, type_url: str, resources: list[Any], version: str, *, persist: bool = True) -> None:
        from pymesh.agent.mtls import inbound_mode

        mode = inbound_mode(resources)
        if mode is None:
            return  # no virtualInbound (yet): the mode in force stays
        with self._apply_lock:
            if self.inbound is not None:
                self._apply_peer_authentication(mode)
            elif self.peer_authentication != mode:
                log.info("PeerAuthentication %s (applied when the inbound listener starts)", mode)
            self.peer_authentication = mode
            self._lds = resources
            self._versions[LDS] = version
        if persist:
            self._save(LDS, version, resources)

    def _apply_peer_authentication(self, mode: str) -> None:
        from pymesh.agent.mtls import set_peer_authentication

        if not set_peer_authentication(self.inbound, mode):
            return
        if mode != self.peer_authentication or not self._pa_applied:
            log.info("inbound peer authentication %s (from the control plane)", mode)
            if mode == "STRICT" and not self.data_path_identity:
                log.warning("STRICT without a workload certificate: inbound connections are refused until one is held")
        self._pa_applied = True

    def _apply_identity(self, held: Any) -> None:
        """The workload certificate to the outbound proxy and the inbound listener."""
        from pymesh.agent.mtls import set_identity

        certs = self.certs
        roots = certs.root_pem if certs is not None else held.chain
        td = self.bootstrap.get("TRUST_DOMAIN") or "cluster.local"
        targets = (("outbound proxy", self.proxy), ("inbound listener", self.inbound))
        if not any(r is not None for _, r in targets):
            return
        if set_identity(targets, held.chain, held.key, roots, td):
            log.info("data path mTLS identity %s (certificate until %s)", held.spiffe_id, time.ctime(held.not_after))
            self.data_path_identity = held.spiffe_id

    def _redirect_doc(self, services: list[dict[str, Any]]) -> dict[str, Any]:
        cap = self.capture
        return {
            "services": services,
            "include_ip_ranges": list(cap.outbound_cidrs) or ["*"],
            "exclude_ip_ranges": list(cap.exclude_cidrs),
            "exclude_ports": list(cap.exclude_outbound_ports),
        }

    def _rebuild_redirect(self) -> None:
        from pymesh.controlplane.generators import parse_cluster_name

        services: list[dict[str, Any]] = []
        seen: dict[tuple[str, int], str] = {}
        names = self.names
        for cname in sorted(self._clusters):
            parsed = parse_cluster_name(cname)
            if parsed is None or names is None:
                continue
            host, port, subset = parsed
            if subset:
                continue  # subsets are chosen by routes, never by destination
            if cname in self._warming and cname not in self.lb:
                continue  # not serving yet: its VIPs pass through until its endpoints arrive
            m = names.lookup(host)
            if m is None:
                continue
            for ip in (*m.ipv4, *m.ipv6):
                key = (ip, port)
                if key in seen:
                    if seen[key] != cname:
                        log.warning("%s:%d is a VIP of %s and %s; the first wins", ip, port, seen[key], cname)
                    continue
                seen[key] = cname
                services.append({"address": ip, "port": port, "cluster": cname})
        try:
            redirect = self._build_redirect(services)
        except Exception as e:
            # The tables this push changed are already serving; a redirection
            # table that cannot be built keeps the previous one (logged), it
            # does not turn an applied push into a NACK.
            log.error("redirection table not rebuilt, keeping the previous one: %s", e)
            return
        self.services, self.redirect = services, redirect

    def _build_redirect(self, services: list[dict[str, Any]]) -> RedirectTable:
        if self.options.redirect_builder is not None:
            return self.options.redirect_builder(services)
        if self.capture_config is not None:
            from pymesh.capture import redirect_table

            # The kernel rules and the proxy agree on what is captured.
            return redirect_table(self.capture_config, services)
        return RedirectTable.from_dict(self._redirect_doc(services))

    def _publish(self) -> None:
        self.tables = Tables(
            self.tables.generation + 1,
            self.lb,
            self.redirect,
            self.names,
            dict(self.logical_dns),
            tuple(self.services),
        )
        if self.proxy is not None:
            t = self.tables
            self.proxy.swap_tables(redirect=t.redirect, lb=t.lb, logical_dns=t.logical_dns)
        for cb in list(self._callbacks):
            try:
                cb(self.tables)
            except Exception:
                log.exception("table update callback failed")

    # --- persistence -----------------------------------------------------------------------

    def _save(self, type_url: str, version: str, resources: list[Any]) -> None:
        if self.state is None:
            return
        try:
            if not self._identity_saved:
                self.state.save_identity(self._identity())
                self._identity_saved = True
            self.state.save(type_url, version, resources)
        except PymeshError as e:
            log.error("%s", e)

    def _identity(self) -> dict[str, str]:
        # The discovery address as configured (a name), not the IP the hosts file
        # gives it today: a new gateway IP is the same mesh.
        return {"node": self.node.id, "control_plane": self.options.xds_address or self.bootstrap.discovery_address}

    def _load_persisted(self) -> None:
        if self.state is None:
            return
        saved = self.state.identity()
        if saved is not None and saved != self._identity():
            log.warning(
                "saved state in %s belongs to %s; discarded (this agent is %s)",
                self.state.path,
                saved,
                self._identity(),
            )
            self.state.clear()  # never mixed with this agent's own state later
            return
        for t, apply in ((NDS, self._on_nds), (CDS, self._on_cds), (EDS, self._on_eds), (LDS, self._on_lds)):
            msg = self.state.load(t)
            if msg is None:
                continue
            try:
                apply(t, list(msg.resources), msg.version_info, persist=False)
            except Exception as e:
                log.warning(
                    "saved %s state in %s not usable (%s); waiting for the control plane", t, self.state.path, e
                )
                continue
            self.loaded_from_disk.append(t.rsplit(".", 1)[-1])
        if self.loaded_from_disk:
            log.info("serving saved tables from %s: %s", self.state.path, ", ".join(self.loaded_from_disk))

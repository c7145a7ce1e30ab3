"""The VM agent: joins the mesh from Istio's VM files and keeps the local
tables (names, clusters, redirection) in step with the control plane.

    from pymesh.agent import Agent, AgentOptions, load_bootstrap
    agent = Agent(load_bootstrap("vm-files/"), AgentOptions(dns_listen=["127.0.0.1:15053"]))
    agent.start()
    ...
    agent.stop()

The agent is wiring: :mod:`.config` resolves what it runs with (``plan()``
is the dry run), :mod:`.state` applies pushes to the tables, :mod:`.dataplane`
runs the DNS proxy, the relays and the capture rules, :mod:`.certs` holds the
workload certificate, :mod:`.xds_client` the ADS stream and :mod:`.probes`
the readiness probe. What it runs:

- an ADS client to the control plane (``discoveryAddress``, its host
  resolved through the ``hosts`` file) subscribing CDS, EDS (the EDS
  clusters' service names), NDS and the ``virtualInbound`` listener; each
  push is validated by building the native tables, then ACKed, or NACKed
  with the error while the last good tables keep serving;
- the DNS proxy when the node captures DNS (``ISTIO_META_DNS_CAPTURE``);
- the readiness probe from mesh.yaml, its transitions reported as
  ``istio.v1.HealthInformation`` on the stream (re-sent on every new
  stream and every ``health_resend_interval`` seconds);
- the last good tables persisted in the state directory and loaded at start;
- optionally the status port and the data path (outbound proxy, inbound
  passthrough, capture rules), which ``pymesh agent`` turns on by default.

For the data path: ``agent.lb`` (one live LbTable), ``agent.redirect``,
``agent.logical_dns``, ``agent.tables`` (one snapshot of all of them),
``agent.on_update(cb)``, ``agent.attach(proxy)`` and
``agent.route(ip, port)`` (classify + pick in one call).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymesh._native import LbTable, NameTable, PymeshError, RedirectTable
from pymesh.agent.bootstrap import Bootstrap
from pymesh.agent.certs import Held, WorkloadCerts, server_name
from pymesh.agent.config import AgentConfig, AgentOptions, plan, resolve
from pymesh.agent.dataplane import DataPath
from pymesh.agent.errors import AgentError
from pymesh.agent.node import NodeInfo
from pymesh.agent.persist import StateDir
from pymesh.agent.probes import Prober
from pymesh.agent.state import MeshState, Tables
from pymesh.agent.xds_client import XdsClient
from pymesh.capture import CaptureConfig, redirect_table
from pymesh.mesh.defaults import default_dns_listen
from pymesh.mesh.xds import CDS, EDS, LDS, NDS, RDS

log = logging.getLogger(__name__)

__all__ = ["Agent", "AgentOptions", "Route", "Tables", "default_dns_listen"]


@dataclass(frozen=True)
class Route:
    verdict: str  # "cluster", "passthrough", "bypass"
    cluster: str | None = None
    endpoint: str | None = None  # "ip:port"; None when the cluster has no endpoint to take it


class Agent:
    def __init__(self, bootstrap: Bootstrap, options: AgentOptions | None = None) -> None:
        self.config: AgentConfig = resolve(bootstrap, options)
        c = self.config
        self.bootstrap = bootstrap
        self.options = c.options
        self.node: NodeInfo = c.node
        self.target = c.target
        self.control_plane_auth = c.control_plane_auth
        self.state = StateDir(c.state_dir) if c.state_dir is not None else None
        custom = c.options.redirect_builder

        def builder(services: list[dict[str, Any]], port_clusters: list[tuple[int, str]], default: str | None) -> Any:
            if custom is not None:
                return custom(services)
            return redirect_table(c.capture, services, port_clusters=port_clusters, default_cluster=default)

        self.mesh = MeshState(
            namespace=c.node.namespace,
            domain=c.options.domain,
            search=c.search,
            redirect_builder=builder,
            warm_timeout=c.options.warm_timeout,
            lb_seed=c.options.lb_seed,
            store=self.state,
            identity=c.identity(),
        )
        self.data = DataPath(c)
        self.mesh.apply_mode = self.data.apply_peer_authentication
        self.mesh.apply_access_log = self.data.apply_access_log
        self.mesh.on_update(self.data.swap)
        self.client: XdsClient | None = None
        self.certs: WorkloadCerts | None = None
        self.prober: Prober | None = None
        self.status_server: Any = None  # pymesh.agent.status.StatusServer when running
        self.health: tuple[bool, str] | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.started = False

    # --- views ---------------------------------------------------------------------------------

    def plan(self) -> dict[str, Any]:
        """What the agent configures, as data (``pymesh agent --dry-run``)."""
        return plan(self.config)

    def environment(self) -> dict[str, str]:
        """The effective environment (mesh.yaml proxyMetadata < process env < cluster.env)."""
        return {k: v.value for k, v in self.bootstrap.env.items()}

    @property
    def capture(self) -> CaptureConfig:
        return self.config.capture

    @property
    def dns_enabled(self) -> bool:
        return self.config.dns_enabled

    @property
    def upstreams(self) -> list[str]:
        return list(self.config.upstreams)

    @property
    def search(self) -> tuple[str, ...]:
        return self.config.search

    @property
    def synced(self) -> bool:
        return self.mesh.synced

    @property
    def lb(self) -> LbTable:
        return self.mesh.lb

    @property
    def names(self) -> NameTable | None:
        return self.mesh.names

    @property
    def redirect(self) -> RedirectTable:
        return self.mesh.redirect

    @property
    def logical_dns(self) -> dict[str, tuple[str, int]]:
        return self.mesh.logical_dns

    @property
    def services(self) -> list[dict[str, Any]]:
        return self.mesh.services

    @property
    def tables(self) -> Tables:
        return self.mesh.tables

    @property
    def loaded_from_disk(self) -> list[str]:
        return self.mesh.loaded_from_disk

    @property
    def peer_authentication(self) -> str | None:
        return self.mesh.peer_authentication

    @property
    def dns(self) -> Any:
        return self.data.dns

    @property
    def proxy(self) -> Any:
        return self.data.proxy

    @property
    def inbound(self) -> Any:
        return self.data.inbound

    @property
    def capture_rules(self) -> Any:
        return self.data.capture_rules

    @property
    def data_path_identity(self) -> str:
        return self.data.identity

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Agent:
        if self.started:
            return self
        c = self.config
        self._stop.clear()
        self.mesh.load_persisted()
        self.data.start(self.mesh.tables, self.mesh.peer_authentication)
        try:
            self._start_control_plane()
            if c.probe is not None:
                self.prober = Prober(c.probe, self._on_health, default_host=c.probe_host, local_ips=c.node.ips).start()
            self._ticker = threading.Thread(target=self._tick, name="pymesh-agent-tick", daemon=True)
            self._ticker.start()
            if c.options.status_listen:
                from pymesh.agent.status import StatusServer

                self.status_server = StatusServer(self, c.options.status_listen)
        except BaseException:
            self.started = True
            self.stop()
            raise
        self.started = True
        log.info("agent %s started; control plane %s", c.node.id, c.target)
        return self

    def _start_control_plane(self) -> None:
        c = self.config
        # As a sidecar subscribes: CDS and LDS (wildcard), EDS for the EDS clusters, RDS for the
        # routes the listeners name, NDS; the inbound mode comes from the virtualInbound listener.
        subs: dict[str, set[str] | None] = {
            CDS: None,
            EDS: self.mesh.eds_names(),
            NDS: None,
            LDS: None,
            RDS: self.mesh.rds_names(),
        }
        handlers = self.mesh.handlers()
        handlers[CDS] = self._on_cds
        handlers[LDS] = self._on_lds
        self.client = XdsClient(
            c.target,
            c.node.to_proto(),
            handlers,
            subscriptions=subs,
            versions=dict(self.mesh.versions),
            backoff_base=c.options.backoff_base,
            backoff_max=c.options.backoff_max,
            on_state=self._on_xds_state,
            delta=c.options.xds_delta,
        )
        if self.health is not None:
            self.client.send_health(*self.health)
        if c.control_plane_auth == "MUTUAL_TLS":
            self.certs = self._workload_certs()
            self.client.channel_factory = self.certs.channel
            self.certs.on_renew = self._apply_identity
            held = self.certs.held
            if held is not None and held.valid():
                self._apply_identity(held)  # kept on disk: the data path has it before any CA call
            self.certs.start()
            log.info("mTLS to the control plane as %s (certificates in %s)", self.certs.server_name, c.cert_dir)
        self.client.start()

    def _workload_certs(self) -> WorkloadCerts:
        c, b = self.config, self.bootstrap
        if not b.root_cert:
            raise AgentError(f"{b.paths.root_cert}: MUTUAL_TLS to the control plane needs root-cert.pem")
        token_path = Path(b.paths.token)

        def token() -> str | None:
            # Re-read on every use, so an operator's fresh token is picked up.
            try:
                text = token_path.read_text().strip()
            except OSError:
                text = ""
            return text or (b.token.text if b.token is not None else None)

        return WorkloadCerts(
            c.target,
            b.root_cert,
            c.cert_dir,
            server_name=server_name(b.discovery_address),
            token=token,
            cluster_id=str(c.node.metadata.get("CLUSTER_ID") or ""),
            ttl=c.cert_ttl,
            root_file=b.paths.root_cert,
        )

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
        self.data.stop()
        if self._ticker is not None:
            self._ticker.join(5)
            self._ticker = None
        self.started = False

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tick(self) -> None:
        last_health = time.monotonic()
        iv = self.config.options.health_resend_interval
        step = min(1.0, iv) if iv > 0 else 1.0
        while not self._stop.wait(step):
            try:
                self.mesh.lb.tick()
            except PymeshError:
                log.exception("lbtable tick failed")
            if self.mesh.warming:
                self.mesh.expire_warming(time.monotonic())
            if iv > 0 and time.monotonic() - last_health >= iv and self.client is not None:
                self.client.resend_health()
                last_health = time.monotonic()

    # --- events ------------------------------------------------------------------------------

    def _on_cds(self, type_url: str, resources: list[Any], version: str, *, persist: bool = True) -> None:
        wanted = self.mesh.on_cds(type_url, resources, version, persist=persist)
        if self.client is not None:
            self.client.subscribe(EDS, wanted)

    def _on_lds(self, type_url: str, resources: list[Any], version: str, *, persist: bool = True) -> None:
        wanted = self.mesh.on_lds(type_url, resources, version, persist=persist)
        if self.client is not None:
            self.client.subscribe(RDS, wanted)

    def _on_xds_state(self, state: str, detail: str) -> None:
        if state == "connected":
            log.info("connected to the control plane at %s", detail)
        elif state == "backoff":
            log.warning("control plane unreachable (%s); serving the last good tables", detail)

    def _on_health(self, healthy: bool, message: str) -> None:
        self.health = (healthy, message)
        if self.client is not None:
            self.client.send_health(healthy, message)

    def _apply_identity(self, held: Held) -> None:
        """The workload certificate to the outbound proxy and the inbound listener."""
        roots = self.certs.root_pem if self.certs is not None else held.chain
        self.data.apply_identity(held, roots)

    # --- the interface for the data path ---------------------------------------------------

    def on_update(self, callback: Callable[[Tables], None]) -> None:
        """Calls ``callback(tables)`` after every change (and once now)."""
        self.mesh.on_update(callback)

    def attach(self, proxy: Any) -> None:
        """Keeps an outbound proxy (``pymesh.relay.OutboundProxy``, or anything
        with its ``swap_tables(redirect=, lb=, logical_dns=)``) serving this
        agent's tables: swapped now and after every change."""

        def update(t: Tables) -> None:
            proxy.swap_tables(redirect=t.redirect, lb=t.lb, logical_dns=t.logical_dns)
            if hasattr(proxy, "set_http_routes"):
                proxy.set_http_routes(list(t.http_routes), list(t.http_tcp))

        self.on_update(update)

    def route(self, address: str, port: int, hash_key: str | bytes | None = None) -> Route:
        """Where a captured connection to ``address:port`` goes."""
        verdict, cluster = self.mesh.redirect.classify(address, port)
        if verdict != "cluster" or cluster is None:
            return Route(verdict)
        if cluster in self.mesh.logical_dns:
            host, p = self.mesh.logical_dns[cluster]
            return Route("cluster", cluster, f"{host}:{p}")
        try:
            return Route("cluster", cluster, self.mesh.lb.pick(cluster, hash_key))
        except PymeshError:
            return Route("cluster", cluster, None)

    def endpoints(self) -> dict[str, list[dict[str, Any]]]:
        """Every cluster's endpoints as the lbtable sees them (a cluster removed
        by a push while this runs is left out)."""
        out = {}
        for name in self.mesh.lb.clusters():
            try:
                out[name] = self.mesh.lb.endpoints(name)
            except PymeshError:
                continue
        return out

    def status(self) -> dict[str, Any]:
        c = self.client
        return {
            "node": self.node.id,
            "control_plane": (c.address or self.target) if c else self.target,
            "control_planes": self.config.targets,
            "xds": c.state if c else "stopped",
            "last_error": c.last_error if c else "",
            "versions": dict(c.versions) if c else dict(self.mesh.versions),
            "stats": dict(c.stats) if c else {},
            "last_nack": c.last_nack if c else None,
            "xds_types": c.type_stats() if c else {},
            "clusters": len(self.mesh.clusters),
            "endpoints": sum(len(eps) for eps in self.endpoints().values()),
            "names": len(self.mesh.names) if self.mesh.names is not None else 0,
            "generation": self.mesh.tables.generation,
            "warming": sorted(self.mesh.warming),
            "health": self.health,
            "loaded_from_disk": list(self.mesh.loaded_from_disk),
            "dns": self.data.dns.server.addresses if self.data.dns is not None else [],
            "status": self.status_server.address if self.status_server is not None else None,
            "capture": {
                "installed": self.data.capture_rules is not None,
                "backend": self.data.capture_rules.backend if self.data.capture_rules is not None else None,
                "error": self.data.capture_error,
            },
            "peer_authentication": self.mesh.peer_authentication,
            "identity": self.data.identity,
            "certificates": {
                "identity": self.certs.held.spiffe_id if self.certs and self.certs.held else "",
                "not_after": self.certs.held.not_after if self.certs and self.certs.held else None,
                "renewals": self.certs.renewals if self.certs else 0,
                "last_error": self.certs.last_error if self.certs else "",
            },
        }

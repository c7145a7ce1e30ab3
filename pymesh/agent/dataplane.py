"""The agent's data path: the DNS proxy, the outbound proxy (15001), the
inbound passthrough (15006), the capture rules, and what the control plane
and the CA hand them (tables, the inbound mTLS mode, the workload
certificate). Everything here owns sockets or kernel state; the tables it
serves come from :class:`pymesh.agent.state.MeshState`.

Start order: the DNS proxy, the outbound proxy, the inbound listener, then
the capture rules, so a captured connection never meets a closed port; stop
order is the reverse with the rules first, so nothing is redirected to a
proxy that is going away.

Without the privileges for the rules (no CAP_NET_ADMIN), the rules are
skipped when ``capture_optional`` says so: the agent then serves DNS and its
proxies on their ports and :attr:`DataPath.capture_error` says what could not
be installed (``pymesh agent`` prints it).

Workload mTLS: the certificate from :mod:`pymesh.agent.certs` goes to the
outbound proxy and the inbound listener (``set_identity``) at start (a valid
one kept on disk) and after every renewal or root change; a certificate the
relay refuses is logged and the previous identity keeps serving. The inbound
mode (STRICT, PERMISSIVE, DISABLE) comes from the ``virtualInbound`` listener;
until one is known the listener runs Istio's default, PERMISSIVE.

Telemetry: both relays are told this workload's name, namespace, app,
version, canonical service and revision and cluster
(:func:`pymesh.agent.config.local_workload`) for Istio's ``istio_tcp_*``
labels; the principals come from each connection's mTLS handshake.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pymesh._native import PymeshError
from pymesh.agent.config import AgentConfig, local_workload
from pymesh.agent.errors import AgentError, XdsClientError
from pymesh.agent.state import Tables
from pymesh.mesh.addr import format_host_port, parse_host_port
from pymesh.mesh.errors import AddressError

if TYPE_CHECKING:
    from pymesh.agent.certs import Held, WorkloadCerts

log = logging.getLogger(__name__)


class DataPath:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.dns: Any = None  # pymesh.dnsproxy.DnsProxy while running
        self.proxy: Any = None  # pymesh.relay.OutboundProxy while running
        self.inbound: Any = None  # the inbound passthrough while inbound capture is on
        self.capture_rules: Any = None  # pymesh.capture.Capture while installed
        self.gateway: Any = None  # the SNI (AUTO_PASSTHROUGH) listener of a gateway
        self.forwards: list[tuple[str, Any]] = []  # a gateway's forwarded ports: (name, relay)
        self.pushed_access_log: tuple[str, str] | None = None  # what the control plane's listeners say
        self.capture_error = ""  # why the rules are not installed ("" when they are or were not asked for)
        self.identity = ""  # the SPIFFE identity the relay holds ("": none)
        self.mode: str | None = None  # the inbound mTLS mode applied (None: the listener's default)
        self.nofile = 0  # the soft RLIMIT_NOFILE the data path runs with

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, tables: Tables, peer_authentication: str | None) -> None:
        c, o = self.config, self.config.options
        self.nofile = raise_nofile_limit()
        try:
            if c.dns_enabled:
                from pymesh.dnsproxy.server import DnsProxy

                self.dns = DnsProxy(
                    None,
                    listen=list(c.dns_listen),
                    upstreams=list(c.upstreams),
                    workers=o.dns_workers,
                    ttl=o.dns_ttl,
                    timeout=o.dns_timeout,
                )
                if tables.names is not None:
                    self.dns.server.swap_table(tables.names)
                addrs = self.dns.start()
                log.info("DNS proxy on %s, upstreams %s", ", ".join(addrs), list(c.upstreams))
            if o.outbound_listen:
                from pymesh.relay import start_outbound_proxy

                self.proxy = start_outbound_proxy(
                    tables.lb,
                    tables.redirect,
                    listen=list(o.outbound_listen),
                    logical_dns=tables.logical_dns,
                    mark=o.capture_mark,
                    # Without a control plane CA there is no identity to hold: a mesh without
                    # mTLS (Istio's enableAutoMtls off). With MUTUAL_TLS a tlsMode: istio
                    # endpoint is never reached in plaintext (the relay waits for the identity).
                    auto_mtls=c.control_plane_auth == "MUTUAL_TLS",
                )
                self.proxy.set_local_workload(local_workload(c))
                set_http_routes(self.proxy, tables)
                log.info("outbound proxy on %s", ", ".join(self.proxy.addresses))
            if c.runs_inbound:
                from pymesh.relay import start_inbound_passthrough

                self.inbound = start_inbound_passthrough(listen=list(c.inbound_listen), mark=o.capture_mark)
                self.inbound.set_local_workload(local_workload(c))
                set_inbound_clusters(self.inbound, tables)
                log.info("inbound passthrough on %s", ", ".join(self.inbound.addresses))
                if peer_authentication is not None:
                    self.apply_peer_authentication(peer_authentication)  # the saved policy
            if o.gateway_listen:
                from pymesh.relay import start_sni_gateway

                self.gateway = start_sni_gateway(tables.lb, listen=list(o.gateway_listen))
                self.gateway.set_local_workload(local_workload(c))
                log.info("gateway AUTO_PASSTHROUGH on %s", ", ".join(self.gateway.addresses))
            for spec in o.forward:
                self.forwards.append(start_forward_spec(spec))
            self._set_access_log(c.access_log or self.pushed_access_log)
            if c.install_capture is not None:
                self._install_capture()
        except BaseException:
            self.stop()
            raise

    def _install_capture(self) -> None:
        from pymesh.capture import Capture

        c = self.config
        rules = Capture(c.capture, backend=c.install_capture or "auto")  # type: ignore[arg-type]
        try:
            rules.install()
        except PymeshError as e:
            if not c.options.capture_optional:
                raise
            self.capture_error = str(e)
            log.error(
                "capture rules NOT installed (%s); serving DNS on %s and the proxies on their ports, "
                "but no traffic is redirected to them. Run the agent with CAP_NET_ADMIN (as the systemd unit "
                "does), or with --capture off for DNS-only use.",
                e,
                ", ".join(c.dns_listen) if c.dns_enabled else "(DNS off)",
            )
            return
        self.capture_rules = rules
        log.info("capture rules installed (%s, table/chains %r)", rules.backend, c.capture.name)

    def stop(self) -> None:
        if self.capture_rules is not None:
            # Rules first: nothing may be redirected to a proxy that is going away.
            try:
                self.capture_rules.remove()
            except PymeshError as e:
                log.error("capture rules not removed: %s", e)
            self.capture_rules = None
        for _, relay in self.forwards:
            relay.stop()
        self.forwards = []
        for attr in ("gateway", "inbound", "proxy", "dns"):
            part = getattr(self, attr)
            if part is not None:
                part.stop()
                setattr(self, attr, None)

    def relays(self) -> list[tuple[str, Any]]:
        """The relays running, by the name their metrics carry (``relay`` label)."""
        named = [("outbound", self.proxy), ("inbound", self.inbound), ("gateway", self.gateway), *self.forwards]
        return [(n, r) for n, r in named if r is not None]

    # --- what the control plane and the CA hand the data path -------------------------------

    def swap(self, tables: Tables) -> None:
        """New tables for new connections and queries (in the apply lock)."""
        if self.proxy is not None:
            self.proxy.swap_tables(redirect=tables.redirect, lb=tables.lb, logical_dns=tables.logical_dns)
            set_http_routes(self.proxy, tables)
        if self.inbound is not None:
            set_inbound_clusters(self.inbound, tables)
        if self.gateway is not None:
            self.gateway.swap_tables(lb=tables.lb)
        if self.dns is not None and tables.names is not None:
            self.dns.server.swap_table(tables.names)

    def apply_access_log(self, access_log: tuple[str, str] | None) -> None:
        """The access log the control plane's listeners configure (istiod's meshConfig
        ``accessLogFile``): applied unless the agent's own configuration (flags, mesh.yaml)
        sets one, which wins. A file that cannot be opened is logged, not a NACK."""
        self.pushed_access_log = access_log
        if self.config.access_log is None:
            self._set_access_log(access_log)

    def _set_access_log(self, access_log: tuple[str, str] | None) -> None:
        path, encoding = access_log or (None, "TEXT")
        for name, relay in self.relays():
            try:
                relay.set_access_log(path, encoding)
            except (PymeshError, ValueError) as e:
                log.error("%s: access log %s not opened: %s", name, path, e)
        if access_log is not None:
            log.info("access log (%s) to %s", encoding, path)

    def apply_peer_authentication(self, mode: str) -> None:
        """The inbound mTLS mode to the inbound listener; a refusal is an
        XdsClientError (the LDS push is NACKed, the mode in force stays)."""
        listener = self.inbound
        if listener is None:
            if self.mode != mode:
                log.info("PeerAuthentication %s (applied when the inbound listener starts)", mode)
            return
        if not hasattr(listener, "set_peer_authentication"):
            log.warning("inbound listener has no mTLS in this build of pymesh._native; mode %s not applied", mode)
            return
        try:
            listener.set_peer_authentication(mode)
        except (ValueError, TypeError, PymeshError) as e:
            raise XdsClientError(f"inbound listener refused mode {mode!r}: {e}") from e
        if mode != self.mode:
            log.info("inbound peer authentication %s (from the control plane)", mode)
            if mode == "STRICT" and not self.identity:
                log.warning("STRICT without a workload certificate: inbound connections are refused until one is held")
        self.mode = mode

    def apply_identity(self, held: Held, roots: bytes) -> bool:
        """The workload certificate to the outbound proxy and the inbound
        listener (see :func:`set_identity`)."""
        targets = (("outbound proxy", self.proxy), ("inbound listener", self.inbound))
        if not any(r is not None for _, r in targets):
            return False
        if not set_identity(targets, held.chain, held.key, roots, self.config.trust_domain):
            return False
        log.info("data path mTLS identity %s (certificate until %s)", held.spiffe_id, time.ctime(held.not_after))
        self.identity = held.spiffe_id
        return True


def set_http_routes(proxy: Any, tables: Tables) -> None:
    """The HTTP ports' routes to the outbound's HTTP path. They were checked when the RDS
    push was accepted; a failure here is logged and the routes serving stay."""
    try:
        proxy.set_http_routes(list(tables.http_routes), list(tables.http_tcp))
    except PymeshError as e:
        log.error("HTTP routes not applied, keeping the previous ones: %s", e)


def set_inbound_clusters(inbound: Any, tables: Tables) -> None:
    """istiod's inbound clusters to the inbound relay: the protocol it speaks to the app on
    each port. A failure is logged and the previous ones stay."""
    try:
        inbound.set_inbound_clusters(list(tables.inbound_clusters))
    except PymeshError as e:
        log.error("inbound clusters not applied, keeping the previous ones: %s", e)


def start_forward_spec(spec: str) -> tuple[str, Any]:
    """A gateway's forwarded port from ``LISTEN=TARGET`` (the target's host
    resolved now, its first address taken); named ``forward-<listen port>``."""
    import socket

    from pymesh.relay import start_forward

    listen, sep, target = spec.partition("=")
    if not sep:
        raise AgentError(f"--forward {spec!r}: expected LISTEN=TARGET, e.g. 0.0.0.0:15012=10.0.0.1:15012")
    try:
        listen_at = parse_host_port(listen, what="forward listen", listen=True)
        target_at = parse_host_port(target, what="forward target")
    except AddressError as e:
        raise AgentError(str(e)) from None
    try:
        info = socket.getaddrinfo(target_at.host, target_at.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise AgentError(f"--forward {spec!r}: cannot resolve {target_at.host!r}: {e}") from None
    to = format_host_port(str(info[0][4][0]), target_at.port)
    relay = start_forward([format_host_port(listen_at.host, listen_at.port)], to)
    log.info("forwarding %s to %s (%s)", ", ".join(relay.addresses), to, target)
    return f"forward-{listen_at.port}", relay


def raise_nofile_limit() -> int:
    """Raises the soft RLIMIT_NOFILE to the hard limit (what Envoy's
    deployments and systemd's ``LimitNOFILE`` do): every relayed connection
    holds descriptors, and the usual soft 1024 would let a few hundred idle
    connections deny all captured traffic. Returns the soft limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # Linux's nr_open default
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("file descriptor limit raised from %d to %d", soft, hard)
            return hard
        except (ValueError, OSError) as e:
            log.warning("file descriptor limit stays at %d (cannot raise it to %d: %s)", soft, hard, e)
    return int(soft)


def set_identity(targets: Iterable[tuple[str, Any]], chain: bytes, key: bytes, roots: bytes, trust_domain: str) -> bool:
    """Hands the workload certificate to each (name, relay) that takes one.
    A certificate the relay refuses (ValueError) leaves its previous identity
    in place and is logged; nothing is raised, so a bad file never stops the
    agent. True when every target took it."""
    ok = True
    for name, relay in targets:
        if relay is None:
            continue
        if not hasattr(relay, "set_identity"):
            log.warning("%s has no mTLS in this build of pymesh._native; identity not applied", name)
            ok = False
            continue
        try:
            relay.set_identity(chain.decode(), key.decode(), roots.decode(), trust_domain)
        except (ValueError, TypeError, UnicodeDecodeError, PymeshError) as e:
            log.error("%s refused the workload certificate (keeping its previous identity): %s", name, e)
            ok = False
    return ok


def start_inbound_mtls(config: AgentConfig, certs: WorkloadCerts | None, spec: str, mode: str = "STRICT") -> Any:
    """The Python inbound mTLS listener (``--inbound-mtls LISTEN=TARGET``): mTLS
    from mesh workloads terminated with the agent's own certificate (fetched
    now if the agent holds none yet), plaintext handed to the local app at
    TARGET. Rotation: the listener reloads the files the agent renews."""
    from pymesh.relay.pytls import InboundMtls

    if certs is None:
        raise AgentError("--inbound-mtls needs MUTUAL_TLS to the control plane (the workload certificate)")
    listen, sep, target = spec.partition("=")
    if not sep:
        raise AgentError(f"--inbound-mtls {spec!r}: expected LISTEN=TARGET, e.g. 0.0.0.0:15006=127.0.0.1:8080")
    try:
        listen_at = parse_host_port(listen, what="inbound listen", listen=True)
        target_at = parse_host_port(target, what="inbound target")
    except AddressError as e:
        raise AgentError(str(e)) from None
    certs.ensure()
    inbound = InboundMtls(
        certs.dir,
        (target_at.host, target_at.port),
        listen=(listen_at.host, listen_at.port),
        mode=mode,
        trust_domain=config.trust_domain,
    ).start()
    log.info("inbound mTLS (%s) on %s:%d to %s", mode, inbound.listen[0], inbound.port, target)
    return inbound

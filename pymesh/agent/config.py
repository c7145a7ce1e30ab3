"""The agent's configuration, resolved once.

Five sources meet here and nowhere else: :class:`AgentOptions` (the CLI or
an embedding program), the bootstrap files istioctl writes and the process
environment (:mod:`.bootstrap`: mesh.yaml ``proxyMetadata`` < process
environment < cluster.env), istio-iptables' variables
(:meth:`pymesh.capture.CaptureConfig.from_env`, the one reader of what is
captured) and resolv.conf. :func:`resolve` turns them into one frozen
:class:`AgentConfig`; ``pymesh agent --dry-run`` prints :func:`plan`, its
serialisation. ztunnel keeps the same split (``config.rs``: ``Config`` built
by ``construct_config``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymesh._native import RedirectTable
from pymesh.agent.bootstrap import Bootstrap, split_host_port
from pymesh.agent.certs import auth_mode
from pymesh.agent.errors import BootstrapError
from pymesh.agent.node import NodeInfo, build_node
from pymesh.agent.xds_client import GRPC_SCHEMES, resolve_target, split_target
from pymesh.capture import CaptureConfig, CaptureError
from pymesh.mesh import node as node_meta
from pymesh.mesh.addr import format_host_port, parse_host_port, port_of
from pymesh.mesh.defaults import (
    DEFAULT_DOMAIN,
    DEFAULT_TRUST_DOMAIN,
    DNS_LISTEN_V4,
    DNS_PORT,
    INBOUND_PORT,
    OUTBOUND_PORT,
    XDS_TLS_PORT,
)
from pymesh.mesh.errors import AddressError
from pymesh.mesh.files import state_dir
from pymesh.mesh.probe import ProbeSpec
from pymesh.mesh.values import duration, truthy
from pymesh.names import read_resolv_conf

DEFAULT_DNS_LISTEN = (DNS_LISTEN_V4,)
DEFAULT_CERT_TTL = 24 * 3600.0  # istio-agent's SECRET_TTL default
SUBSCRIPTIONS = ("CDS", "EDS", "LDS", "RDS", "NDS")


@dataclass
class AgentOptions:
    """What the caller chooses; everything else comes from the files."""

    dns_listen: Sequence[str] = DEFAULT_DNS_LISTEN
    dns_upstreams: Sequence[str] | None = None  # None: the resolv.conf name servers
    dns_enabled: bool | None = None  # None: the node's DNS_CAPTURE
    dns_workers: int = 0
    dns_ttl: int = 30
    dns_timeout: float = 1.0
    resolv_conf: str = "/etc/resolv.conf"
    domain: str = DEFAULT_DOMAIN
    state_dir: str | None = None  # None: pymesh.mesh.files.state_dir()
    persist: bool = True
    # Overrides discoveryAddress (+ hosts): ADDR:PORT, or several comma-separated (replicas).
    xds_address: str | None = None
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
    # Builds the redirection table from the service VIP:port list (None: from the
    # capture settings, so the proxy and the kernel rules agree on what is captured).
    redirect_builder: Callable[[list[dict[str, Any]]], RedirectTable] | None = None
    # istio-agent's status port (15020): /healthz/ready, /debug/ndsz, /metrics... None: off.
    status_listen: str | None = None
    # The data path in the agent's process (pymesh.relay / pymesh.capture), both off when
    # embedding (the CLI turns them on, as Istio's VM service runs the whole sidecar):
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
    # A fwmark the proxies put on their sockets; the rules never capture marked packets
    # (for hosts where the proxy cannot run as a user of its own, e.g. a user namespace).
    capture_mark: int | None = None
    inbound_port: int | None = None
    inbound_passthrough: bool = True
    # Without the privileges for the capture rules: True keeps serving DNS (and the
    # proxies) and reports what could not be installed; False fails the start.
    capture_optional: bool = False
    # Control-plane transport: "MUTUAL_TLS" or "NONE"; None: mesh.yaml's
    # defaultConfig.controlPlaneAuthPolicy, else MUTUAL_TLS as Istio's proxy config defaults.
    # Certificates are kept in cert_dir (None: OUTPUT_CERTS, else <state_dir>/certs), requested
    # for cert_ttl seconds (None: SECRET_TTL, 24h).
    control_plane_auth: str | None = None
    cert_dir: str | None = None
    cert_ttl: float | None = None
    # Envoy's access log from every relay (TCP lines in Istio's formats); None: mesh.yaml's
    # accessLogFile (meshConfig), else off. Encoding TEXT or JSON (None: accessLogEncoding, TEXT).
    access_log_file: str | None = None
    access_log_encoding: str | None = None
    # The proxy type of the node id: "sidecar" (a VM's agent) or "router" (``pymesh gateway``).
    proxy_type: str = "sidecar"
    # A gateway's listeners (both off for a sidecar): AUTO_PASSTHROUGH on these addresses
    # (Istio's 15443), routing by the TLS SNI to the clusters the control plane sends;
    gateway_listen: Sequence[str] = ()
    # and ports passed unchanged to one address, "LISTEN=TARGET" (15012, 15017: the control
    # plane reached through the gateway, its TLS end to end).
    forward: Sequence[str] = ()


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent runs with, resolved (see the module doc)."""

    bootstrap: Bootstrap
    options: AgentOptions
    node: NodeInfo
    target: str  # the control plane as host:port, or several comma-separated (XdsClient rotates)
    control_plane_auth: str  # MUTUAL_TLS | NONE
    dns_enabled: bool
    dns_listen: tuple[str, ...]
    upstreams: tuple[str, ...]
    search: tuple[str, ...]
    nameservers: tuple[str, ...]
    capture: CaptureConfig  # what is captured (also when the rules are not installed here)
    install_capture: str | None  # backend, or None: the rules are not the agent's job
    state_dir: Path | None  # None: nothing persisted
    cert_dir: Path
    cert_ttl: float
    trust_domain: str
    probe: ProbeSpec | None
    probe_host: str
    inbound_listen: tuple[str, ...]  # where the inbound passthrough listens (capture with inbound)
    access_log: tuple[str, str] | None = None  # (file, TEXT | JSON), or off
    app_metrics: tuple[tuple[int, str], ...] = ()  # (port, path) merged into /stats/prometheus
    targets: tuple[str, ...] = ()  # ``target`` as a list

    @property
    def runs_inbound(self) -> bool:
        return self.install_capture is not None and self.capture.inbound_enabled and self.options.inbound_passthrough

    def identity(self) -> dict[str, str]:
        """Whose saved state this is: the node and the discovery address as
        configured (a name, not the IP the hosts file gives it today: a new
        gateway IP is the same mesh)."""
        return {"node": self.node.id, "control_plane": self.options.xds_address or self.bootstrap.discovery_address}


def _upstreams(options: AgentOptions, nameservers: Sequence[str]) -> tuple[str, ...]:
    if options.dns_upstreams is not None:
        return tuple(options.dns_upstreams)
    listen = set(options.dns_listen)
    out = []
    for ns in nameservers:
        addr = format_host_port(ns, 53)
        if addr not in listen:  # never forward to ourselves
            out.append(addr)
    return tuple(out)


def control_plane_addresses(b: Bootstrap, o: AgentOptions) -> tuple[str, ...]:
    """Where the control plane's replicas are: ``--xds-address``'s comma-separated list, else
    ``discoveryAddress`` with its host through the hosts file, one address per line naming it
    (glibc's nss_files returns every matching line to getaddrinfo), else the name itself,
    which :class:`~pymesh.agent.xds_client.XdsClient` resolves to all its DNS addresses when it
    connects. A malformed entry is a BootstrapError naming it."""
    if o.xds_address:
        out = []
        for entry in split_target(o.xds_address):
            if entry.startswith(GRPC_SCHEMES):
                out.append(entry)  # a gRPC target URI, passed on as given
                continue
            try:
                out.append(format_host_port(*parse_host_port(entry, default_port=XDS_TLS_PORT, what="--xds-address")))
            except AddressError as e:
                raise BootstrapError(str(e), key="--xds-address") from None
        if not out:
            raise BootstrapError(f"{o.xds_address!r}: no address", key="--xds-address")
        return tuple(dict.fromkeys(out))
    host, port = split_host_port(b.discovery_address, default_port=XDS_TLS_PORT)
    name = host.rstrip(".").lower()
    listed = [format_host_port(e.address, port) for e in b.hosts if name in e.names]
    return tuple(dict.fromkeys(listed)) or (format_host_port(host, port),)


def capture_config(b: Bootstrap, options: AgentOptions, dns_enabled: bool, nameservers: Sequence[str]) -> CaptureConfig:
    """The capture settings from the effective environment, with the agent's
    own ports and user; a bad variable is a BootstrapError naming its file and line."""
    extra: dict[str, object] = {} if options.inbound_port is None else {"inbound_port": options.inbound_port}
    env = {k: v.value for k, v in b.env.items()}
    try:
        cfg = CaptureConfig.from_env(
            env,
            proxy_uid=os.getuid() if options.proxy_uid is None else options.proxy_uid,
            dns_port=port_of(options.dns_listen, DNS_PORT),
            outbound_port=port_of(options.outbound_listen, OUTBOUND_PORT),
            dns_servers=tuple(nameservers),
            name=options.capture_name,
            mark=options.capture_mark,
            **extra,
        )
        # DNS is redirected only to a DNS proxy that runs.
        return cfg if dns_enabled or not cfg.redirect_dns else cfg.with_(redirect_dns=False)
    except CaptureError as e:
        if e.key:
            raise b.error(e.key, e.reason) from None
        raise


def _inbound_listen(cfg: CaptureConfig) -> tuple[str, ...]:
    # REDIRECT in PREROUTING delivers to the receiving interface's primary address: a
    # wildcard listener. IPv6 only where ::6 is local (Istio adds it to lo), else the app's
    # replies to ::6 would leave the host; such connections are refused rather than hung.
    port = cfg.inbound_port or INBOUND_PORT
    listen = [f"0.0.0.0:{port}"]
    if cfg.ipv6 and socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                s.bind(("::6", 0))
            listen.append(f"[::]:{port}")
        except OSError:
            pass
    return tuple(listen)


def resolve(bootstrap: Bootstrap, options: AgentOptions | None = None) -> AgentConfig:
    """The one resolved configuration (raises BootstrapError / SecurityError
    naming what is wrong)."""
    o = options or AgentOptions()
    b = bootstrap
    node = build_node(
        b,
        instance_ip=o.instance_ip,
        extra_ips=o.extra_ips,
        pod_name=o.pod_name,
        namespace=o.namespace,
        domain=o.domain,
        metadata=o.metadata,
        node_type=o.proxy_type,
    )
    dns_enabled = o.dns_enabled if o.dns_enabled is not None else node.dns_capture
    resolv = read_resolv_conf(o.resolv_conf)
    capture = capture_config(b, o, dns_enabled, resolv.nameservers)
    sdir = Path(o.state_dir) if o.state_dir else state_dir()
    cert_dir = Path(o.cert_dir or b.get("OUTPUT_CERTS") or (sdir / "certs"))
    ttl = o.cert_ttl or duration(b.get("SECRET_TTL") or "24h")
    # Istio: the first proxy IP, or localhost when asked to (REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION).
    probe_host = "localhost" if truthy(b.get("REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION")) or not node.ip else node.ip
    targets = control_plane_addresses(b, o)
    return AgentConfig(
        bootstrap=b,
        options=o,
        node=node,
        target=",".join(targets),
        control_plane_auth=auth_mode(b.proxy_config, o.control_plane_auth),
        dns_enabled=bool(dns_enabled),
        dns_listen=tuple(o.dns_listen),
        upstreams=_upstreams(o, resolv.nameservers),
        search=tuple(resolv.search),
        nameservers=tuple(resolv.nameservers),
        capture=capture,
        install_capture=o.capture or None,
        state_dir=sdir if o.persist else None,
        cert_dir=cert_dir,
        cert_ttl=float(ttl),
        trust_domain=b.get("TRUST_DOMAIN") or DEFAULT_TRUST_DOMAIN,
        probe=b.readiness_probe if o.probe else None,
        probe_host=probe_host,
        inbound_listen=_inbound_listen(capture),
        access_log=_access_log(b, o),
        targets=targets,
        app_metrics=_app_metrics(b),
    )


def _app_metrics(b: Bootstrap) -> tuple[tuple[int, str], ...]:
    """istio-agent's ``ISTIO_PROMETHEUS_ANNOTATIONS``: the app's own scrape settings
    (``{"scrape": "true", "port": "8080", "path": "/metrics"}``, or a list of them), whose
    metrics the status port merges after the agent's and the proxy's (istio/istio
    ``pkg/istio-agent/metrics``; defaults port 80, path /metrics). Bad JSON or a bad port is a
    BootstrapError naming the variable."""
    raw = b.get("ISTIO_PROMETHEUS_ANNOTATIONS").strip()
    if not raw:
        return ()
    key = "ISTIO_PROMETHEUS_ANNOTATIONS"
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise b.error(key, f"not valid JSON: {e}") from None
    out = []
    for item in doc if isinstance(doc, list) else [doc]:
        if not isinstance(item, dict):
            raise b.error(key, 'expected {"scrape": "true", "port": "...", "path": "..."} (or a list of them)')
        if str(item.get("scrape", "")).lower() != "true":
            continue
        port = str(item.get("port") or "80")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise b.error(key, f"port {port!r} is not a port number")
        path = str(item.get("path") or "/metrics")
        if not path.startswith("/"):
            path = "/" + path
        out.append((int(port), path))
    return tuple(out)


def _access_log(b: Bootstrap, o: AgentOptions) -> tuple[str, str] | None:
    """meshConfig ``accessLogFile`` / ``accessLogEncoding`` (Istio's defaults: off, TEXT),
    the options first; a bad encoding is a BootstrapError naming mesh.yaml's key."""
    path = o.access_log_file if o.access_log_file is not None else str(b.mesh.get("accessLogFile") or "")
    enc = str(o.access_log_encoding or b.mesh.get("accessLogEncoding") or "TEXT").upper()
    if enc not in ("TEXT", "JSON"):
        where = "--access-log-encoding" if o.access_log_encoding else "accessLogEncoding"
        raise BootstrapError(f"{enc!r} is not TEXT or JSON", file=b.paths.mesh, key=where)
    return (path, enc) if path else None


def local_workload(c: AgentConfig) -> dict[str, str]:
    """This workload as Istio's telemetry labels it and the metadata exchange
    describes it (the relays' ``set_local_workload``): istio-agent's node metadata ``WORKLOAD_NAME``
    (else the auto-registration group, the ``service.istio.io/workload-name``
    label, the instance name: istiod's ``WorkloadNameFromWorkloadEntry``
    order), ``NAMESPACE``, ``CLUSTER_ID``, the ``LABELS``; the canonical
    service and revision from istioctl's ``CANONICAL_SERVICE`` /
    ``CANONICAL_REVISION`` in cluster.env, else derived from the labels as
    istiod does, so none is ever empty."""
    md = c.node.metadata
    raw = md.get(node_meta.LABELS) or {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raw = {}
    labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    workload = (
        str(md.get(node_meta.WORKLOAD_NAME) or "")
        or str(md.get(node_meta.AUTO_REGISTER_GROUP) or "")
        or labels.get(node_meta.WORKLOAD_NAME_LABEL, "")
        or c.node.name
    )
    b = c.bootstrap
    return {
        "workload": workload,
        "namespace": c.node.namespace,
        "app": node_meta.app_label(labels),
        "version": node_meta.version_label(labels),
        "canonical_service": b.get("CANONICAL_SERVICE").strip() or node_meta.canonical_service(labels, workload),
        "canonical_revision": b.get("CANONICAL_REVISION").strip() or node_meta.canonical_revision(labels),
        "cluster": str(md.get(node_meta.CLUSTER_ID) or ""),
        # What the relays' metadata exchange (istio-peer-exchange) tells peers besides.
        "name": c.node.name,
        "node_id": c.node.id,
    }


def capture_plan(cfg: CaptureConfig) -> dict[str, Any]:
    """What is captured, in istio-iptables' terms."""
    return {
        "outbound_cidrs": ["*"] if cfg.outbound_include == "*" else list(cfg.outbound_include),
        "exclude_cidrs": list(cfg.outbound_exclude),
        "outbound_ports": list(cfg.outbound_ports),
        "exclude_outbound_ports": list(cfg.outbound_exclude_ports),
        "inbound_ports": ["*"] if cfg.inbound_ports == "*" else list(cfg.inbound_ports),
        "exclude_inbound_ports": list(cfg.inbound_exclude_ports),
        "inbound_port": cfg.inbound_port,
        "outbound_port": cfg.outbound_port,
        "interception_mode": cfg.interception_mode,
        "dns": cfg.redirect_dns,
        "capture_all_dns": cfg.capture_all_dns,
        "exclude_interfaces": list(cfg.exclude_interfaces),
        "custom_rules": cfg.custom_rules,
    }


def network_plan(c: AgentConfig) -> dict[str, Any]:
    """The node's network and the gateways it uses, as far as the files say.
    The network is the node metadata ``NETWORK`` (istioctl's ``--network``, as
    ``ISTIO_META_NETWORK`` in cluster.env); the control plane sends endpoints of
    other networks as their gateways' addresses (EDS), so the data-path gateways
    are the control plane's to say; the control plane itself is reached at
    ``discoveryAddress``, the east-west gateway's 15012 when the VM is on
    another network."""
    o = c.options
    network = str(c.node.metadata.get(node_meta.NETWORK, ""))
    out: dict[str, Any] = {
        "name": network,
        "control_plane_via": c.bootstrap.discovery_address,
        "cross_network_endpoints": "all endpoints direct (no network set: every network counts as this one)",
    }
    if network:
        out["cross_network_endpoints"] = (
            "not reached: a gateway splices to its own network's endpoints only"
            if o.proxy_type == "router"
            else "through their network's gateway, as the control plane's EDS says"
        )
    if o.proxy_type == "router":
        out["gateway"] = {"sni_listen": list(o.gateway_listen), "forward": list(o.forward)}
    return out


def _addresses_plan(c: AgentConfig) -> list[str]:
    """The addresses the client rotates over, names resolved now (only when there are names)."""
    if all(e.startswith(GRPC_SCHEMES) or _is_ip_entry(e) for e in c.targets):
        return list(c.targets)
    return resolve_target(c.target)


def _is_ip_entry(entry: str) -> bool:
    try:
        return ipaddress.ip_address(parse_host_port(entry, default_port=XDS_TLS_PORT).host) is not None
    except (AddressError, ValueError):
        return False


def plan(c: AgentConfig) -> dict[str, Any]:
    """The configuration as data (``pymesh agent --dry-run``)."""
    b, o = c.bootstrap, c.options
    return {
        "node": {
            "id": c.node.id,
            "ip": c.node.ip,
            "ips": list(c.node.ips),
            "namespace": c.node.namespace,
            "metadata": c.node.metadata,
        },
        "control_plane": {
            "discovery_address": b.discovery_address,
            "target": c.target,
            # Each new stream goes to the next of these (names: every address DNS gives them).
            "addresses": _addresses_plan(c),
            "transport": "mtls" if c.control_plane_auth == "MUTUAL_TLS" else "plaintext",
            "variant": "delta" if o.xds_delta else "sotw",
            "subscriptions": list(SUBSCRIPTIONS),
        },
        "dns": {
            "enabled": c.dns_enabled,
            "listen": list(c.dns_listen),
            "upstreams": list(c.upstreams),
            "search": list(c.search),
            "namespace": c.node.namespace,
            "domain": o.domain,
        },
        "capture": capture_plan(c.capture)
        | {"install": c.install_capture, "proxy_uid": c.capture.proxy_uid if c.install_capture else None},
        "outbound_listen": list(o.outbound_listen),
        "inbound_listen": list(c.inbound_listen) if c.runs_inbound else [],
        "probe": (c.probe.as_dict() | {"default_host": c.probe_host}) if c.probe else None,
        "state_dir": str(c.state_dir) if c.state_dir else None,
        "status_listen": o.status_listen,
        "network": network_plan(c),
        "access_log": {"file": c.access_log[0], "encoding": c.access_log[1]} if c.access_log else None,
        "app_metrics": [f"http://127.0.0.1:{port}{path}" for port, path in c.app_metrics],
        "certificates": {"dir": str(c.cert_dir), "ttl": c.cert_ttl, "trust_domain": c.trust_domain}
        if c.control_plane_auth == "MUTUAL_TLS"
        else None,
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

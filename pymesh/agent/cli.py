"""``pymesh agent``: run the VM agent from Istio's VM files.

    pymesh agent [--config-dir DIR] [flags] [--dry-run [--output yaml|json]]

Without ``--config-dir`` the files are read where Istio's VM guide installs
them (see :mod:`pymesh.agent.bootstrap`). The process environment counts
as istio-start.sh's would (cluster.env wins over it). ``--dry-run`` prints
what would be configured — node id and metadata, control-plane address,
DNS listen addresses and upstreams, capture settings, probe, state
directory — and exits. Running, it prints one line per step on stdout and
stops cleanly on SIGINT/SIGTERM.

Like Istio's VM service (``istio-start.sh`` runs istio-iptables, then the
sidecar), the agent runs the whole data path by default: capture rules from
cluster.env's istio-iptables variables (DNS per ``ISTIO_META_DNS_CAPTURE``,
outbound per ``ISTIO_SERVICE_CIDR``, inbound per ``ISTIO_INBOUND_PORTS``),
the outbound proxy on 15001 and the inbound listener on 15006. Without the
privileges to install the rules it says so and keeps serving DNS.
``--capture off`` installs no rules; ``--no-dataplane`` runs DNS (and xDS,
the probe, the status port) only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import yaml

from pymesh.agent.agent import Agent
from pymesh.agent.bootstrap import load_bootstrap
from pymesh.agent.config import AgentOptions
from pymesh.mesh.addr import format_host_port, parse_host_port
from pymesh.mesh.defaults import OUTBOUND_PORT, XDS_TLS_PORT, default_dns_listen, loopback_listen
from pymesh.mesh.node import NETWORK


def _options(args: argparse.Namespace) -> AgentOptions:
    dataplane = not args.no_dataplane
    capture = None if not dataplane or args.capture == "off" else (args.capture or "auto")
    outbound = args.outbound_listen or (loopback_listen(OUTBOUND_PORT) if capture is not None else [])
    return AgentOptions(
        dns_listen=args.dns_listen or default_dns_listen(),
        dns_upstreams=args.dns_upstream,
        dns_enabled=args.dns,
        dns_workers=args.dns_workers,
        resolv_conf=args.resolv_conf,
        state_dir=args.state_dir,
        persist=not args.no_persist,
        xds_address=args.xds_address,
        backoff_max=args.backoff_max,
        xds_delta=args.delta,
        probe=not args.no_probe,
        instance_ip=args.instance_ip,
        pod_name=args.pod_name,
        namespace=args.namespace,
        status_listen=args.status_listen or None,
        outbound_listen=outbound if dataplane else (),
        capture=capture,
        # The default (no --capture given) degrades to DNS-only without privileges; an
        # explicit backend is a requirement.
        capture_optional=args.capture is None,
        proxy_uid=args.proxy_uid,
        inbound_port=args.inbound_port,
        # With --inbound-mtls its listener is the inbound one.
        inbound_passthrough=not args.inbound_mtls,
        control_plane_auth=args.control_plane_auth,
        cert_dir=args.cert_dir,
        cert_ttl=args.cert_ttl,
        access_log_file=args.access_log_file,
        access_log_encoding=args.access_log_encoding,
    )


def _bootstrap(args: argparse.Namespace) -> Any:
    return load_bootstrap(
        args.config_dir,
        cluster_env=args.cluster_env,
        mesh=args.mesh_config,
        root_cert=args.root_cert,
        token=args.token,
        hosts=args.hosts,
        environ=os.environ,
        discovery_address=args.discovery_address,
    )


def _dry_run(agent: Agent, output: str) -> int:
    plan = agent.plan()
    if output == "json":
        print(json.dumps(plan, indent=2, sort_keys=False))
    else:
        print(yaml.safe_dump(plan, sort_keys=False, default_flow_style=False), end="")
    return 0


def _serving(what: str, verbose: bool) -> tuple[threading.Event, Callable[[str], None]]:
    """A long-running command's setup: logging to stderr, SIGINT/SIGTERM set the returned event,
    and ``say`` prints one step per line on stdout as ``pymesh <what>: ...``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def say(line: str) -> None:
        print(f"pymesh {what}: {line}", flush=True)

    return stop, say


def cmd_agent(args: argparse.Namespace) -> int:
    b = _bootstrap(args)
    agent = Agent(b, _options(args))
    if args.dry_run:
        return _dry_run(agent, args.output)
    stop, say = _serving("agent", args.verbose)

    for note in b.notes:
        say(note)
    say(f"node {agent.node.id}")
    transport = "mTLS" if agent.control_plane_auth == "MUTUAL_TLS" else "plaintext"
    say(f"control plane {agent.target} (discoveryAddress {b.discovery_address}, {transport})")
    agent.start()
    if agent.loaded_from_disk:
        say(
            f"serving saved tables ({', '.join(agent.loaded_from_disk)}) from {agent.state.path if agent.state else ''}"
        )
    if agent.dns is not None:
        say(f"DNS on {', '.join(agent.dns.server.addresses)}, upstreams {', '.join(agent.upstreams) or '(none)'}")
    if agent.proxy is not None:
        say(f"outbound proxy on {', '.join(agent.proxy.addresses)}")
    if agent.inbound is not None:
        say(f"inbound passthrough on {', '.join(agent.inbound.addresses)}")
    if agent.capture_rules is not None:
        say(f"capture rules installed ({agent.capture_rules.backend})")
    elif agent.data.capture_error:
        say(f"capture rules NOT installed: {agent.data.capture_error}; serving DNS only (no traffic is redirected)")
    if agent.status_server is not None:
        say(f"status on http://{agent.status_server.address}/healthz/ready")
    inbound = None
    if args.inbound_mtls:
        from pymesh.agent.dataplane import start_inbound_mtls

        try:
            inbound = start_inbound_mtls(agent.config, agent.certs, args.inbound_mtls, args.peer_authentication)
        except BaseException:
            agent.stop()
            raise
        say(f"inbound mTLS ({args.peer_authentication}) on {inbound.listen[0]}:{inbound.port}")
    if agent.prober is not None:
        say(f"readiness probe {agent.prober.spec.kind} every {agent.prober.spec.period:g}s")
    seen: dict[str, Any] = {}

    def report(tables: Any) -> None:
        c = agent.client
        state = c.state if c else "stopped"
        if seen.get("state") != state:
            seen["state"] = state
            say(f"xDS {state}" + (f" ({c.last_error})" if c and state == "backoff" else ""))
        counts = (len(tables.names) if tables.names is not None else 0, len(tables.lb), len(tables.redirect))
        if seen.get("counts") != counts:
            seen["counts"] = counts
            say(f"tables: {counts[0]} names, {counts[1]} clusters, {counts[2]} service VIP:ports")

    agent.on_update(report)
    try:
        while not stop.wait(0.5):
            report(agent.tables)
            if agent.data_path_identity and seen.get("identity") != agent.data_path_identity:
                seen["identity"] = agent.data_path_identity
                say(f"mTLS identity {agent.data_path_identity}")
            if agent.inbound is not None and agent.peer_authentication != seen.get("peer_authentication"):
                seen["peer_authentication"] = agent.peer_authentication
                say(f"inbound peer authentication {agent.peer_authentication}")
            if agent.health is not None and seen.get("health") != agent.health:
                seen["health"] = agent.health
                ok, msg = agent.health
                say("probe: healthy" if ok else f"probe: unhealthy ({msg})")
    finally:
        if inbound is not None:
            inbound.stop()
        agent.stop()
        say("stopped")
    return 0


def _gateway_options(args: argparse.Namespace, b: Any) -> AgentOptions:
    forward = args.forward
    if forward is None:
        # The control plane's TLS port through the gateway: where the gateway itself reaches it.
        # The gateway forwards to one address: the first of an --xds-address list.
        first = (args.xds_address or b.control_plane_target()).split(",")[0].strip()
        host = parse_host_port(first, what="control plane").host
        forward = [f"0.0.0.0:{XDS_TLS_PORT}={format_host_port(host, XDS_TLS_PORT)}"]
    return AgentOptions(
        dns_enabled=False,
        state_dir=args.state_dir,
        persist=not args.no_persist,
        xds_address=args.xds_address,
        backoff_max=args.backoff_max,
        probe=False,
        instance_ip=args.instance_ip,
        pod_name=args.pod_name,
        namespace=args.namespace,
        # The network whose gateway this is (its endpoints are the ones it splices to); by default
        # cluster.env's ISTIO_META_NETWORK. With none, every endpoint counts as local (istiod's
        # Proxy.InNetwork: either side unset).
        metadata={} if args.network is None else {NETWORK: args.network},
        status_listen=args.status_listen or None,
        capture=None,
        inbound_passthrough=False,
        control_plane_auth=args.control_plane_auth,
        cert_dir=args.cert_dir,
        access_log_file=args.access_log_file,
        access_log_encoding=args.access_log_encoding,
        proxy_type="router",
        gateway_listen=args.sni_listen or ["0.0.0.0:15443"],
        forward=[f for f in forward if f],
    )


def cmd_gateway(args: argparse.Namespace) -> int:
    b = _bootstrap(args)
    gw = Agent(b, _gateway_options(args, b))
    if args.dry_run:
        return _dry_run(gw, args.output)
    stop, say = _serving("gateway", args.verbose)

    say(f"node {gw.node.id}")
    transport = "mTLS" if gw.control_plane_auth == "MUTUAL_TLS" else "plaintext"
    say(f"control plane {gw.target} ({transport})")
    gw.start()
    for name, relay in gw.data.relays():
        say(f"{name} on {', '.join(relay.addresses)}")
    if gw.status_server is not None:
        say(f"health on http://{gw.status_server.address}/healthz/ready")
    seen: dict[str, Any] = {}
    try:
        while not stop.wait(0.5):
            c = gw.client
            state = c.state if c else "stopped"
            if seen.get("state") != state:
                seen["state"] = state
                say(f"xDS {state}" + (f" ({c.last_error})" if c and state == "backoff" else ""))
            clusters = len(gw.tables.lb)
            if seen.get("clusters") != clusters:
                seen["clusters"] = clusters
                say(f"tables: {clusters} clusters")
    finally:
        gw.stop()
        say("stopped")
    return 0


def _bootstrap_flags(p: Any) -> None:
    p.add_argument("--config-dir", metavar="DIR", help="the five files istioctl writes (cluster.env, mesh.yaml, ...)")
    p.add_argument("--cluster-env", metavar="FILE", help="default /var/lib/istio/envoy/cluster.env")
    p.add_argument("--mesh-config", metavar="FILE", help="default /etc/istio/config/mesh")
    p.add_argument("--root-cert", metavar="FILE", help="default /etc/certs/root-cert.pem")
    p.add_argument("--token", metavar="FILE", help="default /var/run/secrets/tokens/istio-token")
    p.add_argument("--hosts", metavar="FILE", help="default /etc/hosts")
    p.add_argument("--discovery-address", metavar="HOST:PORT", help="override mesh.yaml's discoveryAddress")
    p.add_argument(
        "--xds-address",
        metavar="ADDR:PORT[,ADDR:PORT...]",
        help="connect here, bypassing discoveryAddress and hosts; several control-plane replicas comma-separated "
        "(each new stream goes to the next)",
    )
    p.add_argument("--state-dir", metavar="DIR", help="where the last good tables are kept")
    p.add_argument("--no-persist", action="store_true", help="do not save or load tables")
    p.add_argument("--backoff-max", type=float, default=30.0, help="longest reconnect wait, seconds")
    p.add_argument("--instance-ip", help="the workload's IP (default ISTIO_SVC_IP, else the host's first)")
    p.add_argument("--pod-name", help="the id's name part (default POD_NAME, else hostname -s)")
    p.add_argument("--namespace", help="default POD_NAMESPACE, else ISTIO_NAMESPACE, else default")
    p.add_argument(
        "--control-plane-auth",
        type=str.upper,
        choices=("MUTUAL_TLS", "NONE"),
        help="TLS to the control plane (default: mesh.yaml's controlPlaneAuthPolicy, else NONE)",
    )
    p.add_argument("--cert-dir", metavar="DIR", help="where the workload certificate is kept (default <state>/certs)")
    p.add_argument(
        "--access-log-file",
        metavar="FILE",
        help="Envoy's access log, a line per connection (default: mesh.yaml's accessLogFile, else off)",
    )
    p.add_argument(
        "--access-log-encoding",
        type=str.upper,
        choices=("TEXT", "JSON"),
        help="Istio's access log format (default: mesh.yaml's accessLogEncoding, else TEXT)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be configured and exit")
    p.add_argument("--output", "-o", choices=("yaml", "json"), default="yaml", help="--dry-run format")
    p.add_argument("--verbose", "-v", action="store_true")


def add_commands(sub: Any) -> None:
    g = sub.add_parser(
        "gateway",
        help="run an east-west gateway: AUTO_PASSTHROUGH by SNI (15443) and the control plane's 15012 passed through",
    )
    _bootstrap_flags(g)
    g.add_argument(
        "--network",
        help="the network this gateway serves: AUTO_PASSTHROUGH reaches its endpoints only "
        "(default: ISTIO_META_NETWORK from cluster.env; none: every endpoint)",
    )
    g.add_argument(
        "--sni-listen",
        action="append",
        metavar="ADDR:PORT",
        help="AUTO_PASSTHROUGH listener, routing by the TLS SNI (repeatable; default 0.0.0.0:15443)",
    )
    g.add_argument(
        "--forward",
        action="append",
        metavar="LISTEN=TARGET",
        help="pass a port unchanged to TARGET (repeatable; default 0.0.0.0:15012 to the control plane's 15012; "
        "'' for none), e.g. 0.0.0.0:15017=10.0.0.1:15017",
    )
    g.add_argument(
        "--status-listen",
        default="0.0.0.0:15021",
        metavar="ADDR:PORT",
        help="health port: /healthz/ready, /stats/prometheus, /debug/clusters (default %(default)s; '' = off)",
    )
    g.set_defaults(func=cmd_gateway)

    p = sub.add_parser("agent", help="run the VM agent (join the mesh from Istio's VM files)")
    _bootstrap_flags(p)
    p.add_argument(
        "--dns-listen",
        action="append",
        metavar="ADDR:PORT",
        help="DNS proxy listen address (repeatable; default 127.0.0.1:15053 and [::1]:15053 where IPv6 is up)",
    )
    p.add_argument(
        "--dns-upstream",
        action="append",
        metavar="ADDR:PORT",
        help="upstream resolver (repeatable; default: the resolv.conf name servers)",
    )
    dns = p.add_mutually_exclusive_group()
    dns.add_argument("--dns", dest="dns", action="store_true", default=None, help="run the DNS proxy")
    dns.add_argument("--no-dns", dest="dns", action="store_false", help="do not run the DNS proxy")
    p.add_argument("--dns-workers", type=int, default=0, help="UDP workers per address (default: one per core)")
    p.add_argument("--resolv-conf", default="/etc/resolv.conf", help="default %(default)s")
    p.add_argument("--delta", action="store_true", help="use incremental (delta) ADS instead of state-of-the-world")
    p.add_argument("--no-probe", action="store_true", help="do not run mesh.yaml's readinessProbe")
    p.add_argument(
        "--status-listen",
        default="127.0.0.1:15020",
        metavar="ADDR:PORT",
        help="status port: /healthz/ready, /debug/ndsz, /debug/clusters, /metrics (default %(default)s; '' = off)",
    )
    p.add_argument(
        "--outbound-listen",
        action="append",
        metavar="ADDR:PORT",
        help="the outbound proxy's address (repeatable; default 127.0.0.1:15001 and [::1]:15001 with capture)",
    )
    p.add_argument(
        "--capture",
        choices=("auto", "nftables", "iptables", "off"),
        help="capture rules from cluster.env's istio-iptables variables, removed on stop "
        "(default auto: nftables, else iptables; without the privileges the agent serves DNS only)",
    )
    p.add_argument(
        "--no-dataplane",
        action="store_true",
        help="DNS, xDS, the probe and the status port only: no capture rules, no outbound/inbound proxy",
    )
    p.add_argument("--proxy-uid", type=int, help="user whose traffic is never captured (default: the agent's own)")
    p.add_argument(
        "--inbound-port",
        type=int,
        metavar="PORT",
        help="inbound capture port where ISTIO_INBOUND_PORTS enables it (default INBOUND_CAPTURE_PORT, else 15006)",
    )
    p.add_argument("--cert-ttl", type=float, metavar="SECONDS", help="requested certificate lifetime (default 86400)")
    p.add_argument(
        "--inbound-mtls",
        metavar="LISTEN=TARGET",
        help="terminate workload mTLS on LISTEN (e.g. 0.0.0.0:15006) and hand plaintext to the app at TARGET",
    )
    p.add_argument(
        "--peer-authentication",
        choices=("STRICT", "PERMISSIVE"),
        default="STRICT",
        help="inbound: mTLS only (STRICT) or also plaintext (PERMISSIVE)",
    )
    p.set_defaults(func=cmd_agent)

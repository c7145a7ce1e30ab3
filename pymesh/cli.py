"""The ``pymesh`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pymesh._native import PymeshError
from pymesh.dnsproxy.answers import QTYPES, answer
from pymesh.names import DEFAULT_DOMAIN, load_name_table

DEFAULT_NAMESPACE = "default"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNKNOWN = 2  # like getent: the name is not known


def cmd_dns_lookup(args: argparse.Namespace) -> int:
    table = load_name_table(args.table, namespace=args.namespace, domain=args.domain, search=args.search)
    ans = answer(table, args.name, args.type)
    print(json.dumps(ans.to_json(), indent=2) if args.json else ans.to_text())
    return EXIT_OK if ans.known else EXIT_UNKNOWN


def cmd_up(args: argparse.Namespace) -> int:
    from pymesh.up import run

    return run(args.names, args.type, requests=args.requests, hold=args.serve, in_process=args.in_process)


def cmd_dns_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from pymesh.dnsproxy.server import DEFAULT_LISTEN, DnsProxy, TableSource

    search = tuple(args.search.split()) if args.search else ()
    source = TableSource(args.table, namespace=args.namespace, domain=args.domain, search=search)
    proxy = DnsProxy(
        source,
        listen=args.listen or DEFAULT_LISTEN,
        upstreams=args.upstream,
        workers=args.workers,
        ttl=args.ttl,
        zones=args.zone,
        cache_size=args.cache_size,
        timeout=args.timeout,
        allow=args.allow,
    )
    addrs = proxy.start()
    print(f"pymesh dns: serving {', '.join(addrs)} (udp+tcp), upstreams {proxy.server.stats()['upstreams']!r}")
    if args.metrics:
        print(f"pymesh dns: metrics on http://{proxy.serve_metrics(args.metrics)}/metrics")
    sys.stdout.flush()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    proxy.stop()
    return EXIT_OK


def _version() -> str:
    from pymesh import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pymesh", description="A service mesh for VMs and bare-metal hosts.")
    p.add_argument("--version", action="version", version=f"pymesh {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the local mesh on the embedded default and show it working")
    up.add_argument("names", nargs="*", help="names to ask the agent's DNS server (default: product's names)")
    up.add_argument("--type", default="A", choices=QTYPES, type=str.upper)
    up.add_argument("--requests", type=int, default=30, help="requests to the product service (default: %(default)s)")
    up.add_argument("--serve", action="store_true", help="keep the mesh up after the tour, until Ctrl-C")
    up.add_argument(
        "--in-process",
        action="store_true",
        help="route in-process instead of the real data path (capture rules and the outbound proxy in a private "
        "network namespace, the default: as root a network namespace, otherwise a user + network namespace)",
    )
    up.add_argument("--capture", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts
    up.set_defaults(func=cmd_up)

    dns = sub.add_parser("dns", help="the DNS proxy and its name table")
    dns_sub = dns.add_subparsers(dest="dns_command", required=True)
    lk = dns_sub.add_parser("lookup", help="print what a DNS client would be answered for NAME")
    lk.add_argument("--table", required=True, help="name table file (NDS proto3 JSON, or YAML)")
    lk.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="the proxy's namespace (default: %(default)s)")
    lk.add_argument("--domain", default=DEFAULT_DOMAIN, help="cluster domain (default: %(default)s)")
    lk.add_argument("--search", default="", help='resolv.conf search list, space-separated ("s1 s2")')
    lk.add_argument("--type", default="A", choices=QTYPES, type=str.upper)
    lk.add_argument("--json", action="store_true", help="print the answer as JSON")
    lk.add_argument("name")
    lk.set_defaults(func=cmd_dns_lookup)
    sv = dns_sub.add_parser("serve", help="serve DNS: names of the table locally, the rest forwarded upstream")
    sv.add_argument("--table", required=True, help="name table file, reloaded when it changes")
    sv.add_argument(
        "--listen",
        action="append",
        metavar="ADDR:PORT",
        help="UDP+TCP listen address (repeatable; default 127.0.0.1:15053 and [::1]:15053)",
    )
    sv.add_argument(
        "--upstream",
        action="append",
        metavar="ADDR:PORT",
        help="upstream resolver (repeatable; default: the nameservers of /etc/resolv.conf)",
    )
    sv.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="the proxy's namespace (default: %(default)s)")
    sv.add_argument("--domain", default=DEFAULT_DOMAIN, help="cluster domain (default: %(default)s)")
    sv.add_argument("--search", default="", help='resolv.conf search list, space-separated ("s1 s2")')
    sv.add_argument("--cache-size", type=int, default=10_000, help="cached answers, 0 turns the cache off")
    sv.add_argument("--ttl", type=int, default=30, help="TTL of local answers in seconds (default: %(default)s)")
    sv.add_argument(
        "--zone",
        action="append",
        default=[],
        help="authoritative zone: unknown names below it get NXDOMAIN locally (repeatable)",
    )
    sv.add_argument("--workers", type=int, default=0, help="UDP workers per address (default: one per core)")
    sv.add_argument("--timeout", type=float, default=1.0, help="per-attempt upstream timeout in seconds")
    sv.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="clients served by a --listen address off loopback, besides this host's loopback clients "
        "(repeatable; without it such a listener refuses other hosts)",
    )
    sv.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics on http://ADDR:PORT/metrics")
    sv.set_defaults(func=cmd_dns_serve)

    from pymesh.controlplane.cli import add_commands as add_controlplane_commands

    add_controlplane_commands(sub)  # `controlplane` and `get`

    from pymesh.lbtable.cli import add_commands as add_lb_commands

    add_lb_commands(sub)  # `lb pick`

    from pymesh.agent.cli import add_commands as add_agent_commands

    add_agent_commands(sub)  # `agent`

    from pymesh.capture.cli import add_commands as add_capture_commands

    add_capture_commands(sub)  # `capture show|install|remove`

    from pymesh.controlplane.ca.cli import add_commands as add_security_commands

    add_security_commands(sub)  # `token create`, `ca root-cert`
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except PymeshError as e:
        print(f"pymesh: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    return rc


if __name__ == "__main__":
    sys.exit(main())

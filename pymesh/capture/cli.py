"""``pymesh capture``: install, show and remove the capture rules.

    pymesh capture show    [settings]   print the rules a backend would install (dry run)
    pymesh capture install [settings]   install them (idempotent)
    pymesh capture remove  [--name N]   remove ours from every backend, no state needed

Settings are istio-iptables' flags (same letters where it has them) on top
of its environment variables (PROXY_UID, ISTIO_SERVICE_CIDR, ...,
ISTIO_META_DNS_CAPTURE), which ``--from-env`` reads.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pymesh.capture import Capture, CaptureConfig, remove_capture

EXIT_OK = 0


def _config(args: argparse.Namespace) -> CaptureConfig:
    kw: dict[str, Any] = {}
    for f in (
        "proxy_uid",
        "proxy_gid",
        "outbound_port",
        "inbound_port",
        "dns_port",
        "outbound_include",
        "outbound_exclude",
        "outbound_exclude_ports",
        "outbound_ports",
        "inbound_ports",
        "inbound_exclude_ports",
        "dns_servers",
        "mark",
    ):
        v = getattr(args, f)
        if v is not None:
            kw[f] = v
    if args.redirect_dns:
        kw["redirect_dns"] = True
    if args.capture_all_dns:
        kw["capture_all_dns"] = True
    if args.no_ipv6:
        kw["ipv6"] = False
    kw["name"] = args.name
    if args.from_env:
        return CaptureConfig.from_env(None, **kw)
    if kw.get("redirect_dns") and "dns_servers" not in kw:
        from pymesh.names import read_resolv_conf

        kw["dns_servers"] = read_resolv_conf().nameservers
    return CaptureConfig(**kw)


def cmd_show(args: argparse.Namespace) -> int:
    cap = Capture(_config(args), backend=args.backend)
    print(f"# backend: {cap.backend}")
    print(cap.render(), end="")
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    cap = Capture(_config(args), backend=args.backend)
    cap.install()
    print(f"capture rules installed ({cap.backend}, name {cap.config.name})")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    found = remove_capture(args.name)
    print(json.dumps({"removed": found}) if args.json else ("removed" if found else "nothing to remove"))
    return EXIT_OK


def _settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=("auto", "nftables", "iptables"))
    p.add_argument("--from-env", action="store_true", help="start from istio-iptables' environment variables")
    p.add_argument("-u", "--proxy-uid", type=int, help="never capture this user's traffic (default 1337)")
    p.add_argument("-g", "--proxy-gid", type=int, help="never capture this group's traffic (default: the uid)")
    p.add_argument("-p", "--outbound-port", type=int, help="outbound redirect port (default 15001)")
    p.add_argument("-z", "--inbound-port", type=int, help="inbound redirect port (default 15006)")
    p.add_argument("--dns-port", type=int, help="DNS redirect port (default 15053)")
    p.add_argument("-i", "--outbound-include", help="CIDRs to capture, comma-separated, or '*' (default '*')")
    p.add_argument("-x", "--outbound-exclude", help="CIDRs never captured, comma-separated")
    p.add_argument("-o", "--outbound-exclude-ports", help="destination ports never captured, comma-separated")
    p.add_argument("-q", "--outbound-ports", help="also capture these destination ports to any address")
    p.add_argument("-b", "--inbound-ports", help="inbound ports to capture, comma-separated, or '*'")
    p.add_argument("-d", "--inbound-exclude-ports", help="with -b '*': ports left alone (e.g. 22)")
    p.add_argument("--redirect-dns", action="store_true", help="capture DNS to the resolv.conf nameservers")
    p.add_argument("--capture-all-dns", action="store_true", help="capture DNS to any address")
    p.add_argument("--dns-servers", help="nameservers to capture (default: /etc/resolv.conf's)")
    p.add_argument("--mark", type=lambda s: int(s, 0), help="never capture packets with this fwmark")
    p.add_argument("--no-ipv6", action="store_true", help="IPv4 rules only")


def add_commands(sub: Any) -> None:
    cap = sub.add_parser("capture", help="traffic capture rules (istio-iptables conventions)")
    cs = cap.add_subparsers(dest="capture_command", required=True)
    for name, fn, text in (
        ("show", cmd_show, "print the rules that would be installed (dry run)"),
        ("install", cmd_install, "install the rules (idempotent; replaces an earlier copy)"),
    ):
        p = cs.add_parser(name, help=text)
        _settings(p)
        p.add_argument("--name", default="pymesh", help="nftables table / iptables chain prefix")
        p.set_defaults(func=fn)
    rm = cs.add_parser("remove", help="remove our rules from nftables and iptables (also after a crash)")
    rm.add_argument("--name", default="pymesh", help="nftables table / iptables chain prefix")
    rm.add_argument("--json", action="store_true")
    rm.set_defaults(func=cmd_remove)

"""The nftables backend: everything in one table of our own, ``inet <name>``.

One ``inet`` table serves IPv4 and IPv6 (nat hooks in the inet family need
Linux 5.2+). Setup replaces the whole table in one ``nft -f`` transaction
(``table`` + ``delete table`` + the new table: the first line makes the
delete succeed when the table is absent), so re-running it, or running it
after a crash, leaves exactly one copy and never a half-installed one;
cleanup deletes the table, and with it exactly what we added. The rules are
istio-nftables' (``tools/istio-nftables``), the nftables twin of
istio-iptables: ``meta skuid``/``skgid`` for the owner match, ``redirect
to :port``, ``ct zone set`` at raw priority.
"""

from __future__ import annotations

import shutil
import subprocess

from pymesh.capture.config import CaptureConfig, CaptureError

__all__ = ["install", "installed", "remove", "render"]

LO = '"lo"'


def _set(items: list[str] | tuple[str, ...] | tuple[int, ...]) -> str:
    vals = [str(x) for x in items]
    return vals[0] if len(vals) == 1 else "{ " + ", ".join(vals) + " }"


def _nat_output(cfg: CaptureConfig) -> list[str]:
    uid, gid = cfg.proxy_uid, cfg.proxy_gid
    # ISTIO_EXCLUDE_INTERFACES: nothing leaving or arriving on these is captured.
    r: list[str] = [f'oifname "{i}" return' for i in cfg.exclude_interfaces]
    if cfg.mark is not None:
        r.append(f"meta mark {cfg.mark} return")
    if cfg.outbound_exclude_ports:
        # istio-iptables -o adds UDP RETURN rules too (so 53 can be excluded).
        p = _set(cfg.outbound_exclude_ports)
        r += [f"tcp dport {p} return", f"udp dport {p} return"]
    # Connections of the proxy's own inbound side to the app use 127.0.0.6.
    r += ['oifname "lo" ip saddr 127.0.0.6 return']
    if cfg.ipv6:
        r += ['oifname "lo" ip6 saddr ::6 return']
    dns_tcp = "tcp dport != 53 " if cfg.dns_enabled else ""
    for who, owner in (("skuid", uid), ("skgid", gid)):
        if cfg.inbound_enabled:
            # The proxy calling the local app through its own IP/VIP goes to
            # the inbound listener (Istio's ISTIO_IN_REDIRECT from OUTPUT);
            # DNS and the tunnel port excepted.
            r.append(
                f"oifname {LO} ip daddr != 127.0.0.1 tcp dport != {{ 53, {cfg.tunnel_port} }} "
                f"meta {who} {owner} redirect to :{cfg.inbound_port}"
            )
            if cfg.ipv6:
                r.append(
                    f"oifname {LO} ip6 daddr != ::1 tcp dport != {{ 53, {cfg.tunnel_port} }} "
                    f"meta {who} {owner} redirect to :{cfg.inbound_port}"
                )
        # Non-proxy traffic over loopback stays local (TCP DNS excepted when
        # DNS is captured, so a loopback resolver like 127.0.0.53 is caught).
        r.append(f"oifname {LO} meta l4proto tcp {dns_tcp}meta {who} != {owner} return")
        # The proxy's own traffic is never captured: this comes before every
        # redirect, so its upstream DNS queries and connections leave as they are.
        r.append(f"meta {who} {owner} return")
    if cfg.dns_enabled:
        to = f"redirect to :{cfg.dns_port}"
        if cfg.capture_all_dns:
            r += [f"udp dport 53 {to}", f"tcp dport 53 {to}"]
        else:
            for fam, v in (("ip", 4), ("ip6", 6)):
                servers = cfg.dns_servers_of(v)
                if servers and (v == 4 or cfg.ipv6):
                    r += [
                        f"{fam} daddr {_set(servers)} udp dport 53 {to}",
                        f"{fam} daddr {_set(servers)} tcp dport 53 {to}",
                    ]
    r.append("ip daddr 127.0.0.1 return")
    if cfg.ipv6:
        r.append("ip6 daddr ::1 return")
    if cfg.outbound_enabled:
        to = f"redirect to :{cfg.outbound_port}"
        for fam, v in (("ip", 4), ("ip6", 6)):
            if v == 6 and not cfg.ipv6:
                continue
            ex = cfg.networks(cfg.outbound_exclude, v)
            if ex:
                r.append(f"{fam} daddr {_set(ex)} return")
            if cfg.outbound_ports:
                # istio-iptables -q: these ports to any address not excluded.
                r.append(f"meta nfproto {'ipv4' if v == 4 else 'ipv6'} tcp dport {_set(cfg.outbound_ports)} {to}")
            if cfg.outbound_include == "*":
                r.append(f"meta nfproto {'ipv4' if v == 4 else 'ipv6'} meta l4proto tcp {to}")
            else:
                inc = cfg.networks(cfg.outbound_include, v)
                if inc:
                    r.append(f"{fam} daddr {_set(inc)} meta l4proto tcp {to}")
    return r


def _nat_prerouting(cfg: CaptureConfig) -> list[str]:
    if not cfg.inbound_enabled:
        return []
    to = f"redirect to :{cfg.inbound_port}"
    r = [f'iifname "{i}" return' for i in cfg.exclude_interfaces]
    r.append(f"tcp dport {cfg.tunnel_port} return")
    if cfg.inbound_ports == "*":
        if cfg.inbound_exclude_ports:
            r.append(f"tcp dport {_set(cfg.inbound_exclude_ports)} return")
        if not cfg.ipv6:
            r.append("meta nfproto ipv6 return")
        r.append(f"meta l4proto tcp {to}")
    else:
        fam = "" if cfg.ipv6 else "meta nfproto ipv4 "
        r.append(f"{fam}tcp dport {_set(cfg.inbound_ports)} {to}")
    return r


def _raw_output(cfg: CaptureConfig) -> list[str]:
    """Conntrack zones for UDP DNS (Istio #33572): agent ↔ upstream in zone 1,
    app ↔ agent in zone 2, so an app query whose 5-tuple collides with the
    agent's upstream flow is not matched to that flow. The first zone set
    wins (later ``ct zone set`` on a tracked packet does nothing), and each
    rule returns anyway so the order is explicit."""
    if not cfg.dns_enabled:
        return []
    r = []
    for who, owner in (("skuid", cfg.proxy_uid), ("skgid", cfg.proxy_gid)):
        r.append(f"udp dport 53 meta {who} {owner} ct zone set 1 return")
        r.append(f"udp sport {cfg.dns_port} meta {who} {owner} ct zone set 2 return")
    if cfg.capture_all_dns:
        r.append("udp dport 53 ct zone set 2 return")
    else:
        for fam, v in (("ip", 4), ("ip6", 6)):
            s = cfg.dns_servers_of(v)
            if s and (v == 4 or cfg.ipv6):
                r.append(f"{fam} daddr {_set(s)} udp dport 53 ct zone set 2 return")
    return r


def _raw_prerouting(cfg: CaptureConfig) -> list[str]:
    if not cfg.dns_enabled:
        return []
    if cfg.capture_all_dns:
        return ["udp sport 53 ct zone set 1 return"]
    r = []
    for fam, v in (("ip", 4), ("ip6", 6)):
        s = cfg.dns_servers_of(v)
        if s and (v == 4 or cfg.ipv6):
            r.append(f"{fam} saddr {_set(s)} udp sport 53 ct zone set 1 return")
    return r


def render(cfg: CaptureConfig) -> str:
    """The table as ``nft -f`` input (without the replace preamble)."""
    chains = [
        ("raw_output", "filter hook output priority -300", _raw_output(cfg)),
        ("raw_prerouting", "filter hook prerouting priority -300", _raw_prerouting(cfg)),
        ("nat_output", "nat hook output priority -100", _nat_output(cfg)),
        ("nat_prerouting", "nat hook prerouting priority -100", _nat_prerouting(cfg)),
    ]
    out = [f"table inet {cfg.name} {{"]
    for name, hook, rules in chains:
        if not rules:
            continue
        out.append(f"\tchain {name} {{")
        out.append(f"\t\ttype {hook}; policy accept;")
        out += [f"\t\t{r}" for r in rules]
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def _nft(args: list[str], stdin: str | None = None, *, what: str) -> subprocess.CompletedProcess[str]:
    nft = shutil.which("nft")
    if nft is None:
        raise CaptureError(f"{what}: the nft command is not installed (package nftables)")
    p = subprocess.run([nft, *args], input=stdin, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise CaptureError(f"{what}: nft {' '.join(args)} failed: {p.stderr.strip()}")
    return p


def install(cfg: CaptureConfig) -> str:
    """Installs (or replaces) the table atomically; returns the script applied."""
    script = f"table inet {cfg.name}\ndelete table inet {cfg.name}\n" + render(cfg)
    _nft(["-f", "-"], script, what=f"installing nftables table inet {cfg.name}")
    return script


def remove(name: str = "pymesh") -> bool:
    """Deletes our table; returns whether it existed. Safe to call any time."""
    existed = installed(name)
    _nft(["-f", "-"], f"table inet {name}\ndelete table inet {name}\n", what=f"removing nftables table inet {name}")
    return existed


def installed(name: str = "pymesh") -> bool:
    nft = shutil.which("nft")
    if nft is None:
        raise CaptureError("the nft command is not installed (package nftables)")
    p = subprocess.run([nft, "list", "table", "inet", name], capture_output=True, text=True, check=False)
    return p.returncode == 0

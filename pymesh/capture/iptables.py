"""The iptables backend: chains of our own (``<NAME>_*``, PYMESH_* by
default) in the nat and raw tables, entered by one jump from each built-in
chain, for IPv4 (iptables) and IPv6 (ip6tables).

Setup is one ``iptables-restore --noflush`` transaction per table and
family: declaring our chains flushes them, the rules are appended, and a
jump from a built-in chain is inserted only if it is not there already
(duplicates from other tools are deleted), so re-running setup, or running
it after a crash, converges to exactly one copy. Chains of ours that the
new settings no longer need are removed in the same way as cleanup does it.
Cleanup reads ``iptables-save``, deletes exactly the rules in built-in
chains that jump to our chains, then flushes and deletes our chains; it
needs no state, so it works after the agent died. The rules mirror
istio-iptables (istio/istio ``tools/istio-iptables/pkg/capture/run.go``) with ISTIO_ replaced
by our prefix.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass, field

from pymesh.capture.config import CaptureConfig, CaptureError

__all__ = ["chains_present", "install", "remove", "render"]

TABLES = ("raw", "nat")


@dataclass
class _Table:
    chains: dict[str, list[str]] = field(default_factory=dict)
    # (built-in chain, our chain) jumps.
    jumps: list[tuple[str, str]] = field(default_factory=list)


def _prefix(cfg: CaptureConfig) -> str:
    return cfg.name.upper().replace("-", "_")


def _rules(cfg: CaptureConfig, v: int) -> dict[str, _Table]:
    """Our chains and jumps per table for one family (4 or 6)."""
    p = _prefix(cfg)
    lo4, lo = ("127.0.0.1/32", "127.0.0.6/32") if v == 4 else ("::1/128", "::6/128")
    uid, gid = cfg.proxy_uid, cfg.proxy_gid
    nat = _Table()
    raw = _Table()
    out: list[str] = []
    redirect, in_redirect, dns = f"{p}_REDIRECT", f"{p}_IN_REDIRECT", f"{p}_OUTPUT_DNS"
    # ISTIO_EXCLUDE_INTERFACES: nothing leaving or arriving on these is captured.
    out += [f"-o {i} -j RETURN" for i in cfg.exclude_interfaces]
    if cfg.mark is not None:
        out.append(f"-m mark --mark {cfg.mark} -j RETURN")
    for port in cfg.outbound_exclude_ports:
        # istio-iptables -o adds UDP RETURN rules too (so 53 can be excluded).
        out += [f"-p tcp --dport {port} -j RETURN", f"-p udp --dport {port} -j RETURN"]
    out.append(f"-o lo -s {lo} -j RETURN")
    dns_tcp = "! --dport 53 " if cfg.dns_enabled else ""
    for opt, owner in (("--uid-owner", uid), ("--gid-owner", gid)):
        if cfg.inbound_enabled:
            out.append(
                f"-o lo ! -d {lo4} -p tcp -m multiport ! --dports 53,{cfg.tunnel_port} "
                f"-m owner {opt} {owner} -j {in_redirect}"
            )
        out.append(f"-o lo -p tcp {dns_tcp}-m owner ! {opt} {owner} -j RETURN")
        out.append(f"-m owner {opt} {owner} -j RETURN")
    servers = cfg.dns_servers_of(v)
    if cfg.dns_enabled and (cfg.capture_all_dns or servers):
        out.append(f"-j {dns}")
        targets = [""] if cfg.capture_all_dns else [f"-d {s} " for s in servers]
        nat.chains[dns] = [
            f"{d}-p {proto} --dport 53 -j REDIRECT --to-ports {cfg.dns_port}"
            for d in targets
            for proto in ("udp", "tcp")
        ]
        zone: list[str] = []
        for opt, owner in (("--uid-owner", uid), ("--gid-owner", gid)):
            # CT is first-wins on a packet (xt_CT ignores packets that
            # already have a conntrack template), so the agent's own rules come first.
            zone.append(f"-p udp --dport 53 -m owner {opt} {owner} -j CT --zone 1")
            zone.append(f"-p udp --sport {cfg.dns_port} -m owner {opt} {owner} -j CT --zone 2")
        zone += [f"{d}-p udp --dport 53 -j CT --zone 2" for d in targets]
        raw.chains[dns] = zone
        raw.chains[f"{p}_INBOUND_DNS"] = [f"{d.replace('-d ', '-s ')}-p udp --sport 53 -j CT --zone 1" for d in targets]
        raw.jumps += [("OUTPUT", dns), ("PREROUTING", f"{p}_INBOUND_DNS")]
    out.append(f"-d {lo4} -j RETURN")
    if cfg.outbound_enabled:
        out += [f"-d {c} -j RETURN" for c in cfg.networks(cfg.outbound_exclude, v)]
        # istio-iptables -q: these ports to any address not excluded.
        out += [f"-p tcp --dport {port} -j {redirect}" for port in cfg.outbound_ports]
        if cfg.outbound_include == "*":
            out.append(f"-j {redirect}")
        else:
            out += [f"-d {c} -j {redirect}" for c in cfg.networks(cfg.outbound_include, v)]
        nat.chains[redirect] = [f"-p tcp -j REDIRECT --to-ports {cfg.outbound_port}"]
    nat.chains[f"{p}_OUTPUT"] = out
    nat.jumps.append(("OUTPUT", f"{p}_OUTPUT"))
    if cfg.inbound_enabled:
        inbound = [f"-i {i} -j RETURN" for i in cfg.exclude_interfaces]
        inbound.append(f"-p tcp --dport {cfg.tunnel_port} -j RETURN")
        if cfg.inbound_ports == "*":
            inbound += [f"-p tcp --dport {port} -j RETURN" for port in cfg.inbound_exclude_ports]
            inbound.append(f"-p tcp -j {in_redirect}")
        else:
            inbound += [f"-p tcp --dport {port} -j {in_redirect}" for port in cfg.inbound_ports]
        nat.chains[f"{p}_INBOUND"] = inbound
        nat.jumps.append(("PREROUTING", f"{p}_INBOUND"))
    if cfg.inbound_enabled:
        nat.chains[in_redirect] = [f"-p tcp -j REDIRECT --to-ports {cfg.inbound_port}"]
    return {"raw": raw, "nat": nat}


def render(cfg: CaptureConfig, v: int = 4) -> str:
    """The rules of one family as ``iptables-save`` text (chains and jumps)."""
    out = []
    for name, t in _rules(cfg, v).items():
        if not t.chains:
            continue
        out.append(f"*{name}")
        out += [f":{c} - [0:0]" for c in t.chains]
        out += [f"-A {builtin} -j {c}" for builtin, c in t.jumps]
        out += [f"-A {c} {r}" for c, rules in t.chains.items() for r in rules]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def _tool(v: int, what: str) -> str:
    name = "iptables" if v == 4 else "ip6tables"
    path = shutil.which(name)
    if path is None:
        raise CaptureError(f"{what}: the {name} command is not installed (package iptables)")
    return path


def _run(args: list[str], stdin: str | None, what: str) -> str:
    p = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise CaptureError(f"{what}: {' '.join(args)} failed: {p.stderr.strip()}\n{stdin or ''}")
    return p.stdout


def _save(v: int, table: str) -> list[str]:
    tool = _tool(v, f"reading the {table} table")
    return _run([tool + "-save", "-t", table], None, f"reading the {table} table").splitlines()


def _ours(lines: list[str], prefix: str) -> tuple[list[str], list[list[str]]]:
    """Our chains in an iptables-save dump, and the built-in chains' rules
    (as argument lists) that jump to one of them."""
    chains = [ln[1:].split()[0] for ln in lines if ln.startswith(":") and ln[1:].startswith(prefix + "_")]
    jumps = []
    for ln in lines:
        if not ln.startswith("-A "):
            continue
        args = shlex.split(ln)
        if args[1].startswith(prefix + "_"):
            continue
        if "-j" in args and args[args.index("-j") + 1] in chains:
            jumps.append(args[1:])
    return chains, jumps


def _removal(chains: list[str], jumps: list[list[str]], keep: set[str]) -> list[str]:
    """restore lines deleting `jumps` into chains not in `keep` and those chains."""
    lines = ["-D " + " ".join(shlex.quote(a) for a in j) for j in jumps if j[j.index("-j") + 1] not in keep]
    gone = [c for c in chains if c not in keep]
    # Flush all first: our chains may jump to each other.
    lines += [f"-F {c}" for c in gone]
    lines += [f"-X {c}" for c in gone]
    return lines


def _restore(v: int, table: str, lines: list[str], what: str) -> None:
    if not lines:
        return
    tool = _tool(v, what)
    text = f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n"
    _run([tool + "-restore", "--noflush", "-w", "5"], text, what)


def _families(cfg: CaptureConfig | None, ipv6: bool) -> list[int]:
    return [4, 6] if (cfg.ipv6 if cfg is not None else ipv6) else [4]


def install(cfg: CaptureConfig) -> None:
    """Installs (or converges to) the rules for both families."""
    prefix = _prefix(cfg)
    for v in _families(cfg, cfg.ipv6):
        for table, t in _rules(cfg, v).items():
            what = f"installing {'iptables' if v == 4 else 'ip6tables'} {table} rules"
            chains, jumps = _ours(_save(v, table), prefix)
            want = set(t.chains)
            # Declaring our chains first flushes them, so chains no longer
            # wanted lose every reference before they are deleted.
            lines = [f":{c} - [0:0]" for c in t.chains]
            lines += _removal(chains, jumps, want)
            for builtin, c in t.jumps:
                present = [j for j in jumps if j == [builtin, "-j", c]]
                if not present:
                    lines.append(f"-I {builtin} 1 -j {c}")
                # Any extra copy (or jump with other matches) goes.
                extra = [j for j in jumps if j[j.index("-j") + 1] == c and j != [builtin, "-j", c]]
                lines += ["-D " + " ".join(shlex.quote(a) for a in j) for j in extra + present[1:]]
            lines += [f"-A {c} {r}" for c, rules in t.chains.items() for r in rules]
            _restore(v, table, lines, what)


def remove(name: str = "pymesh", *, ipv6: bool = True) -> bool:
    """Removes every chain named ``<NAME>_*`` and every jump into them, in
    both families; returns whether anything was there. Needs no state."""
    prefix = name.upper().replace("-", "_")
    found = False
    for v in _families(None, ipv6):
        for table in TABLES:
            chains, jumps = _ours(_save(v, table), prefix)
            found |= bool(chains)
            _restore(v, table, _removal(chains, jumps, set()), f"removing {prefix}_* chains from {table}")
    return found


def chains_present(name: str = "pymesh", *, ipv6: bool = True) -> dict[str, list[str]]:
    """Our chains per "family/table" (for status and tests)."""
    prefix = name.upper().replace("-", "_")
    out = {}
    for v in _families(None, ipv6):
        for table in TABLES:
            chains, _ = _ours(_save(v, table), prefix)
            if chains:
                out[f"ipv{v}/{table}"] = chains
    return out

#!/usr/bin/env python3
"""Charts of the benchmarks' JSON outputs: one SVG per comparison.

    python benchmarks/plots.py build/bench docs/bench              # what `make bench` runs
    python benchmarks/plots.py build/bench build/bench --note "short run"

Reads RESULTS/<name>.json as the benchmarks write them with ``--json`` and
writes OUT/<name>.svg for each one it knows:

- ``dns``: benchmarks/dns_bench.py, pymesh against unbound, dnsmasq and the C echo floor;
- ``relay``: benchmarks/relay_bench.py, the outbound proxy against haproxy and a direct connection;
- ``l7``: benchmarks/l7_bench.py, HTTP/1.1 and HTTP/2 through pymesh, haproxy and nginx;
- ``gateway``: benchmarks/gateway_bench.py, the SNI gateway against haproxy;
- ``ha``: benchmarks/ha_bench.py, one control plane on SQLite against three replicas on etcd.

Each chart is a column of panels, one per figure, with a horizontal bar per
path: the bar is the median, the whisker the min-max range of the trials, and
the number is written beside it. The caption holds the trials, ``--note``
(short or full run), the JSON file's date, the machine and the commit checked
out (`make bench` plots right after running, on the same machine).

A hand-written SVG writer rather than matplotlib: matplotlib is not among the
project's dependencies, horizontal bars with whiskers are about a hundred lines
of SVG, and CI (`make bench-short`) then needs nothing beyond the standard
library; every label and number is an SVG <text> element, so the charts are
searchable and their diffs readable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent

# --- the model -------------------------------------------------------------------------------


@dataclass
class Bar:
    label: str
    median: float
    lo: float | None = None  # the range of the trials, when there were several
    hi: float | None = None
    group: str = ""  # bars of one group are drawn under its title (L7: the workload)
    kind: str = ""  # "pymesh", "baseline" or "reference" (no proxy, the floor): the colour; from the label if ""


@dataclass
class Panel:
    title: str  # what is measured, with its unit: the axis title
    bars: list[Bar]
    better: str = ""  # "higher" or "lower"


@dataclass
class Chart:
    title: str
    subtitle: str
    panels: list[Panel]
    notes: list[str] = field(default_factory=list)  # caption lines before the machine line


def stat(v: Any) -> tuple[float, float | None, float | None]:
    """Median and range from what the benchmarks write: benchlib.spread's
    {median, min, max}, a list of trials, or one number."""
    if isinstance(v, dict):
        return float(v["median"]), float(v["min"]), float(v["max"])
    if isinstance(v, list):
        xs = [float(x) for x in v]
        return statistics.median(xs), min(xs), max(xs)
    return float(v), None, None


def bar(label: str, v: Any, group: str = "", scale: float = 1.0, kind: str = "") -> Bar:
    m, lo, hi = stat(v)
    return Bar(label, m * scale, None if lo is None else lo * scale, None if hi is None else hi * scale, group, kind)


# --- one extractor per benchmark ---------------------------------------------------------------


def ordered(d: dict[str, Any], names: dict[str, str]) -> list[tuple[str, Any]]:
    """`d`'s items in the order of `names` (reference, pymesh, baselines), then any others."""
    rank = {n: i for i, n in enumerate(names)}
    return sorted(d.items(), key=lambda kv: rank.get(kv[0], len(rank)))


DNS_SERVERS = {
    "echo-c": "echo floor (C)",
    "pymesh": "pymesh",
    "unbound-1t": "unbound, 1 thread",
    "dnsmasq": "dnsmasq",
}


def dns_chart(doc: list[dict[str, Any]]) -> Chart:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in doc:
        runs.setdefault((r["server"], r["load"]), []).append(r)

    def bars(load: str, key: str, scale: float = 1.0) -> list[Bar]:
        out = [
            bar(label, [r[key] for r in runs[(s, load)]], scale=scale)
            for s, label in DNS_SERVERS.items()
            if (s, load) in runs
        ]
        if load == "found" and ("pymesh-cache", "cache-hit") in runs:
            out.append(bar("pymesh, cached forward", [r[key] for r in runs[("pymesh-cache", "cache-hit")]]))
        return out

    rounds = max((len(v) for v in runs.values()), default=0)
    return Chart(
        "DNS: pymesh against unbound, dnsmasq and an echo responder",
        "the same 10,000-name table and dnsperf client; each server pinned to one core",
        [
            Panel(
                "server CPU per answered query, µs (process + its core's softirq)",
                bars("found", "us_per_query"),
                "lower",
            ),
            Panel("queries per second under load (dnsperf pinned to another core)", bars("found", "qps"), "higher"),
            Panel("average latency, one query in flight, µs", bars("lat", "avg_latency_ms", 1e3), "lower"),
        ],
        [
            spread_note(rounds, "rounds", "rounds"),
            "echo floor: a C responder that does no DNS work (the kernel's cost of one UDP answer); "
            "cached forward: a name pymesh forwards, answered from its cache",
        ],
    )


RELAY_PATHS = {"direct": "direct (no proxy)", "pymesh": "pymesh outbound proxy", "haproxy": "haproxy, mode tcp"}


def relay_chart(doc: dict[str, Any]) -> Chart:
    res, samples = doc["results"], doc.get("samples", {})

    def bars(key: str, proxies_only: bool = False) -> list[Bar]:
        return [
            bar(RELAY_PATHS.get(p, p), samples.get(p, {}).get(key) or r[key])
            for p, r in ordered(res, RELAY_PATHS)
            if not (proxies_only and p == "direct")
        ]

    ranged = bool(samples)
    return Chart(
        "TCP relay: pymesh's outbound proxy against haproxy and a direct connection",
        "client in one network namespace, servers in another across a veth; nftables REDIRECT to pymesh",
        [
            Panel("throughput of one bulk stream, MB/s", bars("throughput_MBps"), "higher"),
            Panel("round trip of a 64-byte ping-pong on an open connection, µs", bars("rtt_us"), "lower"),
            Panel("connections per second (connect, 1-byte request and answer, close)", bars("cps"), "higher"),
            Panel("proxy CPU time per GB relayed, ms", bars("proxy_cpu_ms_per_GB", True), "lower"),
        ],
        [
            spread_note(len(next(iter(samples.values()))["cps"]))
            if ranged
            else "bars: median of the interleaved trials (relay_bench.py writes no per-trial values: no whiskers)"
        ],
    )


L7_PATHS = {
    "direct": "direct",
    "pymesh": "pymesh",
    "pm-off": "pymesh, metrics off",
    "haproxy": "haproxy",
    "nginx": "nginx",
}


def l7_workload(w: str) -> str:
    proto, body = w.split()
    return f"{'HTTP/1.1' if proto == 'h1' else 'HTTP/2 (h2c)'} GET /{body}"


def l7_chart(doc: dict[str, Any]) -> Chart:
    res, cfg = doc["results"], doc.get("config", {})

    def bars(key: str, proxies_only: bool = False) -> list[Bar]:
        return [
            bar(L7_PATHS.get(p, p), m[key], group=l7_workload(w))
            for w, by in res.items()
            for p, m in ordered(by, L7_PATHS)
            if key in m and not (proxies_only and p == "direct")
        ]

    notes = [spread_note(cfg.get("trials", "?"))]
    if cfg:
        notes.append(
            f"load: wrk -c{cfg.get('wrk_connections')} (HTTP/1.1), h2load -c{cfg.get('h2load_connections')} "
            f"-m{cfg.get('h2load_streams')} (HTTP/2), {cfg.get('load_seconds')} s per path and trial; latency: "
            f"{cfg.get('probe_requests')} sequential requests; every proxy 1 worker on one pinned core"
        )
    env = cfg.get("envoy_us_per_request")
    if env:
        notes.append(f"for scale: Istio's published Envoy sidecar figure is {env:g} µs of CPU per request")
    return Chart(
        "HTTP: pymesh's L7 path against haproxy (mode http) and nginx (proxy_pass)",
        "the same nginx backend across a veth; every path in one run, trials interleaved",
        [
            Panel("requests per second under load", bars("rps"), "higher"),
            Panel("proxy CPU time per request under load, µs", bars("cpu_us_per_req", True), "lower"),
            Panel("latency p50, one request at a time, µs", bars("p50_us"), "lower"),
            Panel("latency p99, one request at a time, µs", bars("p99_us"), "lower"),
        ],
        notes,
    )


GATEWAY_PATHS = {
    "direct": "direct (no proxy)",
    "pymesh sni": "pymesh gateway (SNI)",
    "haproxy sni": "haproxy (req.ssl_sni)",
    "pymesh forward": "pymesh, plain forward",
    "haproxy forward": "haproxy, plain forward",
}


def gateway_chart(doc: dict[str, Any]) -> Chart:
    res, cfg = doc["results"], doc.get("config", {})

    def bars(key: str) -> list[Bar]:
        return [bar(GATEWAY_PATHS.get(p, p), m[key]) for p, m in ordered(res, GATEWAY_PATHS) if key in m]

    return Chart(
        "East-west gateway: pymesh's SNI passthrough against haproxy",
        "TLS 1.3 client to the same backend across a veth; the plain forward of each proxy as the second reference",
        [
            Panel("throughput of one bulk TLS stream, MB/s", bars("MBps"), "higher"),
            Panel("TLS connections per second (full handshake, sequential)", bars("cps"), "higher"),
            Panel("proxy CPU time per MB relayed, µs", bars("cpu_us_per_MB"), "lower"),
            Panel("proxy CPU time per connection, µs", bars("cpu_us_per_conn"), "lower"),
        ],
        [
            f"{spread_note(cfg.get('trials', '?'))}; one bulk stream of {cfg.get('bulk_bytes', 0) >> 20} MiB "
            f"and {cfg.get('conn_seconds', '?')} s of connections per trial"
        ],
    )


HA_KINDS = {"sqlite": "1 replica, SQLite", "etcd": "3 replicas, etcd"}


def ha_chart(doc: dict[str, Any]) -> Chart:
    kinds = [k for k in HA_KINDS if k in doc]

    def bars(get: Callable[[dict[str, Any]], Any]) -> list[Bar]:
        return [bar(HA_KINDS[k], get(doc[k]), kind="pymesh") for k in kinds]

    panels = [
        Panel("endpoint change → last agent ACK, s", bars(lambda r: [x["s"] for x in r["endpoints"]]), "lower"),
        Panel("new Service → last agent ACK, s", bars(lambda r: [x["s"] for x in r["new_service"]]), "lower"),
        Panel("all agents connected and ACKed, s", bars(lambda r: r["connect_all_s"]), "lower"),
        Panel(
            "resident memory per replica with its agents, MB; whiskers: across replicas",
            bars(lambda r: r["rss_agents_mb"]),
            "lower",
        ),
        Panel(
            "resident memory, every process (replicas + etcd members), MB",
            bars(lambda r: sum(r["rss_agents_mb"]) + sum(r.get("rss_etcd_mb", []))),
            "lower",
        ),
    ]
    f = doc.get("etcd", {}).get("failover")
    if f and f.get("times_s"):
        panels.append(
            Panel(
                "failover: kill -9 of a replica → its agents re-ACKed on another, s; whiskers: across agents",
                [bar(f"{HA_KINDS['etcd']}, {f['recovered']}/{f['victims']} agents back", f["times_s"], kind="pymesh")],
                "lower",
            )
        )
    a = doc.get("args", {})
    return Chart(
        "Control plane: one replica on SQLite against three replicas on etcd",
        f"{a.get('services', '?')} Services, {a.get('agents', '?')} ADS agents on loopback, "
        f"CDS + NDS + {a.get('eds', '?')} EDS each",
        panels,
        [spread_note(a.get("trials", "?"), "trials of each change")],
    )


CHARTS: dict[str, Callable[[Any], Chart]] = {
    "dns": dns_chart,
    "relay": relay_chart,
    "l7": l7_chart,
    "gateway": gateway_chart,
    "ha": ha_chart,
}

# --- the SVG writer ------------------------------------------------------------------------------

# The value beside the longest bar ("52,000  [51,000-52,000]") must fit right of BAR_X + BAR_W.
WIDTH, LABEL_W, BAR_X, BAR_W, CAPTION_CHARS = 860, 250, 262, 420, 140
ROW, GROUP_ROW, FONT = 22, 20, "DejaVu Sans, Helvetica, Arial, sans-serif"


def spread_note(n: Any, what: str = "interleaved trials", each: str = "trials") -> str:
    """The caption's account of the bars and the whiskers."""
    if n == 1:
        return f"bars: one run ({what.replace('trials', 'trial').replace('rounds', 'round')}), so no range"
    return f"bars: median of {n} {what}; whiskers: min-max of the {each}"


def tick_fmt(t: float, step: float) -> str:
    """A tick's label with the decimals its step needs (steps are 1, 2 or 5 times a power of ten)."""
    return f"{t:,.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"


def fmt(v: float) -> str:
    """About three significant figures, thousands separated, as the benchmarks' tables print
    them: 65,934 / 123 / 7.43 / 0.64 (two decimals below 1, so a range reads 0.59-0.70)."""
    a = abs(v)
    if a >= 100 or a == 0:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01:
        return f"{v:.2f}"
    return f"{v:.2g}"


def nice_ticks(top: float) -> list[float]:
    """0 and about five round steps (1, 2 or 5 times a power of ten) up to `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


COLORS = {"pymesh": "#2b6cb0", "reference": "#b8b8b8", "baseline": "#e07b39"}


def color(b: Bar) -> str:
    kind = b.kind or (
        "pymesh" if b.label.startswith("pymesh") else "reference" if b.label.startswith(("direct", "echo")) else ""
    )
    return COLORS.get(kind, COLORS["baseline"])


def text(x: float, y: float, s: str, size: int = 12, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def render(chart: Chart, caption: list[str]) -> str:
    body: list[str] = []
    y = 28.0
    body.append(text(16, y, chart.title, 16, extra=' font-weight="bold"'))
    y += 20
    body.append(text(16, y, chart.subtitle, 12, extra=' fill="#444"'))
    y += 14
    for p in chart.panels:
        if not p.bars:
            continue
        y += 26
        better = f" ({p.better} is better)" if p.better else ""
        body.append(text(16, y, p.title + better, 13, extra=' font-weight="bold"'))
        y += 10
        top = max(b.hi if b.hi is not None else b.median for b in p.bars)
        ticks = nice_ticks(top * 1.02)
        scale = BAR_W / ticks[-1]
        y0, group = y, None
        rows: list[str] = []
        for b in p.bars:
            if b.group and b.group != group:
                group = b.group
                y += GROUP_ROW
                rows.append(text(16, y - 5, group, 12, extra=' font-style="italic" fill="#333"'))
            y += ROW
            mid = y - ROW / 2
            rows.append(text(LABEL_W, mid + 4, b.label, 12, "end"))
            w = max(b.median * scale, 0.5)
            rows.append(
                f'<rect x="{BAR_X}" y="{mid - 7:.1f}" width="{w:.1f}" height="14" fill="{color(b)}">'
                f"<title>{escape(b.label)}: {escape(fmt(b.median))}</title></rect>"
            )
            right = BAR_X + w
            value = fmt(b.median)
            if b.lo is not None and b.hi is not None and b.hi > b.lo:
                x1, x2 = BAR_X + b.lo * scale, BAR_X + b.hi * scale
                rows.append(
                    f'<path d="M{x1:.1f},{mid:.1f}H{x2:.1f}M{x1:.1f},{mid - 5:.1f}V{mid + 5:.1f}'
                    f'M{x2:.1f},{mid - 5:.1f}V{mid + 5:.1f}" stroke="#222" stroke-width="1.2" fill="none"/>'
                )
                right = max(right, x2)
                value += f"  [{fmt(b.lo)}-{fmt(b.hi)}]"
            rows.append(text(right + 6, mid + 4, value, 12))
        y += 6
        # Grid lines under the bars, tick labels under the axis.
        for t in ticks:
            x = BAR_X + t * scale
            body.append(f'<line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>')
            body.append(text(x, y + 13, tick_fmt(t, ticks[1]), 10, "middle", ' fill="#555"'))
        body.append(f'<line x1="{BAR_X}" y1="{y:.1f}" x2="{BAR_X + BAR_W}" y2="{y:.1f}" stroke="#888"/>')
        body += rows
        y += 16
    y += 12
    for line in chart.notes + caption:
        for part in textwrap.wrap(line, CAPTION_CHARS, subsequent_indent="  "):
            y += 16
            body.append(text(16, y, part, 11, extra=' fill="#444"'))
    height = int(y + 14)
    return "\n".join(
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="{FONT}">',
            f"<title>{escape(chart.title)}</title>",
            f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
            *body,
            "</svg>",
            "",
        ]
    )


# --- the caption: what, where, when -------------------------------------------------------------


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}"


def commit() -> str:
    try:
        r = subprocess.run(
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return r.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="directory of the benchmarks' JSON files (<name>.json)")
    ap.add_argument("out", type=Path, help="directory for the charts (<name>.svg)")
    ap.add_argument("--note", default="", help="one more caption line, e.g. 'short run (make bench-short)'")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    where = f"machine: {machine()}; commit {commit()}"
    written = 0
    for name, make in CHARTS.items():
        src = args.results / f"{name}.json"
        if not src.exists():
            print(f"plots: no {src}; no {name} chart")
            continue
        when = datetime.datetime.fromtimestamp(src.stat().st_mtime, datetime.timezone.utc)
        caption = [f"{args.note + '; ' if args.note else ''}run {when:%Y-%m-%d %H:%M} UTC", where]
        dst = args.out / f"{name}.svg"
        dst.write_text(render(make(json.loads(src.read_text())), caption))
        print(f"plots: wrote {dst}")
        written += 1
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/plots.py: each benchmark's JSON, as the benchmark writes it, becomes a
well-formed SVG whose <text> elements hold the paths, the axis titles with their
units, the medians and the ranges."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLOTS = ROOT / "benchmarks" / "plots.py"
SVG = "{http://www.w3.org/2000/svg}"


def spread(*xs: float) -> dict[str, float]:
    s = sorted(xs)
    return {"median": s[len(s) // 2], "min": s[0], "max": s[-1]}


def dns_run(server: str, load: str, qps: float, us: float, lat_ms: float) -> dict[str, Any]:
    return {
        "server": server,
        "load": load,
        "qps": qps,
        "completed": int(qps),
        "lost": 0,
        "avg_latency_ms": lat_ms,
        "us_per_query": us,
        "core_us_per_query": us * 2,
        "proc_us_per_query": us / 2,
        "rcodes": {},
    }


DNS = [
    dns_run("echo-c", "found", 64000, 8.5, 0.7),
    dns_run("echo-c", "found", 66000, 8.7, 0.7),
    dns_run("pymesh", "found", 65000, 7.25, 0.6),
    dns_run("pymesh", "found", 67000, 7.75, 0.6),
    dns_run("unbound-1t", "found", 38000, 11.5, 1.4),
    dns_run("dnsmasq", "found", 35000, 17.5, 1.7),
    dns_run("pymesh-cache", "cache-hit", 83000, 8.25, 0.5),
    dns_run("pymesh", "lat", 5700, 0, 0.113),
    dns_run("echo-c", "lat", 2300, 0, 0.111),
]

RELAY = {
    "results": {
        "direct": {"throughput_MBps": 2345.0, "rtt_us": 41.5, "cps": 5120.0, "proxy_cpu_ms_per_GB": 0.0},
        "pymesh": {"throughput_MBps": 2200.0, "rtt_us": 55.25, "cps": 4010.0, "proxy_cpu_ms_per_GB": 310.0},
        "haproxy": {"throughput_MBps": 1980.0, "rtt_us": 61.0, "cps": 3870.0, "proxy_cpu_ms_per_GB": 420.0},
    },
    "summary": {"throughput_vs_direct": 0.94},
    "proxy": {"cluster": 10, "resets": 0, "connect_failures": 0},
}

GATEWAY = {
    "config": {"trials": 3, "bulk_bytes": 32 << 20, "conn_seconds": 0.4, "workers": 2, "sni": "x"},
    "results": {
        "direct": {"MBps": spread(410, 420, 430), "cps": spread(300, 310, 320)},
        "pymesh sni": {
            "MBps": spread(380, 390, 401),
            "cps": spread(280, 290, 300),
            "cpu_us_per_MB": spread(150, 160, 170),
            "cpu_us_per_conn": spread(45.5, 47.5, 49.5),
        },
        "haproxy sni": {
            "MBps": spread(370, 375, 385),
            "cps": spread(270, 275, 285),
            "cpu_us_per_MB": spread(200, 210, 220),
            "cpu_us_per_conn": spread(60, 61, 62),
        },
    },
    "summary": {},
}

L7 = {
    "config": {
        "short": True,
        "trials": 2,
        "load_seconds": 1,
        "probe_requests": 1000,
        "wrk_connections": 16,
        "h2load_connections": 4,
        "h2load_streams": 16,
        "workers": 1,
        "envoy_us_per_request": 350.0,
    },
    "results": {
        "h1 ok": {
            "direct": {"rps": spread(31000, 32000), "p50_us": spread(71, 73), "p99_us": spread(140, 150)},
            "pymesh": {
                "rps": spread(21000, 22100),
                "cpu_us_per_req": spread(19.5, 21.5),
                "p50_us": spread(88, 92),
                "p99_us": spread(170, 190),
            },
            "nginx": {
                "rps": spread(15000, 16000),
                "cpu_us_per_req": spread(33.5, 35.5),
                "p50_us": spread(101, 103),
                "p99_us": spread(200, 220),
            },
        },
        "h2 ok": {
            "direct": {"rps": spread(51000, 52000)},
            "pymesh": {"rps": spread(41000, 42000), "cpu_us_per_req": spread(9.5, 10.5)},
        },
    },
}

HA = {
    "args": {"services": 100, "agents": 200, "eds": 20, "trials": 2, "short": True},
    "sqlite": {
        "kind": "sqlite",
        "replicas": 1,
        "rss_agents_mb": [182.0],
        "connect_all_s": 4.25,
        "endpoints": [{"s": 0.61}, {"s": 0.69}],
        "new_service": [{"s": 0.81}, {"s": 0.89}],
    },
    "etcd": {
        "kind": "etcd",
        "replicas": 3,
        "rss_agents_mb": [120.0, 125.0, 130.0],
        "rss_etcd_mb": [40.0, 41.0, 42.0],
        "connect_all_s": 3.75,
        "endpoints": [{"s": 0.71}, {"s": 0.79}],
        "new_service": [{"s": 0.95}, {"s": 1.05}],
        "failover": {"victims": 66, "recovered": 66, "times_s": [1.25, 1.5, 2.75]},
    },
}


@pytest.fixture(scope="module")
def charts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Every chart's <text> strings, from one run of plots.py over the five JSON files."""
    src, out = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("charts")
    for name, doc in (("dns", DNS), ("relay", RELAY), ("gateway", GATEWAY), ("l7", L7), ("ha", HA)):
        (src / f"{name}.json").write_text(json.dumps(doc))
    (src / "telemetry.json").write_text("{}")  # a benchmark with no chart: ignored
    r = subprocess.run(
        [sys.executable, str(PLOTS), str(src), str(out), "--note", "short run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    got = {}
    for svg in sorted(out.glob("*.svg")):
        root = ET.parse(svg).getroot()  # well-formed, or this raises
        assert root.tag == f"{SVG}svg"
        got[svg.stem] = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    return got


def has(texts: list[str], *needles: str) -> None:
    joined = "\n".join(texts)
    for n in needles:
        assert n in joined, f"{n!r} not in the chart's text:\n{joined}"


def test_one_chart_per_known_benchmark(charts: dict[str, list[str]]) -> None:
    assert sorted(charts) == ["dns", "gateway", "ha", "l7", "relay"]


def test_every_caption_says_what_run_and_where(charts: dict[str, list[str]]) -> None:
    for texts in charts.values():
        has(texts, "short run", " UTC", "machine: ", "commit ")


def test_dns_chart(charts: dict[str, list[str]]) -> None:
    t = charts["dns"]
    has(t, "echo floor (C)", "pymesh", "unbound, 1 thread", "dnsmasq", "pymesh, cached forward")
    has(t, "server CPU per answered query, µs", "queries per second", "latency, one query in flight, µs")
    # Medians and the rounds' range; one round gives a bar with no range.
    has(t, "7.50  [7.25-7.75]", "11.5", "17.5", "66,000  [65,000-67,000]", "113", "median of 2 rounds")


def test_relay_chart_medians_only(charts: dict[str, list[str]]) -> None:
    t = charts["relay"]
    has(t, "direct (no proxy)", "pymesh outbound proxy", "haproxy, mode tcp", "MB/s", "µs", "ms")
    has(t, "2,345", "2,200", "1,980", "55.2", "4,010", "310", "420", "no whiskers")
    # The proxy CPU panel leaves the direct path out (it has no proxy).
    assert t.count("direct (no proxy)") == 3


def test_gateway_chart(charts: dict[str, list[str]]) -> None:
    t = charts["gateway"]
    has(t, "pymesh gateway (SNI)", "haproxy (req.ssl_sni)", "direct (no proxy)")
    has(t, "MB/s", "connections per second", "CPU time per MB relayed, µs", "per connection, µs")
    has(t, "390  [380-401]", "375  [370-385]", "47.5  [45.5-49.5]", "median of 3 interleaved trials", "32 MiB")


def test_l7_chart(charts: dict[str, list[str]]) -> None:
    t = charts["l7"]
    has(t, "HTTP/1.1 GET /ok", "HTTP/2 (h2c) GET /ok", "direct", "pymesh", "nginx")
    has(t, "requests per second", "CPU time per request under load, µs", "p50", "p99")
    has(t, "22,100  [21,000-22,100]", "21.5  [19.5-21.5]", "10.5  [9.50-10.5]", "350 µs")


def test_ha_chart(charts: dict[str, list[str]]) -> None:
    t = charts["ha"]
    has(t, "1 replica, SQLite", "3 replicas, etcd", "100 Services, 200 ADS agents")
    has(t, "endpoint change → last agent ACK, s", "resident memory", "MB", "failover")
    has(t, "0.65  [0.61-0.69]", "125  [120-130]", "4.25", "498", "1.50  [1.25-2.75]", "66/66 agents back")


def test_no_results_is_an_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(PLOTS), str(tmp_path), str(tmp_path / "out")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert "no dns chart" in r.stdout

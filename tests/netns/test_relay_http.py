"""The outbound proxy's HTTP path end to end in network namespaces: an app's
connections are redirected by real nftables rules to the proxy (running as the
proxy uid the rules exclude); on a port with HTTP routes (an Envoy
RouteConfiguration in proto3 JSON, as istiod's RDS sends it) each request is
routed on its own: weighted subsets, header, path, regex, query and
runtime-fraction matches, fault injection, retries, timeouts, mirroring,
redirects, direct responses, rewrites and header mutations, for curl
(HTTP/1.1 and h2c with prior knowledge) and grpcio clients; anything that is
not HTTP falls back to TCP.

Backends (tests/support/peers/http_backend.py: Python HTTP/1.1 servers that
echo what they saw, a server that resets, grpcio servers; nginx for h2c) run in
the net namespace; clients (curl, nghttp for multiplexed HTTP/2, grpcio, raw
sockets) as the app uid in the vm namespace. Shares are checked against
two-sided p = 1e-6 bounds (support/shares.py), so a correct proxy fails one by
chance about once in a million runs.

Needs root (network namespaces, nftables rules, the app and the proxy as fixed
uids via setpriv), iproute2, nft, curl, nghttp (nghttp2-client), nginx and
grpcio: without them it is skipped with the reason, or fails when
PYMESH_REQUIRE_ROOT_TESTS is set (CI)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from support.curl import CURL, Reply, curl_runs
from support.lb import cluster, ep, http_options
from support.netns import APP_UID, EXTRA4, PROXY_UID, Lab, inside, lab, nft_netns, require_root_tools
from support.shares import CHI2_1DOF_BOUND, chi_square, within_binomial
from support.system import require_module
from support.wait import wait_until

A, B, C, D = EXTRA4  # backend addresses in the net namespace; D is no service's
VIP = "10.96.0.10"  # the HTTP service, port 80
GRPC_VIP = "10.96.0.20"  # the gRPC service, port 50051
TCP_VIP = "10.96.0.30"  # a service whose port 80 stays TCP (istiod's <VIP>_80 TCP listener)
GRPC_PORT = 50051

V1 = "outbound|80|v1|svc.default.svc.cluster.local"
V2 = "outbound|80|v2|svc.default.svc.cluster.local"
V3 = "outbound|80||reviews.default.svc.cluster.local"
FLAKY = "outbound|80||flaky.default.svc.cluster.local"
SLOWFAST = "outbound|80||slowfast.default.svc.cluster.local"
MIRROR = "outbound|80||mirror.default.svc.cluster.local"
H2 = "outbound|80||h2.default.svc.cluster.local"
# The same backends with the upstream protocol set by the cluster, as istiod's CDS sets it.
H2UP = "outbound|80||h2up.default.svc.cluster.local"
H1DOWN = "outbound|80||h1down.default.svc.cluster.local"
H2COLD = "outbound|80||h2cold.default.svc.cluster.local"
OD = "outbound|80||ejectable.default.svc.cluster.local"
HASHED = "outbound|80||sticky.default.svc.cluster.local"
GRPC = f"outbound|{GRPC_PORT}||grpc.default.svc.cluster.local"
TCP = "outbound|80||svc-tcp.default.svc.cluster.local"

BACKENDS = [
    f"http:v1:{A}:8080",
    f"http:v2:{B}:8080",
    f"http:v3:{C}:8080",
    f"reset:flaky:{C}:8081",
    f"slow:slow:{B}:8082",
    f"http:mirror:{C}:8090",
    f"http:direct:{D}:80",
    f"grpc:g1:{A}:{GRPC_PORT}",
    f"grpc:g2:{B}:{GRPC_PORT}",
    f"grpc:g3:{C}:{GRPC_PORT}",
]
NGINX_H2C = (D, 8081)  # nginx, h2c with prior knowledge only
NGINX_H2C_COLD = (D, 8082)  # the same, for the one test that needs an empty pool
# The first SYN to the cold endpoint from an address is dropped: that first
# connect takes the 1 s SYN retransmission, as to a slow or distant upstream.
SLOW_FIRST_SYN = f"""
table ip pmslowsyn {{
  set seen {{ type ipv4_addr; flags dynamic, timeout; }}
  chain input {{
    type filter hook input priority 0; policy accept;
    ip daddr {NGINX_H2C_COLD[0]} tcp dport {NGINX_H2C_COLD[1]} tcp flags & (syn | ack) == syn ip saddr @seen accept
    ip daddr {NGINX_H2C_COLD[0]} tcp dport {NGINX_H2C_COLD[1]} tcp flags & (syn | ack) == syn \\
      add @seen {{ ip saddr timeout 10m }} drop
  }}
}}
"""
TCP_ECHO = (D, 9000)  # netns_peer serve: the VIP's TCP cluster
TCP80 = (B, 80)  # netns_peer serve: no service's, a port with HTTP routes

FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def hv(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}}


def pct(percent: float) -> dict[str, Any]:
    """A FractionalPercent as istiod writes it (per million)."""
    return {"numerator": int(percent * 10_000), "denominator": "MILLION"}


def fault(**f: Any) -> dict[str, Any]:
    return {"envoy.filters.http.fault": {"@type": FAULT_TYPE, **f}}


def route(name: str, match: dict[str, Any], **action: Any) -> dict[str, Any]:
    """A route that tells the backend its name (request header x-route)."""
    r: dict[str, Any] = {"name": name, "match": match, **action}
    r["requestHeadersToAdd"] = [*r.get("requestHeadersToAdd", []), hv("x-route", name)]
    return r


PREVIOUS_HOSTS = [
    {
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
        },
    }
]
RETRY = {
    "retryOn": "5xx,reset,connect-failure",
    "numRetries": 2,
    "retryHostPredicate": PREVIOUS_HOSTS,
    "hostSelectionRetryMaxAttempts": "5",
}

SVC_ROUTES = [
    route(
        "canary",
        {"prefix": "/", "headers": [{"name": "end-user", "stringMatch": {"exact": "jason"}}]},
        route={"cluster": V2, "timeout": "0s"},
    ),
    route(
        "abort",
        {"prefix": "/fault/abort/"},
        route={"cluster": V1},
        typedPerFilterConfig=fault(abort={"httpStatus": 503, "percentage": pct(50)}),
    ),
    route(
        "delay",
        {"prefix": "/fault/delay/"},
        route={"cluster": V1},
        typedPerFilterConfig=fault(delay={"fixedDelay": "0.200s", "percentage": pct(50)}),
    ),
    route("retry", {"prefix": "/retry/"}, route={"cluster": FLAKY, "retryPolicy": RETRY}),
    route("noretry", {"prefix": "/noretry/"}, route={"cluster": FLAKY}),
    route("timeout", {"prefix": "/timeout/"}, route={"cluster": V1, "timeout": "0.300s"}),
    route(
        "pertry",
        {"prefix": "/pertry/"},
        route={
            "cluster": SLOWFAST,
            "timeout": "3s",
            "retryPolicy": {**RETRY, "perTryTimeout": "0.250s", "retryBackOff": {"baseInterval": "0.010s"}},
        },
    ),
    route(
        "mirror",
        {"prefix": "/mirror/"},
        route={
            "cluster": V1,
            "requestMirrorPolicies": [{"cluster": MIRROR, "runtimeFraction": {"defaultValue": {"numerator": 100}}}],
        },
    ),
    route(
        "redirect",
        {"prefix": "/old/"},
        redirect={"hostRedirect": "new.example.com", "prefixRewrite": "/new/", "responseCode": "FOUND"},
    ),
    route("teapot", {"path": "/teapot"}, directResponse={"status": 418, "body": {"inlineString": "short and stout\n"}}),
    route(
        "rewrite",
        {"prefix": "/rewrite/"},
        route={"cluster": V1, "prefixRewrite": "/v2api/", "hostRewriteLiteral": "backend.internal"},
        requestHeadersToRemove=["x-secret"],
        responseHeadersToAdd=[hv("x-resp", "rewritten")],
    ),
    # Envoy's documented regex_rewrite examples (route_components.proto):
    # "one" -> "two" turns /xxx/one/yyy/one/zzz into /xxx/two/yyy/two/zzz.
    route(
        "rx-global",
        {"prefix": "/rx/"},
        route={"cluster": V1, "regexRewrite": {"pattern": {"regex": "one"}, "substitution": "two"}},
    ),
    route(
        "rx-groups",
        {"prefix": "/service/"},
        route={
            "cluster": V1,
            "regexRewrite": {"pattern": {"regex": "^/service/([^/]+)(/.*)$"}, "substitution": "\\2/instance/\\1"},
        },
    ),
    route("ejectable", {"prefix": "/od/"}, route={"cluster": OD}),
    route(
        "hash", {"prefix": "/hash/"}, route={"cluster": HASHED, "hashPolicy": [{"header": {"headerName": "x-user"}}]}
    ),
    route("reviews", {"prefix": "/reviews/"}, route={"cluster": V3}),
    route("regex", {"safeRegex": {"regex": "/api/v[0-9]+/items/[0-9]+"}}, route={"cluster": V3}),
    route("sep", {"pathSeparatedPrefix": "/sep"}, route={"cluster": V3}),
    route(
        "query",
        {"prefix": "/q", "queryParameters": [{"name": "version", "stringMatch": {"exact": "beta"}}]},
        route={"cluster": V3},
    ),
    route(
        "fraction",
        {"prefix": "/fraction", "runtimeFraction": {"defaultValue": {"numerator": 30}}},
        route={"cluster": V3},
    ),
    route(
        "split",
        {"prefix": "/"},
        route={"weightedClusters": {"clusters": [{"name": V1, "weight": 90}, {"name": V2, "weight": 10}]}},
    ),
]


def direct(name: str, text: str) -> dict[str, Any]:
    return {"name": name, "match": {"prefix": "/"}, "directResponse": {"status": 200, "body": {"inlineString": text}}}


ROUTES_80 = {
    "name": "80",
    "virtualHosts": [
        {
            "name": "svc.default.svc.cluster.local:80",
            "domains": ["svc", "svc.default.svc.cluster.local", "svc.default.svc.cluster.local:80", VIP],
            "requestHeadersToAdd": [hv("x-vhost", "svc")],
            "routes": SVC_ROUTES,
        },
        {"name": "suffix", "domains": ["*.example.com"], "routes": [direct("suffix", "suffix")]},
        {"name": "prefix", "domains": ["svc.*"], "routes": [direct("prefix", "prefix")]},
        {"name": "h2", "domains": ["h2svc"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": H2}}]},
        {"name": "h2up", "domains": ["h2up"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": H2UP}}]},
        {"name": "h1down", "domains": ["h1down"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": H1DOWN}}]},
        {"name": "h2cold", "domains": ["h2cold"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": H2COLD}}]},
        {
            "name": "allow_any",
            "domains": ["*"],
            "routes": [
                {
                    "name": "allow_any",
                    "match": {"prefix": "/"},
                    "route": {"cluster": "PassthroughCluster", "timeout": "0s"},
                }
            ],
        },
    ],
    "requestHeadersToAdd": [hv("x-config", "80")],
    "responseHeadersToAdd": [hv("x-mesh", "pymesh")],
}

ROUTES_GRPC = {
    "name": str(GRPC_PORT),
    "virtualHosts": [
        {
            "name": f"grpc.default.svc.cluster.local:{GRPC_PORT}",
            "domains": ["grpc.default.svc.cluster.local", GRPC_VIP],
            "routes": [
                {
                    "name": "abort",
                    "match": {"prefix": "/test.Abort/"},
                    "route": {"cluster": GRPC, "timeout": "0s"},
                    # RESOURCE_EXHAUSTED: neither what the servers nor the proxy's own replies say.
                    "typedPerFilterConfig": fault(abort={"grpcStatus": 8, "percentage": pct(100)}),
                },
                {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": GRPC, "timeout": "0s"}},
            ],
        }
    ],
}

CONFIG: dict[str, Any] = {
    "seed": 11,
    "clusters": [
        cluster(V1, "ROUND_ROBIN", [ep(f"{A}:8080")]),
        cluster(V2, "ROUND_ROBIN", [ep(f"{B}:8080")]),
        cluster(V3, "ROUND_ROBIN", [ep(f"{C}:8080")]),
        cluster(FLAKY, "ROUND_ROBIN", [ep(f"{C}:8081"), ep(f"{A}:8080")]),
        cluster(SLOWFAST, "ROUND_ROBIN", [ep(f"{B}:8082"), ep(f"{A}:8080")]),
        cluster(MIRROR, "ROUND_ROBIN", [ep(f"{C}:8090")]),
        cluster(H2, "ROUND_ROBIN", [ep(f"{NGINX_H2C[0]}:{NGINX_H2C[1]}")], **http_options("clients")),
        cluster(H2UP, "ROUND_ROBIN", [ep(f"{NGINX_H2C[0]}:{NGINX_H2C[1]}")], **http_options("http2ProtocolOptions")),
        cluster(H1DOWN, "ROUND_ROBIN", [ep(f"{A}:8080")], **http_options("httpProtocolOptions")),
        cluster(H2COLD, "ROUND_ROBIN", [ep(f"{NGINX_H2C_COLD[0]}:{NGINX_H2C_COLD[1]}")], **http_options("clients")),
        cluster(HASHED, "MAGLEV", [ep(f"{a}:8080") for a in (A, B, C)]),
        # Two consecutive 5xx eject the one endpoint (Envoy's outlier detection).
        cluster(
            OD,
            "ROUND_ROBIN",
            [ep(f"{B}:8080")],
            outlier_detection={"consecutive_5xx": 2, "max_ejection_percent": 100, "interval": "60s"},
        ),
        cluster(
            GRPC, "LEAST_REQUEST", [ep(f"{a}:{GRPC_PORT}") for a in (A, B, C)], **http_options("http2ProtocolOptions")
        ),
        cluster(TCP, "ROUND_ROBIN", [ep(f"{TCP_ECHO[0]}:{TCP_ECHO[1]}")]),
    ],
    "redirect": {
        "services": [
            # What a connection to the VIP that is not HTTP gets (istiod's TCP
            # route for the service port).
            {"address": VIP, "port": 80, "cluster": TCP},
            {"address": GRPC_VIP, "port": GRPC_PORT, "cluster": GRPC},
            {"address": TCP_VIP, "port": 80, "cluster": TCP},
        ],
        "include_ip_ranges": ["*"],
    },
    # connect_timeout 2.5 s: above the 1 s SYN retransmission. hello_timeout:
    # how long a client that sends nothing waits before it is served as TCP.
    "options": {"listen": ["127.0.0.1:15001"], "connect_timeout": 2.5, "hello_timeout": 1.0},
    "http_routes": [[80, ROUTES_80], [GRPC_PORT, ROUTES_GRPC]],
    "http_tcp": [f"{TCP_VIP}:80"],
}


class Mesh:
    def __init__(self, lb: Lab, relay: subprocess.Popen[str]) -> None:
        self.lb = lb
        self.relay = relay

    def stats(self) -> dict[str, Any]:
        assert self.relay.stdin is not None and self.relay.stdout is not None
        self.relay.stdin.write("stats\n")
        self.relay.stdin.flush()
        result: dict[str, Any] = json.loads(self.relay.stdout.readline())
        return result

    def http(self) -> dict[str, int]:
        h: dict[str, int] = self.stats()["http"]
        return h

    def curl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """curl as the app, in the vm namespace (never through an environment proxy)."""
        cmd = self.lb.cmd(self.lb.vm, *CURL, *args, uid=APP_UID)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.lb.env, check=False)

    def many(self, *args: str) -> list[Reply]:
        """Every response of one curl run (URLs and globs in ``args``), in order; one
        connection per host, kept alive, as curl does."""
        return self.concurrently([list(args)])[0]

    def concurrently(self, runs: Sequence[Sequence[str]]) -> list[list[Reply]]:
        """curl runs (as ``many``) at the same time."""
        return curl_runs(self.lb, runs)

    def head_and_body(self, *args: str) -> tuple[int, dict[str, str], str]:
        """One request: its status, response headers (lowercased names) and body."""
        p = self.curl("-i", *args)
        assert p.returncode == 0, p.stderr
        # Text mode: the head's CRLFs read as newlines.
        head, _, body = p.stdout.partition("\n\n")
        lines = head.split("\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        return int(lines[0].split()[1]), headers, body

    def nghttp(self, authority: str, *args: str) -> list[str]:
        """nghttp (HTTP/2 with prior knowledge; every URI's request multiplexed at once on
        one connection) as the app: the response bodies' lines."""
        cmd = self.lb.cmd(self.lb.vm, "nghttp", "-H", f":authority: {authority}", *args, uid=APP_UID)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=self.lb.env, check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout.splitlines()

    def raw(self, host: str, port: int, data: bytes) -> dict[str, Any]:
        return self.lb.http_client("raw", host, str(port), input=data.hex())

    def seen_by(self, addr: str, clear: bool = False) -> list[dict[str, Any]]:
        """What the http backend at ``addr`` received (asked from the net namespace),
        then forgotten if ``clear``."""
        url = f"http://{addr}/_log" + ("?clear=1" if clear else "")
        cmd = ["ip", "netns", "exec", self.lb.net, *CURL, url]
        seen: list[dict[str, Any]] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        return seen


def delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
    return after[key] - before[key]


def nginx_h2c(lb: Lab, tmp: Path) -> None:
    """nginx in the net namespace: h2c with prior knowledge on NGINX_H2C, answering
    with the protocol, host, URI, x-request-id and its connection's serial number."""
    d = tmp / "nginx"
    d.mkdir()
    body = "$server_protocol $host $request_uri $http_x_request_id $connection\\n"
    conf = f"""
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
master_process off;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  default_type text/plain;
  {" ".join(f"{k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))}
  server {{ listen {NGINX_H2C[0]}:{NGINX_H2C[1]} http2; location / {{ return 200 "{body}"; }} }}
  server {{ listen {NGINX_H2C_COLD[0]}:{NGINX_H2C_COLD[1]} http2; location / {{ return 200 "{body}"; }} }}
}}
"""
    (d / "nginx.conf").write_text(conf)
    exe = shutil.which("nginx")
    assert exe is not None
    out = (d / "out").open("w")
    cmd = ["ip", "netns", "exec", lb.net, exe, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]
    p = subprocess.Popen(cmd, stdout=out, stderr=out, text=True)
    out.close()
    lb.procs.append(p)

    def up() -> bool:
        with inside(lb.net), socket.socket() as s:
            return s.connect_ex(NGINX_H2C) == 0

    wait_until(up, timeout=10)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    require_root_tools("nft", "curl", "nginx", "nghttp")
    require_module("grpc", "the gRPC client and servers")
    with lab() as lb:
        lb.http_backends(lb.net, *BACKENDS)
        lb.serve(lb.net, "tcpecho", [f"tcp:{TCP_ECHO[0]}:{TCP_ECHO[1]}"])
        lb.serve(lb.net, "tcp80", [f"tcp:{TCP80[0]}:{TCP80[1]}"])
        nginx_h2c(lb, tmp_path_factory.mktemp("h2c"))
        lb.run(lb.net, "nft", "-f", "-", input=SLOW_FIRST_SYN)
        lb.capture("nftables", proxy_uid=PROXY_UID, name="pmhttp", ipv6=False)
        path = Path("/tmp") / f"{lb.vm}-relay.json"
        path.write_text(json.dumps(CONFIG))
        relay = lb.start(lb.vm, "relay", str(path), uid=PROXY_UID)
        assert json.loads(relay.first_line)["addresses"] == ["127.0.0.1:15001"]  # type: ignore[attr-defined]
        yield Mesh(lb, relay)


# --- 1. weighted subsets -----------------------------------------------------------


def test_weighted_subsets_split_each_request_of_one_keepalive_connection(mesh: Mesh) -> None:
    before = mesh.http()
    n = 500
    replies = mesh.many(f"http://{VIP}/split/[1-{n}]")
    after = mesh.http()
    assert len(replies) == n and {r.code for r in replies} == {200}
    # curl connected once: every request rode one keep-alive connection.
    assert sum(r.connects for r in replies) == 1
    assert delta(after, before, "http_connections") == 1
    assert delta(after, before, "http_requests") == n
    seen = [r.json() for r in replies]
    assert {s["headers"]["x-route"] for s in seen} == {"split"}
    tags = Counter(s["tag"] for s in seen)
    assert set(tags) == {"v1", "v2"}, tags
    # Pearson's chi-square against 90/10 (one degree of freedom). Split per
    # connection, the one connection would have given 500/0 (chi-square 55.6).
    chi2 = chi_square(tags, {"v1": 0.9 * n, "v2": 0.1 * n})
    assert chi2 < CHI2_1DOF_BOUND, (tags, chi2)
    # Upstream connections are kept alive and reused across requests.
    assert delta(after, before, "http_pool_reused") >= n - 10


# --- 2. matches --------------------------------------------------------------------


def test_header_canary_sends_only_that_user_to_v2(mesh: Mesh) -> None:
    replies = mesh.many("-H", "end-user: jason", f"http://{VIP}/productpage/[1-40]")
    assert {(r.code, r.json()["tag"], r.json()["headers"]["x-route"]) for r in replies} == {(200, "v2", "canary")}
    # Another user, or the same name in another case, is not the canary.
    for user in ("jasonx", "Jason"):
        r = mesh.many("-H", f"end-user: {user}", f"http://{VIP}/productpage")[0]
        assert r.json()["headers"]["x-route"] == "split"


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/reviews/1", "reviews"),
        ("/reviewsx", "split"),
        ("/api/v2/items/17", "regex"),
        ("/api/v2/items/17/x", "split"),  # safe_regex matches the whole path
        ("/api/vX/items/17", "split"),
        ("/api/v10/items/3?x=1", "regex"),  # the query is not part of the path
        ("/sep", "sep"),
        ("/sep/x", "sep"),
        ("/sepx", "split"),
        ("/q?version=beta", "query"),
        ("/q?a=1&version=beta", "query"),
        ("/q?version=alpha", "split"),
        ("/q", "split"),
    ],
)
def test_path_regex_and_query_matches_pick_the_route(mesh: Mesh, path: str, want: str) -> None:
    r = mesh.many(f"http://{VIP}{path}")[0]
    assert r.code == 200
    seen = r.json()
    assert seen["headers"]["x-route"] == want
    assert seen["tag"] == "v3" if want != "split" else seen["tag"] in ("v1", "v2")
    assert seen["path"] == path


def test_runtime_fraction_route_takes_its_share(mesh: Mesh) -> None:
    n = 400
    replies = mesh.many(f"http://{VIP}/fraction/[1-{n}]")
    routes = Counter(r.json()["headers"]["x-route"] for r in replies)
    assert set(routes) == {"fraction", "split"}, routes
    assert within_binomial(routes["fraction"], n, 0.3), routes
    assert {r.json()["tag"] for r in replies if r.json()["headers"]["x-route"] == "fraction"} == {"v3"}


def test_hash_policy_keeps_a_user_on_the_endpoint_the_table_picks(mesh: Mesh) -> None:
    from pymesh.lbtable import LbTable

    table = LbTable(seed=CONFIG["seed"])
    table.load(CONFIG["clusters"])
    tag_of = {f"{A}:8080": "v1", f"{B}:8080": "v2", f"{C}:8080": "v3"}
    users = [f"user{i}" for i in range(12)]
    runs = mesh.concurrently([["-H", f"x-user: {u}", f"http://{VIP}/hash/[1-5]"] for u in users])
    got = {u: Counter(r.json()["tag"] for r in run) for u, run in zip(users, runs, strict=True)}
    # Each user's five requests on one endpoint: the one LbTable.pick gives for
    # the header's value as the key (Maglev, the same seed).
    assert got == {u: Counter({tag_of[str(table.pick(HASHED, u))]: 5}) for u in users}
    assert len({next(iter(c)) for c in got.values()}) > 1  # and users are spread


def test_virtual_hosts_by_host_exact_then_suffix_then_prefix_then_any(mesh: Mesh) -> None:
    def body(host: str, url: str = f"http://{VIP}/") -> str:
        return mesh.many("-H", f"Host: {host}", url)[0].body

    assert json.loads(body("svc"))["headers"]["x-vhost"] == "svc"
    assert json.loads(body("SVC.default.svc.cluster.local:80"))["headers"]["x-vhost"] == "svc"  # case, port ignored
    assert body("a.example.com") == "suffix"
    assert body("svc.example.com") == "suffix"  # suffix wildcards before prefix ones
    assert body("svc.other") == "prefix"
    # A wildcard stands for at least one character: "*" (the original destination).
    assert json.loads(body("example.com", f"http://{D}/"))["tag"] == "direct"
    # "*": PassthroughCluster, the connection's original destination.
    seen = json.loads(body("elsewhere", f"http://{D}/pt"))
    assert seen["tag"] == "direct" and seen["path"] == "/pt"
    assert seen["headers"]["x-config"] == "80" and "x-vhost" not in seen["headers"]


# --- 3. faults ---------------------------------------------------------------------


def test_fault_abort_answers_503_at_the_configured_rate(mesh: Mesh) -> None:
    before = mesh.http()
    n = 400
    replies = mesh.many(f"http://{VIP}/fault/abort/[1-{n}]")
    after = mesh.http()
    aborted = [r for r in replies if r.code == 503]
    assert {r.body for r in aborted} == {"fault filter abort"}
    assert {r.json()["tag"] for r in replies if r.code != 503} == {"v1"}
    assert len(aborted) + sum(r.code == 200 for r in replies) == n
    assert within_binomial(len(aborted), n, 0.5), len(aborted)
    assert delta(after, before, "http_fault_aborts") == len(aborted)


def test_fault_delay_holds_requests_at_the_configured_rate(mesh: Mesh) -> None:
    before = mesh.http()
    n = 200
    # Ten clients at once, twenty requests each on its own keep-alive connection.
    runs = mesh.concurrently([[f"http://{VIP}/fault/delay/{k}/[1-20]"] for k in range(10)])
    replies = [r for run in runs for r in run]
    after = mesh.http()
    assert {r.code for r in replies} == {200}
    delayed = delta(after, before, "http_fault_delays")
    assert within_binomial(delayed, n, 0.5), delayed
    # The delayed ones, and only they, took at least the 200 ms delay.
    times = sorted(r.seconds for r in replies)
    slow = [t for t in times if t >= 0.2]
    assert len(slow) == delayed, (delayed, times)
    assert times[n - delayed - 1] < 0.2 <= times[n - delayed]


# --- 4. retries --------------------------------------------------------------------


def test_resets_are_retried_on_another_endpoint(mesh: Mesh) -> None:
    before = mesh.http()
    n = 30
    replies = mesh.many(f"http://{VIP}/retry/[1-{n}]")
    after = mesh.http()
    # Every request succeeded: those that met the resetting endpoint were
    # retried on the healthy one.
    assert [(r.code, r.json()["tag"]) for r in replies] == [(200, "v1")] * n
    retries = delta(after, before, "http_retries")
    assert retries >= 1
    assert retries == delta(after, before, "http_upstream_resets")


def test_without_a_retry_policy_resets_are_503s(mesh: Mesh) -> None:
    before = mesh.http()
    n = 30
    replies = mesh.many(f"http://{VIP}/noretry/[1-{n}]")
    after = mesh.http()
    failed = [r for r in replies if r.code == 503]
    assert 0 < len(failed) < n
    assert all(r.body.startswith("upstream connect error or disconnect/reset before headers") for r in failed)
    assert {r.json()["tag"] for r in replies if r.code == 200} == {"v1"}
    assert delta(after, before, "http_retries") == 0
    assert delta(after, before, "http_upstream_resets") == len(failed)


def test_request_bodies_are_replayed_on_retries(mesh: Mesh) -> None:
    body = "b" * 10_000  # curl sends it after "Expect: 100-continue"
    replies = mesh.many("--data-binary", body, f"http://{VIP}/retry/post/[1-8]")
    assert [(r.code, r.json()["tag"], r.json()["method"], r.json()["body_len"]) for r in replies] == [
        (200, "v1", "POST", len(body))
    ] * 8


def test_retries_stop_after_num_retries(mesh: Mesh) -> None:
    before = mesh.http()
    # Every endpoint fails this one (503 or a reset): one try and two retries.
    r = mesh.many(f"http://{VIP}/retry/status?code=503")[0]
    assert r.code == 503
    assert delta(mesh.http(), before, "http_retries") == 2


# --- 5. timeouts -------------------------------------------------------------------


def test_route_timeout_answers_504_in_time(mesh: Mesh) -> None:
    before = mesh.http()
    r = mesh.many(f"http://{VIP}/timeout/sleep?ms=2000")[0]
    assert (r.code, r.body) == (504, "upstream request timeout")
    assert 0.29 <= r.seconds < 0.9, r.seconds
    assert delta(mesh.http(), before, "http_timeouts") == 1
    # Below the timeout the answer comes through.
    r = mesh.many(f"http://{VIP}/timeout/sleep?ms=50")[0]
    assert r.code == 200 and r.json()["tag"] == "v1"


def test_per_try_timeout_moves_to_the_fast_endpoint(mesh: Mesh) -> None:
    before = mesh.http()
    n = 6
    replies = mesh.many(f"http://{VIP}/pertry/[1-{n}]")
    after = mesh.http()
    assert [(r.code, r.json()["tag"]) for r in replies] == [(200, "v1")] * n
    # Round robin sends every other first attempt to the slow endpoint (2 s):
    # cut at 250 ms and retried on the fast one, far below the slow answer.
    tried_slow = [r.seconds for r in replies if r.seconds >= 0.25]
    assert tried_slow and max(tried_slow) < 1.0, [r.seconds for r in replies]
    assert delta(after, before, "http_per_try_timeouts") == len(tried_slow)
    assert delta(after, before, "http_retries") == len(tried_slow)


# --- 6. gRPC -----------------------------------------------------------------------


def test_grpc_one_channel_is_balanced_per_rpc_and_streams_and_faults_work(mesh: Mesh) -> None:
    before = mesh.http()
    n = 300
    got = mesh.lb.http_client("grpc", f"{GRPC_VIP}:{GRPC_PORT}", str(n))
    after = mesh.http()
    counts = got["counts"]
    assert set(counts) == {"g1", "g2", "g3"} and sum(counts.values()) == n, counts
    # One HTTP/2 connection, yet every endpoint serves about a third.
    assert all(0.20 * n <= c <= 0.46 * n for c in counts.values()), counts
    assert delta(after, before, "http_connections_h2") == 1
    # The bidirectional stream went through, to one endpoint.
    stream = got["stream"]
    assert len(stream) == 3 and len({s.split()[0] for s in stream}) == 1
    assert [s.split()[1] for s in stream] == ["a", "b", "c"]
    # The route's gRPC abort, as the client sees it.
    assert got["abort"] == {"code": "RESOURCE_EXHAUSTED", "details": "fault filter abort"}
    assert delta(after, before, "http_fault_aborts") == 1
    # Upstream HTTP/2 connections are shared by the RPCs.
    assert delta(after, before, "http_pool_reused") >= n - 3


# --- 7. mirroring ------------------------------------------------------------------


def test_mirrored_requests_reach_the_shadow_and_the_client_gets_the_primary(mesh: Mesh) -> None:
    mirror = f"{C}:8090"
    mesh.seen_by(mirror, clear=True)
    before = mesh.http()
    n = 10
    replies = mesh.many("-H", "Host: svc", f"http://{VIP}/mirror/[1-{n}]")
    assert [(r.code, r.json()["tag"], r.json()["host"]) for r in replies] == [(200, "v1", "svc")] * n
    wait_until(lambda: len(mesh.seen_by(mirror)) >= n, timeout=5)
    seen = mesh.seen_by(mirror)
    assert len(seen) == n
    assert {s["host"] for s in seen} == {"svc-shadow"}
    assert sorted(s["path"] for s in seen) == sorted(f"/mirror/{i}" for i in range(1, n + 1))
    assert delta(mesh.http(), before, "http_mirrored") == n


def test_mirrors_get_the_request_body(mesh: Mesh) -> None:
    mirror = f"{C}:8090"
    mesh.seen_by(mirror, clear=True)
    before = mesh.http()
    body = "m" * 5000
    r = mesh.many("-H", "Host: svc", "--data-binary", body, f"http://{VIP}/mirror/post")[0]
    assert (r.code, r.json()["tag"], r.json()["body_len"]) == (200, "v1", len(body))
    # The copy is sent once the client's body is complete (here at once).
    time.sleep(1.0)
    seen = [(s["method"], s["path"], s["host"], s["body_len"]) for s in mesh.seen_by(mirror)]
    after = mesh.http()
    got = {"seen": seen, "mirrored": delta(after, before, "http_mirrored")}
    assert got == {"seen": [("POST", "/mirror/post", "svc-shadow", len(body))], "mirrored": 1}


# --- 8. redirects, direct responses, rewrites, headers -----------------------------


def test_redirect_and_direct_response(mesh: Mesh) -> None:
    code, headers, body = mesh.head_and_body(f"http://{VIP}/old/page?x=1")
    assert code == 302
    assert headers["location"] == "http://new.example.com/new/page?x=1"
    assert headers["x-mesh"] == "pymesh"  # the configuration's response headers, on local replies too
    code, headers, body = mesh.head_and_body(f"http://{VIP}/teapot")
    assert (code, body) == (418, "short and stout\n")
    # Only the exact path.
    assert mesh.many(f"http://{VIP}/teapot/x")[0].json()["headers"]["x-route"] == "split"


def test_rewrites_and_header_mutations_reach_the_backend(mesh: Mesh) -> None:
    code, headers, body = mesh.head_and_body(
        "-H", "x-secret: s3cr3t", "-H", "x-keep: yes", f"http://{VIP}/rewrite/a/b?q=1"
    )
    assert code == 200
    seen = json.loads(body)
    assert seen["tag"] == "v1"
    assert seen["path"] == "/v2api/a/b?q=1"
    assert seen["host"] == "backend.internal"
    h = seen["headers"]
    assert "x-secret" not in h and h["x-keep"] == "yes"
    assert (h["x-route"], h["x-vhost"], h["x-config"]) == ("rewrite", "svc", "80")
    assert h["x-forwarded-proto"] == "http"
    # Response headers: the route's and the configuration's, and the backend's own.
    assert (headers["x-resp"], headers["x-mesh"], headers["x-backend"]) == ("rewritten", "pymesh", "v1")


def test_regex_rewrite_with_groups(mesh: Mesh) -> None:
    seen = mesh.many(f"http://{VIP}/service/foo/v1/api")[0].json()
    assert seen["path"] == "/v1/api/instance/foo"


def test_regex_rewrite_replaces_every_match_as_envoy_does(mesh: Mesh) -> None:
    # route_components.proto, RouteAction.regex_rewrite: the pattern "one" with
    # the substitution "two" transforms /xxx/one/yyy/one/zzz into /xxx/two/yyy/two/zzz.
    seen = mesh.many(f"http://{VIP}/rx/one/yyy/one/zzz")[0].json()
    assert seen["path"] == "/rx/two/yyy/two/zzz"


def test_request_id_is_added_or_kept(mesh: Mesh) -> None:
    ids = [r.json()["headers"].get("x-request-id", "") for r in mesh.many(f"http://{VIP}/id/[1-5]")]
    uuid4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    assert all(uuid4.match(i) for i in ids), ids
    assert len(set(ids)) == 5
    seen = mesh.many("-H", "x-request-id: my-own-id-42", f"http://{VIP}/id")[0].json()
    assert seen["headers"]["x-request-id"] == "my-own-id-42"


# --- 9. robustness -----------------------------------------------------------------

TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"


def test_non_http_bytes_fall_back_to_tcp(mesh: Mesh) -> None:
    before = mesh.stats()
    # To the service VIP: its TCP cluster (an echo server that names itself).
    r = mesh.raw(VIP, 80, TLS_HELLO)
    assert r["reply"].startswith(f"tcpecho {TCP_ECHO[0]}:{TCP_ECHO[1]} -\n"), r
    assert r["reply"].endswith(TLS_HELLO.decode("latin-1")), r
    # To an address no service has, on the same port: where it was going.
    r = mesh.raw(TCP80[0], TCP80[1], b"SSH-2.0-OpenSSH_9.2\r\n")
    assert r["reply"] == f"tcp80 {TCP80[0]}:{TCP80[1]} -\nSSH-2.0-OpenSSH_9.2\r\n", r
    after = mesh.stats()
    assert delta(after["http"], before["http"], "http_not_http") == 2
    assert delta(after["http"], before["http"], "http_connections") == 0
    assert delta(after["stats"], before["stats"], "cluster") == 1
    assert delta(after["stats"], before["stats"], "passthrough") == 1


def test_an_upgrade_request_keeps_its_connection_on_the_tcp_path(mesh: Mesh) -> None:
    """A WebSocket handshake (an HTTP/1.1 head with Upgrade) is not proxied per request:
    its connection goes on as TCP to the VIP's cluster, bytes unchanged, as before the HTTP path."""
    before = mesh.http()
    ws = b"GET /chat HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    r = mesh.raw(VIP, 80, ws)
    assert r["reply"].startswith(f"tcpecho {TCP_ECHO[0]}:{TCP_ECHO[1]} -\n"), r
    assert r["reply"].endswith(ws.decode()), r  # spliced as sent: no x-request-id added
    after = mesh.http()
    assert delta(after, before, "http_upgrades_as_tcp") == 1
    assert delta(after, before, "http_connections") == 0


def test_a_client_waiting_for_a_banner_is_served_as_tcp_after_the_detection_timeout(mesh: Mesh) -> None:
    before = mesh.http()
    r = mesh.raw(VIP, 80, b"")  # a server-first protocol: the client waits for a banner
    assert r["reply"].startswith("tcpecho "), r
    assert 1.0 <= r["first"] < 2.0, r  # after hello_timeout
    assert delta(mesh.http(), before, "http_not_http") == 1


MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: svc\r\nno colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcde",
    b"GET / HTTP/1.1\r\nHost: svc\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\n\x00\x01\x02\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x07\x00\x00\x00\x00\x00garbage",
]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_http_gets_an_error_or_a_close_and_the_proxy_still_serves(mesh: Mesh, data: bytes) -> None:
    before = mesh.stats()
    r = mesh.raw(VIP, 80, data)
    assert "error" not in r, r
    reply = r["reply"]
    # An HTTP/1 error status and no backend's answer, or the connection
    # ended (for HTTP/2, a GOAWAY frame first).
    if data.startswith(b"PRI"):
        assert r["eof"], r
    elif reply:
        assert re.match(r"HTTP/1\.1 4\d\d ", reply), reply
        assert '"tag"' not in reply
    else:
        assert r["eof"], r
    after = mesh.stats()
    assert after["stats"]["accepted"] > before["stats"]["accepted"]  # the same process still answers
    assert mesh.many(f"http://{VIP}/after")[0].code == 200


def test_request_headers_over_60_kib_are_refused_with_431(mesh: Mesh) -> None:
    # Envoy's max_request_headers_kb (60 KiB by default; the proxy's HTTP/2
    # side sets it as max_header_list_size): a larger head is answered 431 by
    # the proxy and never forwarded. 62,000 bytes: above 60 KiB, below the
    # backend's own 64 KiB line limit, so a forwarded request would be served.
    for addr in (A, B):
        mesh.seen_by(f"{addr}:8080", clear=True)
    r = mesh.raw(VIP, 80, b"GET /big-header HTTP/1.1\r\nHost: svc\r\nX-Big: " + b"a" * 62_000 + b"\r\n\r\n")
    forwarded = [s["tag"] for addr in (A, B) for s in mesh.seen_by(f"{addr}:8080") if s["path"] == "/big-header"]
    got = {"status": r["reply"].split("\r\n", 1)[0], "forwarded": forwarded}
    assert got == {"status": "HTTP/1.1 431 Request Header Fields Too Large", "forwarded": []}


def test_destinations_listed_as_tcp_stay_tcp_on_an_http_port(mesh: Mesh) -> None:
    before = mesh.http()
    r = mesh.raw(TCP_VIP, 80, b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    assert r["reply"].startswith(f"tcpecho {TCP_ECHO[0]}:{TCP_ECHO[1]} -\nGET / HTTP/1.1"), r
    after = mesh.http()
    assert delta(after, before, "http_connections") == 0 and delta(after, before, "http_not_http") == 0


def test_pipelined_requests_are_answered_in_order_and_connection_close_is_honoured(mesh: Mesh) -> None:
    reqs = b"".join(
        f"GET /pipe/{i} HTTP/1.1\r\nHost: svc\r\n{'Connection: close' if i == 3 else 'X-N: 1'}\r\n\r\n".encode()
        for i in (1, 2, 3)
    )
    r = mesh.raw(VIP, 80, reqs)
    assert r["eof"], r
    assert r["reply"].count("HTTP/1.1 200 OK") == 3, r
    paths = re.findall(r'"path": "(/pipe/\d)"', r["reply"])
    assert paths == ["/pipe/1", "/pipe/2", "/pipe/3"]


def test_a_client_sending_a_malformed_body_does_not_eject_the_endpoint(mesh: Mesh) -> None:
    # The client's chunked body is malformed: the client's fault (Envoy answers
    # 400 to a downstream codec error), not the endpoint's, which must not count
    # as a 5xx for outlier detection (two in a row eject it here).
    bad = b"POST /od/x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n0\r\n\r\n"
    assert mesh.many(f"http://{VIP}/od/ok")[0].json()["tag"] == "v2"
    before = mesh.stats()
    replies = [mesh.raw(VIP, 80, bad)["reply"] for _ in range(2)]
    after = mesh.stats()
    then = mesh.many(f"http://{VIP}/od/ok")[0]
    got = {
        "replies": [r.split("\r\n", 1)[0] for r in replies],
        "upstream_resets": delta(after["http"], before["http"], "http_upstream_resets"),
        "ejected": [e["ejected"] for e in after["endpoints"][OD]],
        "then": (then.code, then.body[:40] if then.code != 200 else "ok"),
    }
    want = {"replies": ["HTTP/1.1 400 Bad Request"] * 2, "upstream_resets": 0, "ejected": [False], "then": (200, "ok")}
    assert got == want


# --- 10. HTTP/2 to an h2c backend --------------------------------------------------


def test_http2_prior_knowledge_reaches_an_h2c_backend_over_h2(mesh: Mesh) -> None:
    before = mesh.http()
    # curl 7.88.1 fails every h2c stream after the first on a connection ("Error
    # in the HTTP2 framing layer", straight to nginx too): one request per run.
    r = mesh.many("--http2-prior-knowledge", "-H", "Host: h2svc", "-H", "x-request-id: h2-id", f"http://{VIP}/h2/one")[
        0
    ]
    assert r.code == 200, r
    proto, host, uri, rid, _ = r.body.split()
    assert (proto, host, uri, rid) == ("HTTP/2.0", "h2svc", "/h2/one", "h2-id")
    after = mesh.http()
    assert delta(after, before, "http_connections_h2") == 1 and delta(after, before, "http_requests") == 1


def test_the_clusters_protocol_options_pick_the_upstream_protocol(mesh: Mesh) -> None:
    # HTTP/1.1 from the app, HTTP/2 to an h2c-only backend: the cluster says http2.
    (r,) = mesh.many("-H", "Host: h2up", "-H", "x-request-id: up-id", f"http://{VIP}/h2/up")
    assert r.code == 200, r
    proto, host, uri, rid, _ = r.body.split()
    assert (proto, host, uri, rid) == ("HTTP/2.0", "h2up", "/h2/up", "up-id")
    # HTTP/2 from the app, HTTP/1.1 to an HTTP/1.1-only backend: the cluster says http1.
    (r,) = mesh.many("--http2-prior-knowledge", "-H", "Host: h1down", f"http://{VIP}/down")
    assert r.code == 200, r
    seen = json.loads(r.body)
    assert (seen["tag"], seen["path"], seen["host"]) == ("v1", "/down", "h1down")
    # HTTP/2 from the app to a cluster that says nothing (istiod's CDS for an http port):
    # HTTP/1.1 as Envoy's default, so the HTTP/1.1-only backend can read it.
    (r,) = mesh.many("--http2-prior-knowledge", f"http://{VIP}/timeout/h2")
    assert r.code == 200, r
    assert json.loads(r.body)["tag"] == "v1"


def test_http2_streams_are_multiplexed_on_one_upstream_connection(mesh: Mesh) -> None:
    (warm,) = mesh.nghttp("h2svc", f"http://{VIP}/h2/warm")
    before = mesh.http()
    n = 20
    lines = mesh.nghttp("h2svc", "-m", str(n), f"http://{VIP}/h2/burst")
    after = mesh.http()
    rows = [line.split() for line in lines]
    assert len(rows) == n and {(r[0], r[1], r[2]) for r in rows} == {("HTTP/2.0", "h2svc", "/h2/burst")}
    # Every stream on the pooled upstream connection the first request opened.
    assert {r[4] for r in rows} == {warm.split()[4]}
    assert len({r[3] for r in rows}) == n  # a request id of its own each
    assert delta(after, before, "http_connections_h2") == 1
    assert delta(after, before, "http_pool_reused") == n


def test_a_burst_of_streams_on_a_cold_pool_opens_one_upstream_connection(mesh: Mesh) -> None:
    # Envoy's HTTP/2 pool attaches the streams that arrive while its connection is
    # being set up to that connection (up to max_concurrent_streams), never one
    # connection per stream. The first connect to this endpoint takes a second
    # (SLOW_FIRST_SYN), so the whole burst arrives while it is under way.
    before = mesh.http()
    n = 20
    lines = mesh.nghttp("h2cold", "-m", str(n), f"http://{VIP}/h2/cold")
    after = mesh.http()
    rows = [line.split() for line in lines]
    assert len(rows) == n and {r[0] for r in rows} == {"HTTP/2.0"}
    got = {"upstream_connections": len({r[4] for r in rows}), "pool_reused": delta(after, before, "http_pool_reused")}
    assert got == {"upstream_connections": 1, "pool_reused": n - 1}
    assert delta(after, before, "http_connect_failures") == 0  # a slow connect, not a failed one


# --- route updates on a live proxy -------------------------------------------------

ROUTE_RULES = """
table ip pmhttproutes {
  chain output {
    type nat hook output priority -100; policy accept;
    ip daddr 127.1.0.0/16 tcp dport 80 redirect to :15001
  }
}
"""


def answering(text: str) -> str:
    return json.dumps(
        {"name": "80", "virtualHosts": [{"name": "any", "domains": ["*"], "routes": [direct("r", text)]}]}
    )


def test_a_refused_route_update_leaves_the_serving_routes_in_place() -> None:
    import http.client

    from pymesh import ConfigError
    from pymesh.lbtable import LbTable, RedirectTable
    from pymesh.relay import OutboundProxy

    why = "the route update test captures in a network namespace"
    with nft_netns("pmrt", ROUTE_RULES, why) as ns, inside(ns):
        redirect = RedirectTable.from_dict({"services": [{"address": "127.1.0.1", "port": 80, "cluster": "c"}]})
        proxy = OutboundProxy(redirect, LbTable(seed=1), listen=["127.0.0.1:15001"], connect_timeout=2.0)
        proxy.set_http_routes([(80, answering("first"))])
        proxy.start()
        conns: list[http.client.HTTPConnection] = []

        def get(conn: http.client.HTTPConnection | None = None) -> str:
            if conn is None:
                conn = http.client.HTTPConnection("127.1.0.1", 80, timeout=5)
                conns.append(conn)
            conn.request("GET", "/", headers={"Host": "svc"})
            return conn.getresponse().read().decode()

        try:
            assert get() == "first"
            bad = json.loads(answering("x"))
            bad["virtualHosts"][0]["routes"][0]["match"] = {"safeRegex": {"regex": "("}}
            with pytest.raises(ConfigError, match="safe_regex"):
                proxy.set_http_routes([(80, json.dumps(bad))])
            assert get() == "first"
            kept = conns[-1]
            proxy.set_http_routes([(80, answering("second"))])
            assert get() == "second"
            # A connection keeps the routes it was accepted with.
            assert get(kept) == "first"
            assert proxy.http_stats()["http_requests"] == 4
        finally:
            for c in conns:
                c.close()
            proxy.stop()

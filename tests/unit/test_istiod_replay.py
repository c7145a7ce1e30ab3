"""The VM agent against istiod 1.29.0's real xDS responses, replayed.

tests/fixtures/istiod/<scenario>/sidecar/*.pb are the DiscoveryResponses a
real pilot-discovery sent a VM sidecar (scripts/istiod/record.py recorded
them; docs/istiod-interop.md says how). A small ADS server here answers the
real agent's requests with them: every resource must be ACKed (istiod's
CDS carries TypedStruct, UpstreamTlsContext, HttpProtocolOptions, c-ares
configs; its LDS Istio-private filters such as istio.alpn), and the tables
must say what istiod meant: clusters and endpoints, the NDS names in the DNS
proxy, the VIPs routed to their clusters, the inbound mTLS mode, the
endpoint identities from the clusters' SANs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from pymesh.mesh import xds
from support.agent import ads_server, make_agent, resolve, write_vm_files
from support.ports import free_port
from support.wait import wait_until

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "istiod"
SHORT = {"cds": xds.CDS, "eds": xds.EDS, "lds": xds.LDS, "rds": xds.RDS, "nds": xds.NDS}
PRODUCT = "outbound|8080||product.default.svc.cluster.local"


class FixtureAds:
    """Answers each SotW request with the recorded response of its type (the
    first request of a type, and again when the subscribed names change), and
    records what the agent sends: ACKs and NACKs by type."""

    def __init__(self, scenario: str) -> None:
        self.responses: dict[str, Any] = {}
        for short, url in SHORT.items():
            f = FIXTURES / scenario / "sidecar" / f"{short}.pb"
            if f.exists():
                self.responses[url] = discovery_pb2.DiscoveryResponse.FromString(f.read_bytes())
        self.acks: dict[str, int] = {}
        self.nacks: list[tuple[str, str]] = []
        self.requests: queue.Queue[Any] = queue.Queue()
        self.server, self.port = ads_server(self._stream)

    def _stream(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        out: queue.Queue[Any] = queue.Queue()
        sent: dict[str, tuple[str, tuple[str, ...]]] = {}  # type -> (nonce, names answered)

        def read() -> None:
            n = 0
            try:
                for req in requests:
                    self.requests.put(req)
                    t = req.type_url
                    if t not in self.responses:
                        continue
                    if req.response_nonce and req.response_nonce == sent.get(t, ("", ()))[0]:
                        if req.HasField("error_detail"):
                            self.nacks.append((t, req.error_detail.message))
                        else:
                            self.acks[t] = self.acks.get(t, 0) + 1
                    names = tuple(sorted(req.resource_names))
                    if t in sent and sent[t][1] == names:
                        continue
                    n += 1
                    resp = discovery_pb2.DiscoveryResponse()
                    resp.CopyFrom(self.responses[t])
                    resp.nonce = f"n{n}"
                    sent[t] = (resp.nonce, names)
                    out.put(resp)
            except grpc.RpcError:
                pass
            out.put(None)

        threading.Thread(target=read, daemon=True).start()
        yield from iter(out.get, None)

    def stop(self) -> None:
        self.server.stop(0)


@pytest.fixture
def replay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FixtureAds, Any, int]]:
    ads = FixtureAds(request.param)
    vm = write_vm_files(tmp_path / "vm", ads.port, ip="10.0.0.5")
    (vm / "resolv.conf").write_text("search default.svc.cluster.local svc.cluster.local cluster.local\n")
    dns_port = free_port("127.0.0.1")
    agent = make_agent(vm, tmp_path / "state", dns_port, instance_ip="10.0.0.5")
    agent.start()
    try:
        yield ads, agent, dns_port
    finally:
        agent.stop()
        ads.stop()


def _split(ads: FixtureAds) -> bool:
    from envoy.config.route.v3 import route_pb2

    for a in ads.responses[xds.RDS].resources:
        rc = route_pb2.RouteConfiguration.FromString(a.value)
        if any(r.route.HasField("weighted_clusters") for vh in rc.virtual_hosts for r in vh.routes):
            return True
    return False


def _acked_all(ads: FixtureAds) -> bool:
    return all(ads.acks.get(t, 0) >= 1 for t in ads.responses)


SCENARIOS = [
    "plain",
    "autoalloc",
    "autoalloc-status",
    "subsets",
    "virtualservice",
    "strict",
    "multinetwork",
    "accesslog",
]


@pytest.mark.parametrize("replay", SCENARIOS, indirect=True)
def test_every_istiod_resource_is_acked_and_served(replay: tuple[FixtureAds, Any, int]) -> None:
    ads, agent, dns_port = replay
    wait_until(lambda: _acked_all(ads), timeout=15)
    assert ads.nacks == [], ads.nacks
    # Clusters: the EDS and STATIC ones in the lbtable; ORIGINAL_DST ones pass through.
    assert PRODUCT in agent.lb.clusters() and "BlackHoleCluster" in agent.lb.clusters()
    assert "PassthroughCluster" not in agent.lb.clusters()
    assert agent.endpoints()[PRODUCT], "product's endpoints from EDS"
    # DNS from istiod's name table.
    assert resolve(dns_port, "product.default.svc.cluster.local") == ("NOERROR", ["10.96.0.20"])
    # istiod's NDS gives ServiceEntry hosts no short names (registry External): a bare name is
    # not the table's to answer; clients reach it through their resolv.conf search list.
    assert resolve(dns_port, "product")[1] == []
    # The VIP routes to the service's cluster (from the listeners and routes, or NDS); with the
    # VirtualService's 90/10 split, one cluster per connection on the L4 path: the heaviest.
    want = PRODUCT.replace("||", "|v1|") if _split(ads) else PRODUCT
    assert agent.route("10.96.0.20", 8080).cluster == want
    assert agent.route("192.0.2.77", 5000).verdict == "passthrough"  # virtualOutbound: ALLOW_ANY


@pytest.mark.parametrize("replay", ["plain"], indirect=True)
def test_istiod_identities_reach_the_endpoints(replay: tuple[FixtureAds, Any, int]) -> None:
    """istiod puts a tlsMode: istio endpoint's identity in the cluster's
    UpstreamTlsContext SANs, not in EDS: the relay checks it all the same."""
    ads, agent, _ = replay
    wait_until(lambda: _acked_all(ads), timeout=15)
    eps = agent.endpoints()[PRODUCT]
    assert {e["address"] for e in eps} == {"10.0.0.11:8080", "10.0.0.12:8080"}
    for e in eps:
        assert e["tls_mode"] == "istio", e
        assert e["service_account"] == "spiffe://cluster.local/ns/default/sa/product", e
        assert e["workload"].startswith("product-v"), e  # istio.workload, kept for telemetry


@pytest.mark.parametrize("replay", ["autoalloc"], indirect=True)
def test_auto_allocated_addresses_route_through_istiods_listeners(replay: tuple[FixtureAds, Any, int]) -> None:
    ads, agent, dns_port = replay
    wait_until(lambda: _acked_all(ads), timeout=15)
    assert ads.nacks == []
    # A TCP port with an allocated address: its <VIP>_<port> listener names the cluster.
    assert agent.route("240.240.48.8", 9090).cluster == "outbound|9090||inventory.mesh.internal"
    # An HTTP port: the RDS virtual host lists the allocated address among its domains.
    assert agent.route("240.240.48.8", 8081).cluster == "outbound|8081||inventory.mesh.internal"
    assert resolve(dns_port, "inventory.mesh.internal") == ("NOERROR", ["240.240.48.8"])
    # The DNS ServiceEntry: a STRICT_DNS cluster, connected to by name.
    assert agent.logical_dns["outbound|443||api.payments.example.com"] == ("api.payments.example.com", 443)
    assert agent.route("240.240.210.144", 443).endpoint == "api.payments.example.com:443"


@pytest.mark.parametrize(("replay", "mode"), [("plain", "PERMISSIVE"), ("strict", "STRICT")], indirect=["replay"])
def test_the_inbound_mode_is_read_from_istiods_virtual_inbound(replay: tuple[FixtureAds, Any, int], mode: str) -> None:
    """istiod's virtualInbound has a loop-guard chain with no transport match
    (destination_port 15006 → BlackHoleCluster): STRICT must stay STRICT."""
    ads, agent, _ = replay
    wait_until(lambda: _acked_all(ads), timeout=15)
    assert agent.peer_authentication == mode


@pytest.mark.parametrize(
    ("replay", "want"), [("plain", None), ("accesslog", ("/var/log/istio/access.log", "JSON"))], indirect=["replay"]
)
def test_the_access_log_is_read_from_istiods_listeners(
    replay: tuple[FixtureAds, Any, int], want: tuple[str, str] | None
) -> None:
    """meshConfig accessLogFile / accessLogEncoding reach a sidecar as file loggers on its
    listeners' tcp_proxy filters (the accesslog scenario): the agent takes the path and the
    encoding, and its relays write there (make_agent runs no data path: the setting is read)."""
    ads, agent, _ = replay
    wait_until(lambda: _acked_all(ads), timeout=15)
    assert ads.nacks == []
    assert agent.mesh.access_log == want
    assert agent.data.pushed_access_log == want


def _rewrite_lds(ads: FixtureAds, change: Any) -> None:
    """The recorded LDS with ``change(listener)`` applied to each listener (a
    variation of istiod's real output the scenarios do not cover)."""
    from envoy.config.listener.v3 import listener_pb2

    resp = ads.responses[xds.LDS]
    for a in resp.resources:
        lis = listener_pb2.Listener.FromString(a.value)
        change(lis)
        a.Pack(lis)


def _tcp_proxy_to(lis: Any, old: str, new: str) -> None:
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    for chain in lis.filter_chains:
        for f in chain.filters:
            tp = tcp_proxy_pb2.TcpProxy()
            if f.typed_config.Unpack(tp) and tp.cluster == old:
                tp.cluster = new
                f.typed_config.Pack(tp)


def test_registry_only_blackholes_and_port_listeners_take_their_port(tmp_path: Path) -> None:
    """outboundTrafficPolicy REGISTRY_ONLY: virtualOutbound's catch-all goes to
    BlackHoleCluster; a TCP port without an address (istiod's 0.0.0.0_<port>
    tcp_proxy listener) takes every destination on that port."""
    ads = FixtureAds("autoalloc")

    def change(lis: Any) -> None:
        if lis.name == "virtualOutbound":
            _tcp_proxy_to(lis, "PassthroughCluster", "BlackHoleCluster")
        if lis.name == "240.240.48.8_9090":
            lis.name = "0.0.0.0_9090"
            lis.address.socket_address.address = "0.0.0.0"

    _rewrite_lds(ads, change)
    vm = write_vm_files(tmp_path / "vm", ads.port, ip="10.0.0.5")
    (vm / "resolv.conf").write_text("")
    agent = make_agent(vm, tmp_path / "state", free_port("127.0.0.1"), instance_ip="10.0.0.5")
    try:
        agent.start()
        wait_until(lambda: _acked_all(ads), timeout=15)
        assert ads.nacks == []
        assert agent.route("192.0.2.77", 5000) == agent.route("203.0.113.9", 80)
        r = agent.route("192.0.2.77", 5000)
        assert (r.verdict, r.cluster, r.endpoint) == ("cluster", "BlackHoleCluster", None)  # closed, never relayed
        assert agent.route("10.20.30.40", 9090).cluster == "outbound|9090||inventory.mesh.internal"
        assert agent.route("10.96.0.20", 8080).cluster == PRODUCT  # services still win
    finally:
        agent.stop()
        ads.stop()


@pytest.mark.parametrize("replay", ["virtualservice"], indirect=True)
def test_istiods_http_routes_reach_the_relays_http_path(replay: tuple[FixtureAds, Any, int]) -> None:
    """istiod's RDS for the VirtualService (header match to v2, 90/10 split, timeout,
    retries, fault) goes to the relay's HTTP path as istiod wrote it: the native route
    compiler accepted it (no NACK) and the JSON it got keeps every routing field."""
    import json

    from pymesh.relay import check_http_routes

    ads, agent, _ = replay
    wait_until(lambda: _acked_all(ads), timeout=15)
    assert ads.nacks == [], ads.nacks
    routes = dict(agent.tables.http_routes)
    assert 8080 in routes, routes.keys()
    check_http_routes([(8080, routes[8080])])
    rc = json.loads(routes[8080])
    vh = next(v for v in rc["virtualHosts"] if v["name"] == "product.default.svc.cluster.local:8080")
    assert "10.96.0.20" in vh["domains"]
    header, split = vh["routes"][0], vh["routes"][1]
    assert header["match"]["headers"][0]["name"] == "x-canary"
    assert header["route"]["cluster"] == PRODUCT.replace("||", "|v2|")
    weights = {c["name"]: c["weight"] for c in split["route"]["weightedClusters"]["clusters"]}
    assert weights == {PRODUCT.replace("||", "|v1|"): 90, PRODUCT.replace("||", "|v2|"): 10}
    assert split["route"]["timeout"] == "5s"
    retry = split["route"]["retryPolicy"]
    assert retry["numRetries"] == 3 and retry["perTryTimeout"] == "2s"
    assert {"5xx", "connect-failure", "unavailable"} <= set(retry["retryOn"].split(","))
    assert retry["retryHostPredicate"] == [{"name": "envoy.retry_host_predicates.previous_hosts"}]
    fault = split["typedPerFilterConfig"]["envoy.filters.http.fault"]
    assert fault["abort"]["httpStatus"] == 503 and fault["delay"]["fixedDelay"] == "0.100s"
    # The allow_any catch-all comes last: anything else on 8080 goes where it was going.
    assert rc["virtualHosts"][-1]["name"] == "allow_any"


@pytest.mark.parametrize("replay", ["plain"], indirect=True)
def test_istiods_inbound_clusters_name_the_protocol_to_the_app(replay: tuple[FixtureAds, Any, int]) -> None:
    """istiod's ``inbound|9080||`` (ORIGINAL_DST, no HttpProtocolOptions: the app's port is
    http) reaches the inbound relay's table, which the native reader takes as HTTP/1.1."""
    import json

    from pymesh.relay import start_inbound_passthrough

    ads, agent, _ = replay
    wait_until(lambda: _acked_all(ads), timeout=15)
    clusters = dict(agent.tables.inbound_clusters)
    assert list(clusters) == [9080], clusters
    assert json.loads(clusters[9080])["name"] == "inbound|9080||"
    inbound = start_inbound_passthrough(listen=["127.0.0.1:0"])
    try:
        inbound.set_inbound_clusters(list(agent.tables.inbound_clusters))
        with pytest.raises(Exception, match="inbound cluster for port 9080: not JSON"):
            inbound.set_inbound_clusters([(9080, "{")])
    finally:
        inbound.stop()

"""What istiod 1.29.0 answered a proxyless gRPC client (tests/fixtures/istiod/<scenario>/grpc,
recorded by scripts/istiod/record.py) and how to ask pymesh's control plane the same, in
gRPC's own order; shared by the parity tests (tests/unit/test_istiod_grpc_parity.py,
tests/unit/test_controlplane_networks.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2, text_format

from pymesh.mesh.xds import CDS, EDS, LDS, RDS
from support.cp import AdsStream
from support.paths import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "istiod"
SCENARIOS = ROOT / "scripts" / "istiod" / "scenarios"
LISTENER = "product.default.svc.cluster.local:8080"
CLASSES = {
    LDS: listener_pb2.Listener,
    RDS: route_pb2.RouteConfiguration,
    CDS: cluster_pb2.Cluster,
    EDS: endpoint_pb2.ClusterLoadAssignment,
}


def _unpack(resp: Any) -> list[Any]:
    out = []
    for a in resp.resources:
        m = CLASSES[resp.type_url]()
        assert a.Unpack(m), f"{a.type_url} is not {resp.type_url}"
        out.append(m)
    return out


def _hcm(lis: Any) -> Any:
    h = hcm_pb2.HttpConnectionManager()
    assert lis.api_listener.api_listener.Unpack(h)
    return h


def _route_clusters(routes: list[Any]) -> list[str]:
    out: set[str] = set()
    for rc in routes:
        for vh in rc.virtual_hosts:
            for r in vh.routes:
                out.add(r.route.cluster) if r.route.cluster else None
                out.update(wc.name for wc in r.route.weighted_clusters.clusters)
    return sorted(out)


def _seconds(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


def _route(r: Any) -> tuple[Any, ...]:
    """A route as gRPC reads it (gRFC A28 matching, A31 timeout, A33 fault, A44 retries,
    A42 hashing): the match, the cluster or weighted clusters, the timeout gRPC reads
    (``max_stream_duration``), the retry policy, the fault and the hash policies."""
    m = r.match
    spec = m.WhichOneof("path_specifier")
    path = (spec, m.safe_regex.regex if spec == "safe_regex" else getattr(m, spec) if spec else "")
    match = (
        path,
        m.case_sensitive.value if m.HasField("case_sensitive") else None,
        [text_format.MessageToString(h, as_one_line=True) for h in m.headers],
        [text_format.MessageToString(q, as_one_line=True) for q in m.query_parameters],
        text_format.MessageToString(m.runtime_fraction, as_one_line=True),
    )
    a = r.route
    msd = a.max_stream_duration
    timeout = _seconds(msd.max_stream_duration) if msd.HasField("max_stream_duration") else None
    retry = None
    if a.HasField("retry_policy"):
        rp = a.retry_policy
        retry = (rp.num_retries.value, rp.retry_on, _seconds(rp.per_try_timeout))
    fault = None
    if "envoy.filters.http.fault" in r.typed_per_filter_config:
        f = fault_pb2.HTTPFault()
        assert r.typed_per_filter_config["envoy.filters.http.fault"].Unpack(f)
        fault = (
            _seconds(f.delay.fixed_delay),
            (f.delay.percentage.numerator, f.delay.percentage.denominator),
            (f.abort.http_status, f.abort.grpc_status),
            (f.abort.percentage.numerator, f.abort.percentage.denominator),
        )
    return (
        match,
        r.WhichOneof("action"),
        a.cluster,
        [(wc.name, wc.weight.value) for wc in a.weighted_clusters.clusters],
        timeout,
        retry,
        fault,
        [text_format.MessageToString(h, as_one_line=True) for h in a.hash_policy],
    )


def view(by_type: dict[str, list[Any]]) -> dict[str, Any]:
    """What a gRPC client acts on, in comparable form."""
    listeners = {
        lis.name: (lis.address.socket_address.address, _hcm(lis).rds.route_config_name) for lis in by_type[LDS]
    }
    routes = {
        rc.name: [
            (
                vh.name,
                sorted(vh.domains),
                [_route(r) for r in vh.routes],
            )
            for vh in rc.virtual_hosts
        ]
        for rc in by_type[RDS]
    }
    clusters = {
        c.name: (cluster_pb2.Cluster.DiscoveryType.Name(c.type), c.eds_cluster_config.service_name)
        for c in by_type[CDS]
    }
    endpoints = {
        cla.cluster_name: sorted(
            (
                e.endpoint.address.socket_address.address,
                e.endpoint.address.socket_address.port_value,
                e.load_balancing_weight.value,
                (loc.locality.region, loc.locality.zone, loc.locality.sub_zone),
                loc.load_balancing_weight.value,
                e.metadata.filter_metadata["envoy.transport_socket_match"].fields["tlsMode"].string_value,
                e.metadata.filter_metadata["istio"].fields["workload"].string_value,
            )
            for loc in cla.endpoints
            for e in loc.lb_endpoints
        )
        for cla in by_type[EDS]
    }
    return {"listeners": listeners, "routes": routes, "clusters": clusters, "endpoints": endpoints}


def recorded(scenario: str) -> dict[str, list[Any]]:
    out = {}
    for short, t in (("lds", LDS), ("rds", RDS), ("cds", CDS), ("eds", EDS)):
        r = discovery_pb2.DiscoveryResponse()
        r.ParseFromString((FIXTURES / scenario / "grpc" / f"{short}.pb").read_bytes())
        assert r.type_url == t
        out[t] = _unpack(r)
    return out


def config_dir(scenario: str, dest: Path) -> Path:
    """The scenario's configuration files, as istiod read them (its --configDir)."""
    spec = yaml.safe_load((SCENARIOS / scenario / "scenario.yaml").read_text())
    dest.mkdir(parents=True)
    files = [SCENARIOS / scenario / rel for rel in spec["config"]]
    docs = [[d for d in yaml.safe_load_all(f.read_text()) if d] for f in files]
    later: set[tuple[str, str, str]] = set()
    for i in reversed(range(len(files))):
        keys = [_key(d) for d in docs[i]]
        if any(k in later for k in keys):
            # istiod's file store keeps the later definition (scenario.yaml says which files replace which).
            kept = [d for d, k in zip(docs[i], keys, strict=True) if k not in later]
            (dest / f"{i:02d}-{files[i].name}").write_text(yaml.safe_dump_all(kept))
        else:
            shutil.copy(files[i], dest / f"{i:02d}-{files[i].name}")
        later.update(keys)
    return dest


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    md = doc.get("metadata") or {}
    return (str(doc.get("kind")), str(md.get("namespace", "default")), str(md.get("name")))


def networks_file(scenario: str) -> Path | None:
    """The scenario's meshNetworks (istiod's --networksConfig), if it has one."""
    spec = yaml.safe_load((SCENARIOS / scenario / "scenario.yaml").read_text())
    return SCENARIOS / scenario / spec["networks"] if spec.get("networks") else None


def grpc_node(scenario: str) -> Any:
    """The client istiod answered, as its manifest recorded it (id and metadata)."""
    client = json.loads((FIXTURES / scenario / "manifest.json").read_text())["clients"]["grpc"]
    assert client["metadata"]["GENERATOR"] == "grpc"
    md = struct_pb2.Struct()
    md.update(client["metadata"])
    return base_pb2.Node(id=client["node_id"], metadata=md, user_agent_name="grpc-python")


def served(port: int, scenario: str) -> dict[str, list[Any]]:
    """gRPC's order, each response ACKed: LDS, RDS, CDS, EDS."""
    s = AdsStream(port, grpc_node(scenario))
    out: dict[str, list[Any]] = {}
    try:
        names = [LISTENER]
        for t in (LDS, RDS, CDS, EDS):
            s.send(t, tuple(names))
            r = s.recv()
            assert r.type_url == t
            s.ack(r, tuple(names))
            out[t] = _unpack(r)
            if t == LDS:
                names = sorted({_hcm(lis).rds.route_config_name for lis in out[LDS]})
            elif t == RDS:
                names = _route_clusters(out[RDS])
            elif t == CDS:
                names = sorted(c.eds_cluster_config.service_name or c.name for c in out[CDS])
    finally:
        s.close()
    return out

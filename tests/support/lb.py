"""Clusters and endpoints in the dict form ``pymesh.lbtable`` loads (Envoy's Cluster and
LbEndpoint JSON), for the load-balancer tests."""

from __future__ import annotations

from typing import Any


def ep(addr: str, weight: int = 1, health: str | None = None, **meta: Any) -> dict[str, Any]:
    ip, _, port = addr.rpartition(":")
    e: dict[str, Any] = {
        "endpoint": {"address": {"socket_address": {"address": ip.strip("[]"), "port_value": int(port)}}},
        "load_balancing_weight": weight,
    }
    if health:
        e["health_status"] = health
    if meta:
        e["metadata"] = {"filter_metadata": meta}
    return e


def cluster(name: str, policy: str, eps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": name, "lb_policy": policy, "load_assignment": {"endpoints": [{"lb_endpoints": eps}]}, **extra}


def http_options(protocol: str) -> dict[str, Any]:
    """A cluster's upstream HTTP protocol as istiod's CDS sets it (HttpProtocolOptions, to
    merge into a cluster): ``http2ProtocolOptions`` for http2/grpc ports, ``clients``
    (use_downstream_protocol_config) for ports of unknown protocol, ``httpProtocolOptions``
    for HTTP/1.1 said explicitly; a cluster with none of them speaks HTTP/1.1."""
    t = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    opts: dict[str, Any] = {"@type": f"type.googleapis.com/{t}"}
    if protocol == "clients":
        opts["useDownstreamProtocolConfig"] = {"httpProtocolOptions": {}, "http2ProtocolOptions": {}}
    else:
        opts["explicitHttpConfig"] = {protocol: {}}
    return {"typedExtensionProtocolOptions": {t: opts}}

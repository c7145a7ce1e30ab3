"""The ``virtualInbound`` listener: how the control plane tells a VM's agent
its inbound mTLS mode (PeerAuthentication), builder and reader side by side
as Istio keeps ``pkg/dns/proto`` between its client and server.

The control plane builds the listener as istiod builds a sidecar's inbound
listener (istio/istio ``pilot/pkg/networking/core/listener_builder.go``,
``buildInboundFilterchains``): on 15006, listener filters ``original_dst`` and
``tls_inspector``, an mTLS filter chain matching ``transport_protocol: "tls"``
and Istio's ALPN values (a DownstreamTlsContext requiring a client
certificate, SDS names ``default`` / ``ROOTCA``) when mTLS is accepted, and a
plaintext chain (``raw_buffer``, or matching anything under DISABLE) when
plaintext is. STRICT has no plaintext chain, so plaintext finds no chain and
is refused, as in Envoy. The agent reads the mode back from the chains
(:func:`mode_of_listener`).
"""

from __future__ import annotations

from typing import Any

from pymesh.mesh.alpn import INBOUND_CHAIN_MATCH
from pymesh.mesh.defaults import INBOUND_PORT
from pymesh.mesh.xds import pack

VIRTUAL_INBOUND = "virtualInbound"
DEFAULT_MODE = "PERMISSIVE"
MODES = ("STRICT", "PERMISSIVE", "DISABLE")
PASSTHROUGH_CLUSTER = "InboundPassthroughClusterIpv4"
TLS_CHAIN = "virtualInbound-mtls"
PLAINTEXT_CHAIN = "virtualInbound-plaintext"


def _tcp_proxy(stat: str) -> Any:
    from envoy.config.listener.v3 import listener_components_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    tp = tcp_proxy_pb2.TcpProxy(stat_prefix=stat, cluster=PASSTHROUGH_CLUSTER)
    return listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=pack(tp))


def _downstream_tls() -> Any:
    from envoy.config.core.v3 import base_pb2
    from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2

    ctx = tls_pb2.DownstreamTlsContext()
    ctx.require_client_certificate.value = True
    common = ctx.common_tls_context
    common.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
    common.alpn_protocols.extend(["h2", "http/1.1"])
    # The workload certificate and the mesh roots by SDS name, as istiod writes them; the
    # pymesh agent supplies both from its own certificate files (set_identity).
    common.tls_certificate_sds_secret_configs.add(name="default")
    common.combined_validation_context.validation_context_sds_secret_config.CopyFrom(
        secret_pb2.SdsSecretConfig(name="ROOTCA")
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(ctx))


def virtual_inbound(mode: str, port: int = INBOUND_PORT) -> Any:
    """The ``virtualInbound`` Listener for one mode (see the module doc)."""
    from envoy.config.core.v3 import address_pb2, base_pb2
    from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
    from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
    from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2

    if mode not in MODES:
        raise ValueError(f"mTLS mode {mode!r}: expected one of {', '.join(MODES)}")
    lis = listener_pb2.Listener(name=VIRTUAL_INBOUND, traffic_direction=base_pb2.INBOUND)
    lis.address.socket_address.CopyFrom(address_pb2.SocketAddress(address="0.0.0.0", port_value=port))
    lis.use_original_dst.value = True
    lis.listener_filters.add(
        name="envoy.filters.listener.original_dst", typed_config=pack(original_dst_pb2.OriginalDst())
    )
    lis.listener_filters.add(
        name="envoy.filters.listener.tls_inspector", typed_config=pack(tls_inspector_pb2.TlsInspector())
    )
    if mode in ("STRICT", "PERMISSIVE"):
        match = listener_components_pb2.FilterChainMatch(
            transport_protocol="tls", application_protocols=INBOUND_CHAIN_MATCH
        )
        lis.filter_chains.add(
            name=TLS_CHAIN,
            filter_chain_match=match,
            transport_socket=_downstream_tls(),
            filters=[_tcp_proxy(TLS_CHAIN)],
        )
    if mode == "PERMISSIVE":
        match = listener_components_pb2.FilterChainMatch(transport_protocol="raw_buffer")
        lis.filter_chains.add(name=PLAINTEXT_CHAIN, filter_chain_match=match, filters=[_tcp_proxy(PLAINTEXT_CHAIN)])
    elif mode == "DISABLE":
        # No transport match: every connection, TLS or not, is passed through as it is.
        lis.filter_chains.add(name=PLAINTEXT_CHAIN, filters=[_tcp_proxy(PLAINTEXT_CHAIN)])
    return lis


def mode_of_listener(listener: Any) -> str:
    """The mode an inbound Listener's filter chains implement (Envoy's
    filter-chain matching): TLS chain + plaintext chain = PERMISSIVE, TLS chain
    only = STRICT, plaintext only = DISABLE. ValueError for a listener that
    accepts nothing or whose chains match on something else."""
    tls = plain = False
    for i, fc in enumerate(listener.filter_chains):
        proto = fc.filter_chain_match.transport_protocol
        if proto == "tls":
            tls = True
        elif proto in ("raw_buffer", ""):
            plain = True
        else:
            raise ValueError(f"listener {listener.name!r}: filter_chains[{i}] matches transport {proto!r}")
    if tls and plain:
        return "PERMISSIVE"
    if tls:
        return "STRICT"
    if plain:
        return "DISABLE"
    raise ValueError(f"listener {listener.name!r} has no filter chain (it would accept no connection)")

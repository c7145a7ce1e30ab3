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

from pymesh.mesh.accesslog import file_access_log
from pymesh.mesh.alpn import INBOUND_CHAIN_MATCH
from pymesh.mesh.defaults import INBOUND_PORT
from pymesh.mesh.xds import pack

VIRTUAL_INBOUND = "virtualInbound"
DEFAULT_MODE = "PERMISSIVE"
MODES = ("STRICT", "PERMISSIVE", "DISABLE")
PASSTHROUGH_CLUSTER = "InboundPassthroughClusterIpv4"
TLS_CHAIN = "virtualInbound-mtls"
PLAINTEXT_CHAIN = "virtualInbound-plaintext"


def _tcp_proxy(stat: str, access_log: tuple[str, str] | None = None) -> Any:
    from envoy.config.listener.v3 import listener_components_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    tp = tcp_proxy_pb2.TcpProxy(stat_prefix=stat, cluster=PASSTHROUGH_CLUSTER)
    if access_log is not None:
        tp.access_log.append(file_access_log(*access_log))
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


def virtual_inbound(mode: str, port: int = INBOUND_PORT, access_log: tuple[str, str] | None = None) -> Any:
    """The ``virtualInbound`` Listener for one mode (see the module doc), its ``tcp_proxy``
    filters writing ``access_log`` ((file, TEXT | JSON), :mod:`pymesh.mesh.accesslog`) when given."""
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
            filters=[_tcp_proxy(TLS_CHAIN, access_log)],
        )
    if mode == "PERMISSIVE":
        match = listener_components_pb2.FilterChainMatch(transport_protocol="raw_buffer")
        lis.filter_chains.add(
            name=PLAINTEXT_CHAIN, filter_chain_match=match, filters=[_tcp_proxy(PLAINTEXT_CHAIN, access_log)]
        )
    elif mode == "DISABLE":
        # No transport match: every connection, TLS or not, is passed through as it is.
        lis.filter_chains.add(name=PLAINTEXT_CHAIN, filters=[_tcp_proxy(PLAINTEXT_CHAIN, access_log)])
    return lis


BLACKHOLE_CLUSTER = "BlackHoleCluster"


def _blackhole(listener: Any, chain: Any) -> bool:
    """istiod's ``virtualInbound-blackhole`` chain: it matches only the
    listener's own port (a connection to 15006 itself would loop) and sends
    it to BlackHoleCluster; it accepts nothing a workload could use, so it
    says nothing about which transports are accepted."""
    port = listener.address.socket_address.port_value
    match = chain.filter_chain_match
    if port and match.HasField("destination_port") and match.destination_port.value == port:
        return True
    for f in chain.filters:
        if f.typed_config.type_url.endswith(".TcpProxy"):
            from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

            tp = tcp_proxy_pb2.TcpProxy()
            if f.typed_config.Unpack(tp) and tp.cluster == BLACKHOLE_CLUSTER:
                return True
    return False


def mode_of_listener(listener: Any) -> str:
    """The mode an inbound Listener's filter chains implement (Envoy's
    filter-chain matching): TLS chains + plaintext chains = PERMISSIVE, TLS
    chains only = STRICT, plaintext only = DISABLE. Works for pymesh's shape
    and istiod's (``pilot/pkg/networking/core/listener_builder.go``), whose
    per-port chains (``destination_port``) and ``virtualInbound-blackhole``
    loop guard are read as Envoy would match them: the blackhole chain is
    ignored, the catch-all chains (no ``destination_port``) give the
    workload's mode. ValueError for a listener that accepts nothing or whose
    chains match on a transport Envoy does not know."""
    tls = plain = False
    port_tls = port_plain = False
    for i, fc in enumerate(listener.filter_chains):
        if _blackhole(listener, fc):
            continue
        proto = fc.filter_chain_match.transport_protocol
        per_port = fc.filter_chain_match.HasField("destination_port")
        if proto == "tls":
            port_tls |= per_port
            tls |= not per_port
        elif proto in ("raw_buffer", ""):
            port_plain |= per_port
            plain |= not per_port
        else:
            raise ValueError(f"listener {listener.name!r}: filter_chains[{i}] matches transport {proto!r}")
    if not (tls or plain):
        # Only per-port chains: they decide (istiod always adds catch-alls, pymesh never uses ports).
        tls, plain = port_tls, port_plain
    if tls and plain:
        return "PERMISSIVE"
    if tls:
        return "STRICT"
    if plain:
        return "DISABLE"
    raise ValueError(f"listener {listener.name!r} has no filter chain (it would accept no connection)")

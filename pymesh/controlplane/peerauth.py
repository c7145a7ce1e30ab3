"""PeerAuthentication: which inbound mTLS mode applies to a workload, and how
the VM agent learns it.

Selection and precedence are istiod's (``getConfigsForWorkload`` in
pilot/pkg/model/authentication.go, ``ComposePeerAuthentication`` in
pilot/pkg/security/authn/policy_applier.go):

- candidates are the policies of the workload's namespace and of the root
  namespace (meshConfig.rootNamespace, ``istio-system`` by default);
- a policy without a selector (or with empty ``matchLabels``) is mesh-wide in
  the root namespace and namespace-wide elsewhere; a selector policy applies
  when its labels are a subset of the workload's; a selector policy in the
  root namespace is ignored, as Istio ignores it;
- on each level the oldest policy wins (``creationTimestamp``; pymesh breaks
  ties, and orders objects without one, by name);
- the mode starts PERMISSIVE and is overridden mesh -> namespace -> workload
  by every level whose mode is not UNSET (UNSET inherits).

Delivery: over LDS, as Istio's sidecars get it. A sidecar-type proxy (an
Envoy-shaped node such as the pymesh agent, not a proxyless gRPC client)
receives a ``virtualInbound`` listener on 15006 whose filter chains follow
the mode the way istiod builds them: an mTLS chain matching
``transport_protocol: "tls"`` and Istio's ALPN values (with a
DownstreamTlsContext requiring a client certificate, SDS names ``default`` /
``ROOTCA``) when mTLS is accepted, and a plaintext chain (``raw_buffer``, or
matching anything under DISABLE) when plaintext is. STRICT has no plaintext
chain, so plaintext finds no chain and is refused, as in Envoy. The agent
subscribes to that one listener by name and reads the mode back from its
chains (:func:`mode_of_listener`); a policy change re-generates the listener
only for the views (namespace + labels) whose mode changed, so only their
proxies get a push.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pymesh.controlplane.resources import PeerAuthentication

log = logging.getLogger("pymesh.controlplane")

DEFAULT_ROOT_NAMESPACE = "istio-system"
VIRTUAL_INBOUND = "virtualInbound"
INBOUND_PORT = 15006
DEFAULT_MODE = "PERMISSIVE"
MODES = ("STRICT", "PERMISSIVE", "DISABLE")
# The ALPN values an Istio inbound mTLS chain matches (what sidecars offer; security/datapath.py).
INBOUND_ALPN = ("istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2")
PASSTHROUGH_CLUSTER = "InboundPassthroughClusterIpv4"
TLS_CHAIN = "virtualInbound-mtls"
PLAINTEXT_CHAIN = "virtualInbound-plaintext"


@dataclass(frozen=True)
class PolicyView:
    """What of a proxy selects its PeerAuthentication: namespace and labels
    (for a VM the node metadata's LABELS, as istiod takes them)."""

    namespace: str
    labels: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def of(namespace: str, labels: Mapping[str, str]) -> PolicyView:
        return PolicyView(namespace, tuple(sorted(labels.items())))


@dataclass(frozen=True)
class Effective:
    mode: str  # STRICT | PERMISSIVE | DISABLE
    policies: tuple[str, ...]  # "namespace/name" of the policies that set it, mesh first


def index(policies: Iterable[PeerAuthentication]) -> dict[str, tuple[PeerAuthentication, ...]]:
    """Policies by namespace, each namespace's oldest first (then by name)."""
    out: dict[str, list[PeerAuthentication]] = {}
    for p in policies:
        out.setdefault(p.meta.namespace, []).append(p)
    return {
        ns: tuple(sorted(ps, key=lambda p: (p.created is None, p.created or 0.0, p.meta.name)))
        for ns, ps in out.items()
    }


def effective_mode(
    by_namespace: Mapping[str, tuple[PeerAuthentication, ...]],
    root_namespace: str,
    namespace: str,
    labels: Mapping[str, str],
) -> Effective:
    mesh: PeerAuthentication | None = None
    ns_level: PeerAuthentication | None = None
    workload: PeerAuthentication | None = None
    for p in by_namespace.get(root_namespace, ()):
        if not p.selector and mesh is None:
            mesh = p
    if namespace != root_namespace:
        for p in by_namespace.get(namespace, ()):
            if not p.selector:
                ns_level = ns_level or p
            elif workload is None and all(labels.get(k) == v for k, v in p.selector.items()):
                workload = p
    mode, used = DEFAULT_MODE, []
    for level in (mesh, ns_level, workload):
        if level is not None and level.mode != "UNSET":
            mode = level.mode
            used.append(f"{level.meta.namespace}/{level.meta.name}")
    return Effective(mode, tuple(used))


def ignored(by_namespace: Mapping[str, tuple[PeerAuthentication, ...]], root_namespace: str) -> list[str]:
    """Selector policies in the root namespace: never applied (Istio ignores them too)."""
    return [f"{p.meta.namespace}/{p.meta.name}" for p in by_namespace.get(root_namespace, ()) if p.selector]


# --- the virtualInbound listener ---------------------------------------------------------


def _pack(msg: Any) -> Any:
    from google.protobuf import any_pb2

    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _tcp_proxy(stat: str) -> Any:
    from envoy.config.listener.v3 import listener_components_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    tp = tcp_proxy_pb2.TcpProxy(stat_prefix=stat, cluster=PASSTHROUGH_CLUSTER)
    return listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=_pack(tp))


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
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_pack(ctx))


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
        name="envoy.filters.listener.original_dst", typed_config=_pack(original_dst_pb2.OriginalDst())
    )
    lis.listener_filters.add(
        name="envoy.filters.listener.tls_inspector", typed_config=_pack(tls_inspector_pb2.TlsInspector())
    )
    if mode in ("STRICT", "PERMISSIVE"):
        match = listener_components_pb2.FilterChainMatch(transport_protocol="tls", application_protocols=INBOUND_ALPN)
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

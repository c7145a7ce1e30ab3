"""Istio's ALPN values for mesh mTLS (istio/istio
``pilot/pkg/networking/util/util.go``: ``ALPNInMeshWithMxc``, ``ALPNInMeshH2``;
``pilot/pkg/xds/filters/filters.go``: ``mtlsHTTP10ALPN``, ``mtlsHTTP11ALPN``,
``mtlsHTTP2ALPN``; the inbound chain match in
``pilot/pkg/networking/core/listener_builder.go``). The Rust relay keeps the
same lists in ``native/src/mesh.rs``; ``tests/cases/mesh.cases`` holds both
suites' cases."""

from __future__ import annotations

# What a sidecar offers to a mesh peer over mTLS for TCP (with metadata exchange first).
MTLS_TCP = ("istio-peer-exchange", "istio")
# ... and for HTTP, per HTTP version (Envoy's cluster ALPN for in-mesh HTTP).
MTLS_H2 = ("istio-h2", "istio", "h2")
MTLS_HTTP11 = ("istio-http/1.1", "istio", "http/1.1")
MTLS_HTTP10 = ("istio-http/1.0", "istio", "http/1.0")
# The three HTTP-version markers, as the inbound distinguishes them.
MTLS_HTTP = ("istio-http/1.0", "istio-http/1.1", "istio-h2")
# What an inbound mTLS filter chain matches (istiod's virtualInbound).
INBOUND_CHAIN_MATCH = ("istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2")
# What the native inbound selects, in order, as Envoy's inbound TLS context lists them
# (``ALPNDownstreamWithMxc``): the metadata exchange (the native relay speaks it), then h2 and
# http/1.1 (a sidecar offering Istio's HTTP markers offers one of them too: the inbound's HTTP
# path), then ``istio`` and the markers themselves for clients offering only those.
INBOUND_PREFERENCE = ("istio-peer-exchange", "h2", "http/1.1", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2")
# The Python reference data path (pymesh.relay.pytls) does not speak the metadata exchange, so
# it neither offers nor accepts ``istio-peer-exchange`` (an Envoy peer then sends no frame).
PYTLS_TCP = ("istio",)
INBOUND_SERVER = ("istio", *MTLS_HTTP, "h2", "http/1.1")

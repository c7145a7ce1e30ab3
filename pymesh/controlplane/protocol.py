"""Which application protocol a service port carries, as Istio decides it.

istiod gives each service port a protocol when it converts the service
(istio/istio ``pkg/config/protocol/instance.go``: ``Parse``, ``IsHTTP``,
``IsTCP``), and the sidecar's outbound configuration follows from it: HTTP ports
and ports whose protocol is unknown ("auto": sniffed by the proxy) get an HTTP
listener and routes, TCP-class ports a TCP proxy (``IsHTTPOrSniffed`` in
``pilot/pkg/networking/core/route/route.go BuildSidecarVirtualHostWrapper``).

- A ServiceEntry port (and so every WorkloadEntry behind it) names its protocol
  in ``ports[].protocol``; none is "auto" (``convertPort`` in
  ``pilot/pkg/serviceregistry/serviceentry/conversion.go``: ``protocol.Parse``).
- A Kubernetes Service port (``pkg/config/kube/conversion.go ConvertProtocol``):
  UDP stays UDP; else ``appProtocol`` when set (``kubernetes.io/h2c`` is HTTP2,
  ``kubernetes.io/ws`` HTTP, ``kubernetes.io/wss`` HTTPS), else the port name;
  a name starting with ``grpc-web`` is GRPC-Web, otherwise the text before the
  first ``-`` is parsed, case-insensitively (``http-api`` is HTTP). Anything
  unknown is "auto", except the well-known ports 25, 53, 3306 and 27017, which
  are TCP (sniffing would break their server-first protocols).

The control plane is the only reader: the agent learns a port's class from the
listeners it is sent.
"""

from __future__ import annotations

TCP = "TCP"
UDP = "UDP"
GRPC = "GRPC"
GRPC_WEB = "GRPC-WEB"
HTTP = "HTTP"
HTTP_PROXY = "HTTP_PROXY"
HTTP2 = "HTTP2"
HTTPS = "HTTPS"
TLS = "TLS"
MONGO = "MONGO"
REDIS = "REDIS"
MYSQL = "MYSQL"
# protocol.Unsupported: nothing declared; the proxy sniffs HTTP from the first bytes.
AUTO = "AUTO"

# instance.go Parse: the names Istio knows, lower-cased.
_NAMES = {p.lower(): p for p in (TCP, UDP, GRPC, GRPC_WEB, HTTP, HTTP_PROXY, HTTP2, HTTPS, TLS, MONGO, REDIS, MYSQL)}
HTTP_CLASS = frozenset((HTTP, HTTP2, HTTP_PROXY, GRPC, GRPC_WEB))  # IsHTTP
TCP_CLASS = frozenset((TCP, HTTPS, TLS, MONGO, REDIS, MYSQL))  # IsTCP
# pkg/config/kube/conversion.go wellKnownPorts: SMTP, DNS, MySQL, MongoDB.
WELL_KNOWN_TCP_PORTS = frozenset((25, 53, 3306, 27017))
# Kubernetes' own appProtocol values (k8s.io/api core/v1 ServicePort.appProtocol).
_K8S_APP_PROTOCOLS = {"kubernetes.io/h2c": HTTP2, "kubernetes.io/ws": HTTP, "kubernetes.io/wss": HTTPS}


def parse(text: str) -> str:
    """``protocol.Parse``: a known name in any case, else :data:`AUTO`."""
    return _NAMES.get(text.lower(), AUTO)


def of_kubernetes_port(number: int, name: str, l4: str, app_protocol: str = "") -> str:
    """``ConvertProtocol`` for a Service port (``l4``: its TCP/UDP/SCTP ``protocol``)."""
    if l4.upper() == UDP:
        return UDP
    text = name
    if app_protocol:
        known = _K8S_APP_PROTOCOLS.get(app_protocol)
        if known is not None:
            return known
        text = app_protocol
    if text[: len(GRPC_WEB)].lower() == GRPC_WEB.lower():
        return GRPC_WEB
    out = parse(text.partition("-")[0])
    if out == AUTO and number in WELL_KNOWN_TCP_PORTS:
        return TCP
    return out


def is_http(protocol: str) -> bool:
    return protocol in HTTP_CLASS


# IsHTTP2: the ports whose clusters speak HTTP/2 to the endpoints.
HTTP2_CLASS = frozenset((HTTP2, GRPC, GRPC_WEB))


def is_http2(protocol: str) -> bool:
    return protocol in HTTP2_CLASS


def is_http_or_sniffed(protocol: str) -> bool:
    """``IsHTTPOrSniffed``: the port gets an HTTP listener and routes."""
    return protocol in HTTP_CLASS or protocol == AUTO

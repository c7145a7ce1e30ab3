"""Istio's ports, names and defaults, one home each (Istio keeps them in
``pkg/config/constants/constants.go`` and the istio-iptables defaults in
``tools/istio-iptables/pkg/constants/constants.go``)."""

from __future__ import annotations

# The sidecar's ports (istio-iptables, pilot-agent).
OUTBOUND_PORT = 15001  # outbound capture (Envoy's virtualOutbound)
INBOUND_PORT = 15006  # inbound capture (virtualInbound)
TUNNEL_PORT = 15008  # HBONE
STATUS_PORT = 15020  # pilot-agent's merged status/metrics port
HEALTH_PORT = 15021  # Envoy's /healthz/ready
DNS_PORT = 15053  # the agent's DNS proxy
PROXY_UID = 1337  # the proxy's user: never captured
# The control plane's ports (istiod).
XDS_PLAINTEXT_PORT = 15010
XDS_TLS_PORT = 15012  # xDS and the CA over TLS, what VMs use
MONITORING_PORT = 15014  # istiod's /metrics and debug
WEBHOOK_PORT = 15017
GATEWAY_MTLS_PORT = 15443  # the east-west gateway's AUTO_PASSTHROUGH port

# Names.
DEFAULT_DOMAIN = "cluster.local"  # the cluster's DNS domain
DEFAULT_TRUST_DOMAIN = "cluster.local"  # SPIFFE trust domain (meshConfig.trustDomain)
DEFAULT_NAMESPACE = "default"
ROOT_NAMESPACE = "istio-system"  # meshConfig.rootNamespace
DEFAULT_DISCOVERY_ADDRESS = "istiod.istio-system.svc:15012"  # ProxyConfig.discoveryAddress
ISTIOD_NAMES = ("istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local", "istiod")

# Where the proxy's DNS listens: 127.0.0.1 and, where IPv6 loopback exists, [::1].
DNS_LISTEN_V4 = f"127.0.0.1:{DNS_PORT}"
DNS_LISTEN_V6 = f"[::1]:{DNS_PORT}"


def loopback_listen(port: int) -> list[str]:
    """127.0.0.1 and, where the host has IPv6 loopback, [::1] on ``port``:
    where captured IPv4 and IPv6 traffic from the host's own apps lands."""
    import socket

    out = [f"127.0.0.1:{port}"]
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        out.append(f"[::1]:{port}")
    except OSError:
        pass
    return out


def default_dns_listen(port: int = DNS_PORT) -> list[str]:
    """istio-agent's DNS listeners (captured queries to IPv6 name servers land on [::1])."""
    return loopback_listen(port)

"""The outbound proxy on 15001 (native; see ``native/src/relay``).

Connections the capture rules redirected are classified by their original
destination with a ``RedirectTable``; a service's connections go to an
endpoint its ``LbTable`` cluster picks (connect failures are reported to
outlier detection and another endpoint is tried), anything else passes
through to where it was going. Bytes are relayed with ``splice(2)``. Every
connection is a task of the relay's native event loop (a few threads, none
per connection, none of which takes the GIL).

Limits: ``max_connections`` (default: what the file-descriptor budget at
start allows, ``proxy.limits()``) and ``max_connections_per_source``; when
full, the connections idle (a second or more) or still handshaking the
longest are closed to make room, else the new one is refused
(``stats()``: ``evicted``, ``overflow``, ``source_overflow``). The inbound
closes a connection whose TLS ClientHello has not arrived within
``hello_timeout`` seconds. TCP keepalive (``keepalive`` seconds) on both
sockets reclaims connections to peers that vanished.

The proxy serves from the table objects it is given: clusters loaded into
the same ``LbTable`` later serve at once, outcomes it reports show in that
table's ``endpoints()``; ``swap_tables`` replaces either table for new
connections. Its own upstream connections must not be captured again: run
it as the capture's ``proxy_uid``, or give both the same ``mark``.

mTLS (Istio's ``ISTIO_MUTUAL``, rustls in the native relay): once
``proxy.set_identity(cert_chain_pem, key_pem, roots_pem)`` is called, the
outbound originates mTLS to endpoints whose EDS metadata says ``tlsMode:
istio`` and checks their SPIFFE identity (a failed handshake is a connect
failure: outlier detection, another endpoint), and the inbound passthrough
terminates mTLS per ``set_peer_authentication("STRICT" | "PERMISSIVE" |
"DISABLE")``. ``set_identity`` again rotates without touching open
connections; ``tls_stats()`` counts handshakes and refusals. A ``tlsMode:
istio`` endpoint never gets plaintext: before the first ``set_identity`` (or
after ``clear_identity``) a connection to one waits for an identity up to
``connect_timeout`` and is refused if none comes (``tls_stats()``:
``identity_waits``, ``no_identity``); inbound STRICT without an identity
refuses everything. ``auto_mtls=False`` (Istio's ``enableAutoMtls: false``)
ignores ``tlsMode`` and reaches every endpoint in plaintext: for a mesh
without workload identities at all, never as a fallback.

Example::

    from pymesh.capture import CaptureConfig, redirect_table
    from pymesh.lbtable import LbTable
    from pymesh.relay import start_outbound_proxy

    cfg = CaptureConfig(proxy_uid=os.getuid())
    lb = LbTable()
    lb.load(clusters)
    proxy = start_outbound_proxy(lb, redirect_table(cfg, services))
    ...
    proxy.stop()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pymesh._native import (
    LbTable,
    OutboundProxy,
    RedirectTable,
    TlsConfigError,
    check_http_routes,
    original_destination,
)

__all__ = [
    "OutboundProxy",
    "TlsConfigError",
    "check_http_routes",
    "original_destination",
    "start_forward",
    "start_inbound_passthrough",
    "start_outbound_proxy",
    "start_sni_gateway",
]


def start_outbound_proxy(
    lb: LbTable,
    redirect: RedirectTable,
    *,
    listen: Sequence[str] = ("127.0.0.1:15001", "[::1]:15001"),
    connect_timeout: float = 10.0,
    connect_attempts: int = 3,
    max_connections: int | None = None,
    mark: int | None = None,
    seed: int | None = None,
    logical_dns: Mapping[str, tuple[str, int]] | None = None,
    idle_timeout: float | None = 3600.0,
    max_connections_per_source: int | None = None,
    auto_mtls: bool = True,
) -> OutboundProxy:
    """Creates and starts an ``OutboundProxy``; see the class for the settings.
    ``logical_dns`` maps LOGICAL_DNS clusters (which the ``LbTable`` does not
    hold; the agent's ``agent.logical_dns``) to the (host, port) to resolve
    and connect to."""
    proxy = OutboundProxy(
        redirect,
        lb,
        listen=list(listen),
        connect_timeout=connect_timeout,
        connect_attempts=connect_attempts,
        max_connections=max_connections,
        mark=mark,
        seed=seed,
        logical_dns=logical_dns,
        idle_timeout=idle_timeout,
        max_connections_per_source=max_connections_per_source,
        auto_mtls=auto_mtls,
    )
    proxy.start()
    return proxy


def start_inbound_passthrough(
    *,
    listen: Sequence[str] = ("0.0.0.0:15006",),
    connect_timeout: float = 10.0,
    max_connections: int | None = None,
    mark: int | None = None,
    peer_authentication: str = "PERMISSIVE",
    idle_timeout: float | None = 3600.0,
    max_connections_per_source: int | None = None,
    hello_timeout: float = 3.0,
) -> OutboundProxy:
    """Starts a listener for inbound capture (``CaptureConfig.inbound_ports``):
    each connection is passed to the local app it was addressed to, from
    127.0.0.6 (which the capture rules return first, so it is not captured
    again), like Istio's inbound passthrough. REDIRECT in PREROUTING sends to
    the receiving interface's primary address, hence the wildcard listener.
    IPv6 needs ``::6`` routed to lo. Without an identity this is plaintext
    passthrough (``STRICT`` then refuses everything); after
    ``set_identity`` mTLS is terminated per ``peer_authentication``."""
    from pymesh._native import LbTable, RedirectTable

    proxy = OutboundProxy(
        RedirectTable.from_dict({}),
        LbTable(),
        listen=list(listen),
        connect_timeout=connect_timeout,
        connect_attempts=1,
        max_connections=max_connections,
        mark=mark,
        inbound=True,
        idle_timeout=idle_timeout,
        max_connections_per_source=max_connections_per_source,
        hello_timeout=hello_timeout,
    )
    proxy.set_peer_authentication(peer_authentication)
    proxy.start()
    return proxy


def start_sni_gateway(
    lb: LbTable,
    *,
    listen: Sequence[str] = ("0.0.0.0:15443",),
    connect_timeout: float = 10.0,
    connect_attempts: int = 3,
    max_connections: int | None = None,
    hello_timeout: float = 3.0,
    idle_timeout: float | None = 3600.0,
) -> OutboundProxy:
    """Starts an east-west gateway's ``AUTO_PASSTHROUGH`` listener (Istio's
    15443): each connection's TLS ClientHello is read without being answered,
    its SNI ``outbound_.<port>_.<subset>_.<host>`` names the cluster
    ``outbound|<port>|<subset>|<host>`` of ``lb``, an endpoint of it is picked
    and the still-encrypted bytes are spliced to it (``auto_mtls`` off: the
    gateway never terminates or originates TLS). Not a ClientHello, no such
    name, or an unknown cluster: reset, and counted in ``stats()``
    (``not_tls``, ``sni_refused``, ``unknown_cluster``)."""
    proxy = OutboundProxy(
        RedirectTable.from_dict({}),
        lb,
        listen=list(listen),
        connect_timeout=connect_timeout,
        connect_attempts=connect_attempts,
        max_connections=max_connections,
        hello_timeout=hello_timeout,
        idle_timeout=idle_timeout,
        auto_mtls=False,
        mode="sni",
    )
    proxy.start()
    return proxy


def start_forward(
    listen: Sequence[str],
    target: str,
    *,
    connect_timeout: float = 10.0,
    max_connections: int | None = None,
    idle_timeout: float | None = 3600.0,
) -> OutboundProxy:
    """Starts a listener whose every connection is passed, bytes unchanged,
    to ``target`` (``IP:PORT``): a gateway's 15012 and 15017 to the control
    plane, whose TLS runs end to end between the VM and the control plane."""
    proxy = OutboundProxy(
        RedirectTable.from_dict({}),
        LbTable(),
        listen=list(listen),
        connect_timeout=connect_timeout,
        connect_attempts=1,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        auto_mtls=False,
        mode="forward",
        forward_to=target,
    )
    proxy.start()
    return proxy

"""The agent's side of workload mTLS: the workload certificate handed to the
native relay, and the PeerAuthentication mode read from the control plane's
``virtualInbound`` listener (pymesh.controlplane.peerauth builds it as istiod
builds a sidecar's inbound listener)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pymesh._native import PymeshError
from pymesh.agent.errors import XdsClientError
from pymesh.controlplane.peerauth import VIRTUAL_INBOUND, mode_of_listener

log = logging.getLogger("pymesh.agent")

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


def inbound_mode(resources: Iterable[Any]) -> str | None:
    """The mode the ``virtualInbound`` listener of an LDS response carries
    (None when the response does not hold it). A listener that does not decode
    or whose chains say nothing readable is an XdsClientError: the push is
    NACKed and the mode in force stays."""
    from envoy.config.listener.v3 import listener_pb2
    from google.protobuf.message import DecodeError

    for a in resources:
        if a.type_url != LDS:
            raise XdsClientError(f"resource of type {a.type_url!r} in an LDS response")
        try:
            lis = listener_pb2.Listener.FromString(a.value)
        except DecodeError as e:
            raise XdsClientError(f"Listener does not decode: {e}") from e
        if lis.name != VIRTUAL_INBOUND:
            continue
        try:
            return mode_of_listener(lis)
        except ValueError as e:
            raise XdsClientError(str(e)) from e
    return None


def set_peer_authentication(listener: Any, mode: str) -> bool:
    """Applies ``mode`` to the inbound listener; False when this build of the
    native relay has no mTLS (``make build`` after the relay's TLS landed)."""
    if not hasattr(listener, "set_peer_authentication"):
        log.warning("inbound listener has no mTLS in this build of pymesh._native; mode %s not applied", mode)
        return False
    try:
        listener.set_peer_authentication(mode)
    except (ValueError, TypeError, PymeshError) as e:
        raise XdsClientError(f"inbound listener refused mode {mode!r}: {e}") from e
    return True


def set_identity(targets: Iterable[tuple[str, Any]], chain: bytes, key: bytes, roots: bytes, trust_domain: str) -> bool:
    """Hands the workload certificate to each (name, relay) that takes one.
    A certificate the relay refuses (ValueError) leaves its previous identity
    in place and is logged; nothing is raised, so a bad file never stops the
    agent. True when every target took it."""
    ok = True
    for name, relay in targets:
        if relay is None:
            continue
        if not hasattr(relay, "set_identity"):
            log.warning("%s has no mTLS in this build of pymesh._native; identity not applied", name)
            ok = False
            continue
        try:
            relay.set_identity(chain.decode(), key.decode(), roots.decode(), trust_domain)
        except (ValueError, TypeError, UnicodeDecodeError, PymeshError) as e:
            log.error("%s refused the workload certificate (keeping its previous identity): %s", name, e)
            ok = False
    return ok

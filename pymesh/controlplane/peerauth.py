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
the mode the way istiod builds them (the contract, builder and reader, is
:mod:`pymesh.mesh.inbound`). The agent subscribes to that one listener by
name and reads the mode back from its chains; a policy change re-generates
the listener only for the views (namespace + labels) whose mode changed, so
only their proxies get a push.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pymesh.controlplane.resources import PeerAuthentication
from pymesh.mesh.defaults import ROOT_NAMESPACE as DEFAULT_ROOT_NAMESPACE
from pymesh.mesh.inbound import DEFAULT_MODE, MODES, VIRTUAL_INBOUND, mode_of_listener, virtual_inbound

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODE",
    "DEFAULT_ROOT_NAMESPACE",
    "MODES",
    "VIRTUAL_INBOUND",
    "Effective",
    "PolicyView",
    "effective_mode",
    "ignored",
    "index",
    "mode_of_listener",
    "virtual_inbound",
]


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

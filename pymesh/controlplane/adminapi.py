"""The operators' JSON API on the monitoring port: ``/api/v1/services``,
``/api/v1/workloadentries``, ``/api/v1/proxies`` and ``/api/v1/config-errors``
and ``/api/v1/graph``
(fields: ``docs/dashboard-api.md``; the graph's sources: :mod:`pymesh.controlplane.graph`).

Every view is what *this* replica knows, so the API works against any replica
of an HA control plane: services and endpoints from the snapshot it serves,
WorkloadEntries from the store's documents it shares with the others (plus,
on etcd, the store's connection keys: which replicas hold a stream of each
VM), proxies from its own ADS streams only (a proxy connected to another
replica is listed by that replica, as ``istioctl proxy-status`` asks every
istiod), and the configuration it rejected at its last load.

The mutable state (connections, registrations, rejected objects) is copied
on the control plane's event loop (:meth:`ControlPlane.call_soon`); the JSON
is built on the admin server's thread from those copies and from the
immutable snapshot.

Sync state per xDS type is istiod's (``pilot/pkg/xds/statusgen.go``,
``debugSyncStatus``) as ``istioctl proxy-status`` prints it
(``istioctl/pkg/writer/pilot/status.go``, ``formatStatus``): ``NOT SENT``
when nothing of the type was sent, ``SYNCED`` when the last response sent
was ACKed (its nonce), else ``STALE`` (not answered yet, or NACKed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from pymesh.controlplane.ads import Connection, Nack, Watch
from pymesh.controlplane.autoregistration import CONNECTED_AT, CONTROLLER_ANNOTATION, DISCONNECTED_AT
from pymesh.controlplane.errors import StoreError, ValidationError
from pymesh.controlplane.graph import WINDOW, AgentSource, Graph, PrometheusSource
from pymesh.controlplane.health import rfc3339
from pymesh.controlplane.registry import AUTO_GROUP_ANNOTATION, HEALTH_CHECKS_ANNOTATION, Endpoint, Registry
from pymesh.controlplane.snapshot import XDS_TYPES
from pymesh.mesh.node import ISTIO_VERSION
from pymesh.mesh.values import truthy
from pymesh.mesh.xds import SHORT

if TYPE_CHECKING:
    from pymesh.controlplane.ca.ca import Leaf
    from pymesh.controlplane.server import ControlPlane

SYNCED, NOT_SENT, STALE = "SYNCED", "NOT SENT", "STALE"
Key = tuple[str, str]  # (namespace, name)
# The columns of `pymesh proxy-status`, in istioctl's order (CDS, LDS, EDS, RDS), then NDS.
TYPES = ("CDS", "LDS", "EDS", "RDS", "NDS")
assert {SHORT[t] for t in XDS_TYPES} == set(TYPES)


def sync_status(w: Watch | None) -> str:
    """istiod's ``debugSyncStatus``: by nonce, not by version."""
    if w is None or not w.nonce:
        return NOT_SENT
    return SYNCED if w.acked_nonce == w.nonce else STALE


def _nack(n: Nack | None) -> dict[str, Any] | None:
    if n is None:
        return None
    return {"nonce": n.nonce, "version": n.version, "message": n.message, "at": _time(n.at)}


def _time(ts: float) -> str:
    return rfc3339(ts)


def _watch(w: Watch | None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": sync_status(w)}
    if w is None:
        return out
    out.update(
        nonceSent=w.nonce,
        nonceAcked=w.acked_nonce,
        versionSent=w.sent_version,
        versionAcked=w.acked,
        subscribed=None if w.names is None else sorted(w.names),  # null: wildcard
        nacked=bool(w.nack),  # the last response answered was NACKed
        lastNack=_nack(w.last_nack),
    )
    return out


def _certificate(leaf: Leaf | None, now: float) -> dict[str, Any] | None:
    """A workload certificate's serial (lower-case hex, as Envoy's admin ``/certs`` shows it:
    ``admin/v3/certs.proto``), expiry and the seconds left (negative once expired)."""
    if leaf is None:
        return None
    return {
        "serial": f"{leaf.serial:x}",
        "notAfter": _time(leaf.not_after),
        "expiresInSeconds": int(leaf.not_after - now),
    }


def _leaf(cp: ControlPlane, conn: Connection) -> Leaf | None:
    """The certificate a stream's proxy holds, as far as this replica knows (on the loop)."""
    return cp.security.certificate(conn) if cp.security is not None else None


def _proxy(conn: Connection, replica: str, leaf: Leaf | None, now: float) -> dict[str, Any]:
    p = conn.proxy
    assert p is not None
    by_short = {SHORT[t]: w for t, w in conn.watches.items() if t in SHORT}
    return {
        "nodeId": p.node_id,
        "proxyId": p.id,  # <name>.<namespace>, istioctl's NAME column
        "type": p.type,
        "namespace": p.namespace,
        "clusterId": p.cluster_id,
        "network": p.network,
        "ipAddresses": list(p.ip_addresses),
        "istioVersion": str(p.metadata.get(ISTIO_VERSION) or ""),
        "userAgent": p.user_agent,
        "peer": conn.peer,
        "stream": "delta" if conn.delta else "sotw",
        "connectionId": conn.id,
        "connectedAt": _time(conn.connected_at),
        "replica": replica,
        "certificate": _certificate(leaf, now),
        "xds": {short: _watch(by_short.get(short)) for short in TYPES},
    }


def replica_name(cp: ControlPlane) -> str:
    return cp.replica.replica if cp.replica is not None else cp.instance_id


def proxies(cp: ControlPlane) -> dict[str, Any]:
    replica = replica_name(cp)

    def run() -> list[dict[str, Any]]:
        now = time.time()
        return [_proxy(c, replica, _leaf(cp, c), now) for c in cp.ads.connections.values() if c.proxy is not None]

    rows = cp.call_soon(run)
    rows.sort(key=lambda r: (r["proxyId"], r["connectionId"]))
    return {"replica": replica, "proxies": rows}


def services(cp: ControlPlane) -> dict[str, Any]:
    snap = cp.ads.snapshot  # immutable; one reference read
    return {"replica": replica_name(cp), "version": snap.version, "services": _services(snap.registry)}


def _endpoint(e: Endpoint, port: int, health: str, message: str) -> dict[str, Any]:
    return {
        "kind": e.kind,  # Pod | WorkloadEntry | ServiceEntry
        "namespace": e.namespace,
        "name": e.name,
        "address": e.address,
        "port": e.port,
        "servicePort": port,
        "network": e.network,
        "locality": e.locality,
        "health": health,
        "healthMessage": message,
        "tlsMode": e.tls_mode,
        "serviceAccount": e.service_account,  # the SPIFFE identity, "" when none
        "weight": e.weight,
    }


def _services(reg: Registry) -> list[dict[str, Any]]:
    out = []
    for svc in sorted(reg.services, key=lambda s: (s.namespace, s.hostname)):
        eps = []
        for port in svc.ports:
            key = (svc.hostname, port.number)
            # Envoy's HealthStatus names (config/core/v3/health_check.proto): the endpoints EDS
            # serves, then the health-checked WorkloadEntries it leaves out until Healthy is True.
            eps += [_endpoint(e, port.number, "HEALTHY", "") for e in reg.endpoints.get(key, ())]
            eps += [_endpoint(e, port.number, "UNHEALTHY", m) for e, m in reg.unhealthy.get(key, ())]
        out.append(
            {
                "hostname": svc.hostname,
                "namespace": svc.namespace,
                "name": svc.name,
                "registry": svc.registry,
                "addresses": [*svc.addresses, *svc.auto_addresses],
                "resolution": svc.resolution,
                "ports": [{"name": p.name, "port": p.number, "protocol": p.istio_protocol} for p in svc.ports],
                "endpoints": eps,
            }
        )
    return out


def _condition(doc: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in (doc.get("status") or {}).get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == kind:
            return c
    return None


def workload_entries(cp: ControlPlane) -> dict[str, Any]:
    def run() -> tuple[list[tuple[str, Mapping[str, Any]]], list[Key], dict[Key, int], dict[Key, Leaf]]:
        docs: list[tuple[str, Mapping[str, Any]]] = []
        for o in cp._configured_with_overlays():
            if o.kind == "WorkloadEntry":
                docs.append((f"file:{o.source}", o.raw))
        configured = {(ns, n) for k, ns, n in cp._objects if k == "WorkloadEntry"}
        for key, doc in cp.registrations.entries.items():
            if key not in configured:
                docs.append(("registered", doc))
        groups = sorted((ns, n) for k, ns, n in cp._objects if k == "WorkloadGroup")
        streams: dict[Key, int] = {}
        leaves: dict[Key, Leaf] = {}  # the latest-expiring certificate of the entry's streams here
        for c in cp.ads.connections.values():
            # An auto-registered entry's (namespace, name), or a configured one's (kind, namespace, name).
            key = c.attrs.get("entry") or tuple(c.attrs.get("overlay") or ())[1:]
            if key:
                streams[key] = streams.get(key, 0) + 1
                leaf = _leaf(cp, c)
                if leaf is not None and (key not in leaves or leaf.not_after > leaves[key].not_after):
                    leaves[key] = leaf
        return docs, groups, streams, leaves

    docs, groups, streams, leaves = cp.call_soon(run)
    now = time.time()
    held: dict[tuple[str, str], set[str]] | None = None
    store_error = ""
    connections = getattr(cp.store, "connections", None)  # etcd: the replicas' connection keys
    if connections is not None:
        try:
            held = connections()
        except StoreError as err:
            store_error = str(err)
    served: dict[tuple[str, str], set[str]] = {}
    reg = cp.ads.snapshot.registry
    for (host, _port), eps in reg.endpoints.items():
        for ep in eps:
            if ep.kind == "WorkloadEntry":
                served.setdefault((ep.namespace, ep.name), set()).add(host)
    entries = []
    for source, doc in docs:
        md, spec = doc.get("metadata") or {}, doc.get("spec") or {}
        ns, name = str(md.get("namespace") or "default"), str(md.get("name") or "")
        ann = md.get("annotations") or {}
        cond = _condition(doc, "Healthy")
        checked = truthy(str(ann.get(HEALTH_CHECKS_ANNOTATION, "")))
        replicas = None if held is None else sorted(held.get((ns, name), ()))
        if replicas is not None:
            connected = bool(replicas)
        else:
            connected = CONNECTED_AT in ann
        entries.append(
            {
                "namespace": ns,
                "name": name,
                "source": source,  # file:<path> | registered
                "workloadGroup": ann.get(AUTO_GROUP_ANNOTATION) or None,
                "autoRegistered": AUTO_GROUP_ANNOTATION in ann,
                "address": spec.get("address", ""),
                "network": spec.get("network", ""),
                "locality": spec.get("locality", ""),
                "labels": dict(spec.get("labels") or {}),
                "serviceAccount": spec.get("serviceAccount", ""),
                "connected": connected,
                "controller": ann.get(CONTROLLER_ANNOTATION),  # the replica that wrote connectedAt
                "connectedAt": ann.get(CONNECTED_AT),
                "disconnectedAt": ann.get(DISCONNECTED_AT),
                "connectedReplicas": replicas,  # etcd only: every replica holding a stream
                "streamsHere": streams.get((ns, name), 0),  # this replica's streams of it
                "certificate": _certificate(leaves.get((ns, name)), now),  # its proxy's, via its streams here
                "healthChecked": checked,
                "healthy": None if cond is None else cond.get("status") == "True",
                "health": None
                if cond is None
                else {
                    "status": cond.get("status"),
                    "message": cond.get("message", ""),
                    "lastProbeTime": cond.get("lastProbeTime"),
                    "lastTransitionTime": cond.get("lastTransitionTime"),
                },
                "services": sorted(served.get((ns, name), ())),  # hostnames it is an endpoint of now
            }
        )
    entries.sort(key=lambda e: (e["namespace"], e["name"]))
    by_group: dict[tuple[str, str], list[str]] = {g: [] for g in groups}
    for row in entries:
        if row["workloadGroup"]:
            by_group.setdefault((row["namespace"], row["workloadGroup"]), []).append(row["name"])
    return {
        "replica": replica_name(cp),
        "storeError": store_error,
        "workloadGroups": [
            {"namespace": ns, "name": n, "configured": (ns, n) in groups, "entries": names}
            for (ns, n), names in sorted(by_group.items())
        ],
        "workloadEntries": entries,
    }


def _error(e: ValidationError) -> dict[str, Any]:
    return {
        "file": e.file,
        "object": e.obj,
        "field": e.field,
        "message": e.reason,
        "wholeFile": e.whole_file,  # the file did not parse: what it held before keeps serving
        "transient": e.transient,
        "text": str(e),
    }


def config_errors(cp: ControlPlane) -> dict[str, Any]:
    def run() -> tuple[list[ValidationError], dict[str, Any], str]:
        return list(cp.errors), cp.watch.as_dict(), cp.push_error

    errors, watcher, push_error = cp.call_soon(run)
    return {
        "replica": replica_name(cp),
        "configDir": str(cp.config_dir),
        "watcher": watcher,
        "pushError": push_error,
        "errors": [_error(e) for e in errors],
    }


def graph(cp: ControlPlane, agents: AgentSource) -> dict[str, Any]:
    """The traffic graph from the configured Prometheus, else from the agents of this replica's
    ADS streams (the first of each node's ``INSTANCE_IPS``)."""
    doc: dict[str, Any] = {"replica": replica_name(cp), "error": "", "unreachable": {}, "agents": {}}
    try:
        if cp.prometheus_url:
            doc["source"] = f"prometheus:{cp.prometheus_url}"
            doc["window"] = WINDOW
            g = PrometheusSource(cp.prometheus_url).graph()
        else:
            doc["source"] = "agents"
            doc["window"] = None

            def run() -> list[str]:
                return [
                    c.proxy.ip_addresses[0] for c in cp.ads.connections.values() if c.proxy and c.proxy.ip_addresses
                ]

            g, doc["unreachable"], doc["agents"] = agents.graph(cp.call_soon(run))
    except (OSError, ValueError, KeyError) as e:
        doc["error"] = f"{type(e).__name__}: {e}"
        g = Graph()
    doc.update(g.document())
    return doc


def page() -> bytes:
    """The dashboard (``dashboard.html``, package data: shipped in the wheel), its inline
    script allowed by hash in the page's Content-Security-Policy and nothing else loaded:
    no external asset, no inline handler, no other origin (a value that made it into the
    page as markup still could not run)."""
    html = resources.files("pymesh.controlplane").joinpath("dashboard.html").read_text(encoding="utf-8")
    start = html.index("<script>") + len("<script>")
    script = html[start : html.index("</script>", start)]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return html.replace("'SCRIPT_HASH'", f"'sha256-{digest}'", 1).encode()


def routes(cp: ControlPlane) -> dict[str, Any]:
    """The API's paths and the page at ``/``, for :class:`pymesh.admin.AdminServer`."""
    from pymesh.admin import JSON

    def handler(view: Any) -> Any:
        def answer(_query: str) -> tuple[int, str, bytes]:
            return 200, JSON, json.dumps(view(cp), indent=1, sort_keys=True).encode() + b"\n"

        return answer

    html = page()
    agents = AgentSource(cp.agent_status_port)

    return {
        "/": lambda _query: (200, "text/html; charset=utf-8", html),
        "/api/v1/services": handler(services),
        "/api/v1/workloadentries": handler(workload_entries),
        "/api/v1/proxies": handler(proxies),
        "/api/v1/config-errors": handler(config_errors),
        "/api/v1/graph": handler(lambda c: graph(c, agents)),
    }

"""What the agent holds from the control plane, and how a push changes it.

Every xDS push goes through one :class:`MeshState` (ztunnel: "all state
updates code goes in ProxyStateUpdateMutator", ``src/xds.rs``): CDS, EDS,
NDS and LDS resources are decoded, validated by building the native tables,
and swapped in; a push that cannot be applied raises (the xDS client turns
that into a NACK with the text) and leaves what serves untouched. No
threads, no sockets: tests drive it with resources and read the tables.

- ``lb``: one live :class:`pymesh.LbTable` for the agent's lifetime. An
  accepted push rebuilds the clusters it changed (one atomic upsert,
  endpoint state carried over) and removes the ones gone; unchanged
  resources cost nothing.
- ``redirect``: the current :class:`pymesh.RedirectTable` (immutable;
  replaced by one attribute store when clusters or names change). It maps
  every VIP the NDS table gives a service host to ``outbound|<port>||<host>``;
  its include/exclude ranges and ports are the capture settings'.
- ``logical_dns``: ``{cluster: (host, port)}`` for LOGICAL_DNS/STRICT_DNS
  clusters (DNS ServiceEntries), which the lbtable does not hold.
- ``tables``: all of the above as one immutable :class:`Tables` snapshot with
  a generation number; callbacks registered with ``on_update`` run after
  every change (under the apply lock: keep them short).
- ``peer_authentication``: the inbound mTLS mode the ``virtualInbound``
  listener carries; ``apply_mode`` (when set) applies it to the data path
  first, and a refusal is this push's NACK.

Warming (Envoy's cluster warming, ``source/common/upstream/cluster_manager_impl.cc``):
a new EDS cluster joins the lbtable and the redirection table when its
endpoints arrive (its VIPs pass through until then), or after
``warm_timeout`` seconds with none; a changed one keeps its previous version
serving meanwhile. Accepted resources are persisted (:mod:`.persist`) so a
restart without the control plane serves at once.

Size: one handler per push type (CDS, EDS, NDS, LDS, RDS) on one state object, sharing
its ACK/NACK and persistence contract; kept together so the five handlers stay alike.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymesh._native import LbTable, NameTable, PymeshError, RedirectTable, check_http_routes
from pymesh.agent.errors import XdsClientError
from pymesh.agent.outbound import BLACKHOLE, RouteTables, http_routes, read_listeners
from pymesh.agent.persist import StateDir
from pymesh.mesh import xds
from pymesh.mesh.accesslog import access_log_of
from pymesh.mesh.clusters import LB_TYPES, inbound_cluster_port, parse_cluster_name
from pymesh.mesh.errors import XdsResourceError
from pymesh.mesh.inbound import VIRTUAL_INBOUND, mode_of_listener
from pymesh.mesh.xds import CDS, EDS, LDS, NDS, RDS

log = logging.getLogger(__name__)

# (type_url, resources as google.protobuf.Any, version_info, persist) -> None; raise to NACK.
Apply = Callable[..., object]


@dataclass(frozen=True)
class Tables:
    """What the data path reads, as of one change."""

    generation: int
    lb: LbTable
    redirect: RedirectTable
    names: NameTable | None
    logical_dns: dict[str, tuple[str, int]]
    services: tuple[dict[str, Any], ...] = ()  # {"address", "port", "cluster"}: what ``redirect`` maps
    # The HTTP ports' routes for the relay's HTTP path: (port, RouteConfiguration JSON), and
    # the "ip:port" destinations on those ports that stay TCP (OutboundProxy.set_http_routes).
    http_routes: tuple[tuple[int, str], ...] = ()
    http_tcp: tuple[str, ...] = ()
    # istiod's inbound clusters (``inbound|<port>||``) as (port, cluster JSON): the upstream
    # protocol the inbound speaks to the app on each port (OutboundProxy.set_inbound_clusters).
    inbound_clusters: tuple[tuple[int, str], ...] = ()


def _unpack(any_msg: Any, type_url: str, cls: Any) -> Any:
    try:
        return xds.unpack(any_msg, type_url, cls)
    except XdsResourceError as e:
        raise XdsClientError(str(e)) from None


def istio_sans(cluster: dict[str, Any]) -> list[str]:
    """The SPIFFE identities an istiod cluster expects of its ``tlsMode:
    istio`` endpoints: the ``match_subject_alt_names`` of the
    UpstreamTlsContext in its ``tlsMode-istio`` transport socket match (istiod
    puts the identity there, not in EDS metadata: pilot/pkg/networking/core/
    cluster_tls.go, ``buildIstioMutualTLS``)."""
    out: list[str] = []
    for m in cluster.get("transport_socket_matches") or []:
        if (m.get("match") or {}).get("tlsMode") != "istio":
            continue
        tc = (m.get("transport_socket") or {}).get("typed_config") or {}
        vc = ((tc.get("common_tls_context") or {}).get("combined_validation_context") or {}).get(
            "default_validation_context"
        ) or {}
        for san in vc.get("match_subject_alt_names") or []:
            value = san.get("exact") or ""
            if value.startswith("spiffe://"):
                out.append(value)
    return out


def _with_identity(assignment: dict[str, Any], sans: list[str]) -> dict[str, Any]:
    """The assignment with ``istio.service_account`` filled in from the
    cluster's SANs on ``tlsMode: istio`` endpoints that carry none (pymesh's
    control plane puts it in EDS; istiod in CDS). With several SANs the first
    is the one checked: the relay verifies one identity per endpoint."""
    if not sans:
        return assignment
    out = dict(assignment)
    groups = []
    for group in assignment.get("endpoints") or []:
        eps = []
        for ep in group.get("lb_endpoints") or []:
            fm = (ep.get("metadata") or {}).get("filter_metadata") or {}
            if (fm.get("envoy.transport_socket_match") or {}).get("tlsMode") == "istio" and not (
                fm.get("istio") or {}
            ).get("service_account"):
                ep = dict(ep)
                md = dict(ep.get("metadata") or {})
                fm = dict(fm)
                fm["istio"] = {**(fm.get("istio") or {}), "service_account": sans[0]}
                md["filter_metadata"] = fm
                ep["metadata"] = md
            eps.append(ep)
        groups.append({**group, "lb_endpoints": eps})
    out["endpoints"] = groups
    return out


def _svc(name: str, cluster: dict[str, Any]) -> str:
    """An EDS cluster's service name: its service_name, else its name."""
    return str((cluster.get("eds_cluster_config") or {}).get("service_name") or name)


def decode_listeners(resources: list[Any]) -> dict[str, Any]:
    """The listeners of an LDS response by name; one that does not decode,
    has no name or comes twice is an XdsClientError (the push is NACKed)."""
    from envoy.config.listener.v3 import listener_pb2

    out: dict[str, Any] = {}
    for i, a in enumerate(resources):
        lis = _unpack(a, LDS, listener_pb2.Listener)
        if not lis.name:
            raise XdsClientError(f"listeners[{i}]: no name")
        if lis.name in out:
            raise XdsClientError(f"listener {lis.name!r} appears twice")
        out[lis.name] = lis
    return out


def inbound_mode(resources: list[Any]) -> str | None:
    """The mode the ``virtualInbound`` listener of an LDS response carries
    (None when the response does not hold it). A listener that does not decode
    or whose chains say nothing readable is an XdsClientError."""
    lis = decode_listeners(resources).get(VIRTUAL_INBOUND)
    if lis is None:
        return None
    try:
        return mode_of_listener(lis)
    except ValueError as e:
        raise XdsClientError(str(e)) from e


class MeshState:
    def __init__(
        self,
        *,
        namespace: str,
        domain: str,
        search: tuple[str, ...],
        # (services, port clusters, default cluster or None) -> the redirection table.
        redirect_builder: Callable[[list[dict[str, Any]], list[tuple[int, str]], str | None], RedirectTable],
        warm_timeout: float = 15.0,
        lb_seed: int | None = None,
        store: StateDir | None = None,
        identity: dict[str, str] | None = None,
    ) -> None:
        self.namespace, self.domain, self.search = namespace, domain, search
        self._build_redirect = redirect_builder
        self.warm_timeout = warm_timeout
        self.store = store
        self._identity = identity or {}
        self._identity_saved = False
        self.lb = LbTable(seed=lb_seed)
        self.names: NameTable | None = None
        self.services: list[dict[str, Any]] = []
        self.redirect = redirect_builder([], [], None)
        self.logical_dns: dict[str, tuple[str, int]] = {}
        self.tables = Tables(0, self.lb, self.redirect, None, {})
        # Last good resources (protobuf Any by name) and their dict forms.
        self._cds: dict[str, Any] = {}
        self._eds: dict[str, Any] = {}
        self._nds: Any = None
        self._lds: Any = None
        self._rds: dict[str, Any] = {}  # route configuration name -> Any
        self.routing = RouteTables()  # outbound listeners and routes (istiod's shapes)
        self.http: tuple[tuple[tuple[int, str], ...], tuple[str, ...]] = ((), ())
        self.clusters: dict[str, dict[str, Any]] = {}
        self.assignments: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, str] = {}
        self.warming: dict[str, float] = {}  # cluster -> monotonic deadline
        self.peer_authentication: str | None = None  # None: no virtualInbound yet
        self.lock = threading.Lock()
        self._callbacks: list[Callable[[Tables], None]] = []
        # Applies an inbound mTLS mode to the data path; raising NACKs the LDS push.
        self.apply_mode: Callable[[str], None] | None = None
        # The access log the listeners carry ((path, TEXT | JSON) or None), and what applies it.
        self.access_log: tuple[str, str] | None = None
        self.apply_access_log: Callable[[tuple[str, str] | None], None] | None = None
        self.loaded_from_disk: list[str] = []

    # --- reading -----------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """A cluster set has been applied (from the control plane or the saved
        state), possibly empty: the data path has what it needs."""
        return CDS in self.versions

    def eds_names(self) -> set[str]:
        return {_svc(n, c) for n, c in self.clusters.items() if c.get("type") in ("EDS", 3)}

    def handlers(self) -> dict[str, Apply]:
        return {CDS: self.on_cds, EDS: self.on_eds, NDS: self.on_nds, LDS: self.on_lds, RDS: self.on_rds}

    def rds_names(self) -> set[str]:
        return set(self.routing.view.route_names)

    def on_update(self, callback: Callable[[Tables], None]) -> None:
        """Calls ``callback(tables)`` after every change (and once now)."""
        self._callbacks.append(callback)
        callback(self.tables)

    # --- applying pushes -------------------------------------------------------------------

    def _lb_input(self, clusters: dict[str, dict[str, Any]], cla: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for name, c in sorted(clusters.items()):
            if c.get("type") not in LB_TYPES:
                continue
            if c.get("type") == "EDS":
                assignment = cla.get(_svc(name, c))
                c = dict(c)
                if assignment is not None:
                    c["load_assignment"] = _with_identity(assignment, istio_sans(c))
                else:
                    c.pop("load_assignment", None)
            out.append(c)
        return out

    def on_cds(self, type_url: str, resources: list[Any], version: str, *, persist: bool = True) -> set[str]:
        """Applies a CDS response; returns the EDS service names now wanted."""
        from envoy.config.cluster.v3 import cluster_pb2

        clusters: dict[str, dict[str, Any]] = {}
        anys: dict[str, Any] = {}
        logical: dict[str, tuple[str, int]] = {}
        changed: set[str] = set()
        for i, a in enumerate(resources):
            msg = _unpack(a, CDS, cluster_pb2.Cluster)
            if not msg.name:
                raise XdsClientError(f"clusters[{i}]: no name")
            if msg.name in clusters:
                raise XdsClientError(f"cluster {msg.name!r} appears twice")
            old = self._cds.get(msg.name)
            if old is not None and old.value == a.value and msg.name in self.clusters:
                cluster = self.clusters[msg.name]  # same bytes: no conversion, no rebuild
            else:
                cluster = xds.to_dict(msg)
                changed.add(msg.name)
            ctype = cluster.get("type")
            if ctype not in LB_TYPES:
                if ctype in ("LOGICAL_DNS", "STRICT_DNS"):
                    if not msg.load_assignment.endpoints or not msg.load_assignment.endpoints[0].lb_endpoints:
                        raise XdsClientError(f"cluster {msg.name!r}: {ctype} without an endpoint address")
                    sa = msg.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
                    if not sa.address:
                        raise XdsClientError(f"cluster {msg.name!r}: {ctype} without an endpoint address")
                    logical[msg.name] = (sa.address, sa.port_value)
                elif ctype == "ORIGINAL_DST":
                    pass  # Passthrough/InboundPassthrough: the relay connects to the original destination
                elif msg.name in changed:
                    log.warning("cluster %s: type %s not served by the lbtable; left out", msg.name, ctype)
            clusters[msg.name] = cluster
            anys[msg.name] = a
        with self.lock:
            # A changed EDS cluster whose endpoints are not known yet waits for its EDS (its
            # previous version, if any, keeps serving). It is still validated now, on a
            # scratch table, so a bad definition is this push's NACK.
            warming = {
                n for n in changed if clusters[n].get("type") == "EDS" and _svc(n, clusters[n]) not in self.assignments
            }
            if warming:
                LbTable(seed=0).load(self._lb_input({n: clusters[n] for n in warming}, {}), replace=True)
            # SotW CDS carries every cluster; only the new and changed ones are built (one
            # upsert: the lbtable validates them all first and swaps atomically, so an error
            # leaves the serving table unchanged), then the clusters no longer served are removed.
            upsert = self._lb_input({n: clusters[n] for n in changed - warming}, self.assignments)
            if upsert:
                self.lb.load(upsert, replace=False)
            served = {n for n, c in clusters.items() if c.get("type") in LB_TYPES}
            gone = [n for n in self.lb.clusters() if n not in served]
            if gone:
                self.lb.remove(gone)
            self.clusters, self._cds, self.logical_dns = clusters, anys, logical
            now = time.monotonic()
            self.warming = {
                n: self.warming.get(n, now + self.warm_timeout)
                for n in warming | set(self.warming)
                if n in clusters and n not in changed - warming
            }
            self.versions[CDS] = version
            wanted = self.eds_names()
            # Forget endpoints of clusters that are gone (EDS deletion is implicit in xDS:
            # envoyproxy/envoy api/envoy/service/discovery/v3/discovery.proto, resource deletion).
            self.assignments = {k: v for k, v in self.assignments.items() if k in wanted}
            self._eds = {k: v for k, v in self._eds.items() if k in wanted}
            if changed or gone:
                self._rebuild_redirect()
                self._publish()
        if persist:
            self._save(CDS, version, list(anys.values()))
            self._save(EDS, self.versions.get(EDS, ""), list(self._eds.values()))
        return wanted

    def on_eds(self, type_url: str, resources: list[Any], version: str, *, persist: bool = True) -> None:
        from envoy.config.endpoint.v3 import endpoint_pb2

        incoming: dict[str, dict[str, Any]] = {}
        anys: dict[str, Any] = {}
        for i, a in enumerate(resources):
            msg = _unpack(a, EDS, endpoint_pb2.ClusterLoadAssignment)
            if not msg.cluster_name:
                raise XdsClientError(f"load assignment [{i}]: no cluster_name")
            if msg.cluster_name in incoming or msg.cluster_name in anys:
                raise XdsClientError(f"load assignment {msg.cluster_name!r} appears twice")
            anys[msg.cluster_name] = a
            old = self._eds.get(msg.cluster_name)
            if old is not None and old.value == a.value and msg.cluster_name in self.assignments:
                continue  # unchanged (e.g. the full set again after a reconnect): nothing to rebuild
            incoming[msg.cluster_name] = xds.to_dict(msg)
        with self.lock:
            cla = {**self.assignments, **incoming}
            # Only the clusters whose assignment came are rebuilt (an upsert);
            # the others keep their snapshots, round-robin positions and all.
            touched = {n: c for n, c in self.clusters.items() if _svc(n, c) in incoming}
            if touched:
                self.lb.load(self._lb_input(touched, cla), replace=False)
            self.assignments = cla
            self._eds = {**self._eds, **anys}
            self.versions[EDS] = version
            warmed = [n for n in touched if self.warming.pop(n, None) is not None]
            if warmed:
                self._rebuild_redirect()  # their VIPs now lead to them
            if touched:
                self._publish()
        if persist and incoming:
            self._save(EDS, version, list(self._eds.values()))

    def on_nds(self, type_url: str, resources: list[Any], version: str, *, persist: bool = True) -> None:
        if not resources:
            return  # istio-agent ignores an empty NDS response and keeps its table
        if len(resources) != 1:
            raise XdsClientError(f"NDS response with {len(resources)} tables (expected one)")
        table = NameTable.from_nds(resources[0], namespace=self.namespace, domain=self.domain, search=list(self.search))
        with self.lock:
            self.names = table
            self._nds = resources[0]
            self.versions[NDS] = version
            self._rebuild_redirect()
            self._publish()
        if persist:
            self._save(NDS, version, resources)

    def on_lds(self, type_url: str, resources: list[Any], version: str, *, persist: bool = True) -> set[str]:
        """Applies an LDS response (every listener: SotW LDS is the full set);
        returns the route configuration names now wanted."""
        listeners = decode_listeners(resources)
        mode: str | None = None
        inbound = listeners.get(VIRTUAL_INBOUND)
        if inbound is not None:
            try:
                mode = mode_of_listener(inbound)
            except ValueError as e:
                raise XdsClientError(str(e)) from e
        view = read_listeners(listeners)
        access_log = access_log_of(listeners)
        with self.lock:
            if mode is not None and self.apply_mode is not None:
                self.apply_mode(mode)
            if access_log != self.access_log and self.apply_access_log is not None:
                self.apply_access_log(access_log)
            self.access_log = access_log
            if mode is not None:
                self.peer_authentication = mode  # none in this response: the mode in force stays
            routing_changed = view != self.routing.view
            self.routing.listeners, self.routing.view = listeners, view
            wanted = set(view.route_names)
            self.routing.routes = {k: v for k, v in self.routing.routes.items() if k in wanted}
            self._rds = {k: v for k, v in self._rds.items() if k in wanted}
            self._lds = resources
            self.versions[LDS] = version
            if routing_changed:
                self.http = self.routing.http()
                self._rebuild_redirect()
                self._publish()
        if persist:
            self._save(LDS, version, resources)
        return wanted

    def on_rds(self, type_url: str, resources: list[Any], version: str, *, persist: bool = True) -> None:
        """Applies RouteConfigurations (the HTTP ports' virtual hosts)."""
        from envoy.config.route.v3 import route_pb2

        incoming: dict[str, Any] = {}
        anys: dict[str, Any] = {}
        for i, a in enumerate(resources):
            rc = _unpack(a, RDS, route_pb2.RouteConfiguration)
            if not rc.name:
                raise XdsClientError(f"route configurations[{i}]: no name")
            if rc.name in incoming:
                raise XdsClientError(f"route configuration {rc.name!r} appears twice")
            incoming[rc.name] = rc
            anys[rc.name] = a
        with self.lock:
            routes = {**self.routing.routes, **incoming}
            http = http_routes(self.routing.view, routes)
            try:
                # What the relay's HTTP path would refuse is refused here: NACKed, with the
                # route configuration, virtual host, route and field, and the routes serving stay.
                check_http_routes(list(http[0]))
            except PymeshError as e:
                raise XdsClientError(str(e)) from None
            self.routing.routes = routes
            self.http = http
            self._rds = {**self._rds, **anys}
            self.versions[RDS] = version
            self._rebuild_redirect()
            self._publish()
        if persist:
            self._save(RDS, version, list(self._rds.values()))

    def expire_warming(self, now: float) -> None:
        with self.lock:
            expired = {n: self.clusters[n] for n, t in self.warming.items() if t <= now and n in self.clusters}
            if not expired:
                return
            log.warning(
                "no endpoints for %s within %gs; serving without endpoints",
                ", ".join(sorted(expired)),
                self.warm_timeout,
            )
            try:
                self.lb.load(self._lb_input(expired, self.assignments), replace=False)
            except PymeshError as e:  # validated at CDS time; kept out rather than crash the ticker
                log.error("warming clusters not added: %s", e)
            for n in expired:
                self.warming.pop(n, None)
            self._rebuild_redirect()
            self._publish()

    # --- derived tables --------------------------------------------------------------------

    def _rebuild_redirect(self) -> None:
        services: list[dict[str, Any]] = []
        seen: dict[tuple[str, int], str] = {}
        # The outbound listeners and routes first (what istiod sends a sidecar), then the
        # NDS VIPs of every outbound cluster (what pymesh's control plane relies on).
        routed: set[tuple[str, int]] = set()
        for ip, port, cname in self.routing.services():
            if cname not in self.lb and cname not in self.logical_dns:
                continue  # not served (yet): the VIP passes through meanwhile
            if (ip, port) not in seen:
                seen[(ip, port)] = cname
                routed.add((ip, port))
                services.append({"address": ip, "port": port, "cluster": cname})
        names = self.names
        for cname in sorted(self.clusters):
            parsed = parse_cluster_name(cname)
            if parsed is None or names is None or parsed.direction != "outbound":
                continue
            if parsed.subset:
                continue  # subsets are chosen by routes, never by destination
            if cname in self.warming and cname not in self.lb:
                continue  # not serving yet: its VIPs pass through until its endpoints arrive
            m = names.lookup(parsed.host)
            if m is None:
                continue
            for ip in (*m.ipv4, *m.ipv6):
                key = (ip, parsed.port)
                if key in routed:
                    continue  # the listeners and routes decided this one
                if key in seen:
                    if seen[key] != cname:
                        log.warning("%s:%d is a VIP of %s and %s; the first wins", ip, parsed.port, seen[key], cname)
                    continue
                seen[key] = cname
                services.append({"address": ip, "port": parsed.port, "cluster": cname})
        try:
            view = self.routing.view
            ports = [(p, c) for p, c in view.port_clusters if c in self.lb or c in self.logical_dns]
            # REGISTRY_ONLY: the rest goes to BlackHoleCluster (a cluster without endpoints: the
            # relay closes the connection), once CDS has it; ALLOW_ANY: passthrough.
            default = BLACKHOLE if view.default == "blackhole" and BLACKHOLE in self.lb else None
            redirect = self._build_redirect(services, ports, default)
        except Exception as e:
            # The tables this push changed are already serving; a redirection table that
            # cannot be built keeps the previous one (logged), it does not turn an applied
            # push into a NACK.
            log.error("redirection table not rebuilt, keeping the previous one: %s", e)
            return
        self.services, self.redirect = services, redirect

    def _publish(self) -> None:
        self.tables = Tables(
            self.tables.generation + 1,
            self.lb,
            self.redirect,
            self.names,
            dict(self.logical_dns),
            tuple(self.services),
            self.http[0],
            self.http[1],
            tuple(
                (port, json.dumps(c))
                for name, c in sorted(self.clusters.items())
                if (port := inbound_cluster_port(name)) is not None
            ),
        )
        for cb in list(self._callbacks):
            try:
                cb(self.tables)
            except Exception:
                log.exception("table update callback failed")

    # --- persistence -----------------------------------------------------------------------

    def _save(self, type_url: str, version: str, resources: list[Any]) -> None:
        if self.store is None:
            return
        try:
            if not self._identity_saved:
                self.store.save_identity(self._identity)
                self._identity_saved = True
            self.store.save(type_url, version, resources)
        except PymeshError as e:
            log.error("%s", e)

    def load_persisted(self) -> None:
        """Applies the saved state (if it is this agent's), so DNS and routing
        serve before the first push."""
        if self.store is None:
            return
        saved = self.store.identity()
        if saved is not None and saved != self._identity:
            log.warning(
                "saved state in %s belongs to %s; discarded (this agent is %s)", self.store.path, saved, self._identity
            )
            self.store.clear()  # never mixed with this agent's own state later
            return
        for t, apply in (
            (NDS, self.on_nds),
            (CDS, self.on_cds),
            (EDS, self.on_eds),
            (LDS, self.on_lds),
            (RDS, self.on_rds),
        ):
            msg = self.store.load(t)
            if msg is None:
                continue
            try:
                apply(t, list(msg.resources), msg.version_info, persist=False)
            except Exception as e:
                log.warning(
                    "saved %s state in %s not usable (%s); waiting for the control plane", t, self.store.path, e
                )
                continue
            self.loaded_from_disk.append(t.rsplit(".", 1)[-1])
        if self.loaded_from_disk:
            log.info("serving saved tables from %s: %s", self.store.path, ", ".join(self.loaded_from_disk))

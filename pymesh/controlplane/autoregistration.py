"""WorkloadEntry auto-registration and the entries' connection lifecycle,
as istiod's ``pilot/pkg/autoregistration`` does it (istio/istio
``pilot/pkg/autoregistration/controller.go``: ``RegisterWorkload``,
``OnDisconnect``, ``cleanupEntry``, ``QueueWorkloadEntryHealth``).

- Connect with node metadata ``AUTO_REGISTER_GROUP``: the group is looked up
  in the proxy's namespace (absent: ``FAILED_PRECONDITION`` "cannot find
  WorkloadGroup ns/name", the stream fails). Entry name
  ``<group>-<IP[0], ':'->'-'>[-<NETWORK>]``, cut from the front to 253.
  Created only if absent: spec = template, address = IP[0], labels =
  template.labels < group metadata labels < proxy LABELS (minus
  ``istio-locality``), network from ``NETWORK``, locality from the node;
  annotations ``istio.io/autoRegistrationGroup`` < group annotations, plus
  ``proxy.istio.io/health-checks-enabled: "true"`` iff the proxy's
  ``PROXY_CONFIG`` has a ``readinessProbe``; owner = the group. An existing
  entry keeps its spec and labels (Istio does not refresh them either).
- Connect metadata: ``istio.io/workloadController`` = this instance,
  ``istio.io/connectedAt`` = stream start; ``disconnectedAt`` removed.
- Connections are counted per (network, IP, group, namespace); when the last
  one closes the entry gets ``disconnectedAt`` and is deleted after the
  grace period (default 10 s) unless a connection came back.
- Health-only path: ``WORKLOAD_ENTRY`` names a configured entry in the
  proxy's namespace (missing: the stream fails with NOT_FOUND); the control
  plane writes the same connect annotations and the health condition as an
  overlay kept in the store (the config file is never rewritten).
- Group deleted: its entries are removed (the owner-reference GC istiod
  relies on); connected VMs are registered again when it returns (PR #44709).
- Restart: registered entries are reloaded from the store; an entry that was
  connected when the previous process stopped is taken as disconnected at
  start-up, so its VM has one grace period to reconnect.

- Address: the registered address (the proxy's first INSTANCE_IPS, else the
  IP of its node id) must be one other workloads can connect to: not the
  unspecified address, the limited broadcast, multicast, link-local
  (169.254.0.0/16 holds the cloud metadata service 169.254.169.254; fe80::/10),
  reserved or auto-allocated-VIP space, nor another service's VIP (an entry
  there would hijack or black-hole that service's traffic); loopback only when
  the control plane itself listens on loopback (local development). Otherwise
  the stream fails with INVALID_ARGUMENT naming the address and the reason,
  and nothing is created. (istiod takes the address as given; its
  WorkloadEntry validation refuses only malformed ones.)
- Identity (when the control plane runs its CA, pymesh.controlplane.ca): the
  stream's verified identity must be in the group's (entry's) namespace and,
  when the template names a service account, be that account; otherwise the
  stream fails with PERMISSION_DENIED and no entry is created.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from pymesh._native import PymeshError
from pymesh.controlplane import health as healthmod
from pymesh.controlplane.ads import Connection
from pymesh.controlplane.backend import StoreBackend
from pymesh.controlplane.defaults import DEFAULT_GRACE_PERIOD
from pymesh.controlplane.errors import RegistrationError, ValidationError
from pymesh.controlplane.node import Proxy
from pymesh.controlplane.registry import AUTO_GROUP_ANNOTATION, HEALTH_CHECKS_ANNOTATION
from pymesh.controlplane.resources import Object, WorkloadEntry, WorkloadGroup, parse_object

log = logging.getLogger("pymesh.controlplane")

CONTROLLER_ANNOTATION = "istio.io/workloadController"
CONNECTED_AT = "istio.io/connectedAt"
DISCONNECTED_AT = "istio.io/disconnectedAt"
API_VERSION = "networking.istio.io/v1"
# Timestamps round-trip through RFC3339 at microsecond precision; compare with slack.
TIME_SLACK = 1e-3


def entry_name(group: str, ip: str, network: str) -> str:
    name = f"{group}-{ip.replace(':', '-')}"
    if network:
        name += f"-{network}"
    if len(name) > 253:
        log.warning("WorkloadEntry name %s... is longer than 253 characters; cut from the front", name[:40])
        name = name[-253:]
    return name


# Class E (240.0.0.0/4, "reserved for future use") holds the auto-allocated VIP range too.
_V4_RESERVED = ipaddress.IPv4Network("240.0.0.0/4")
_AUTO_V6 = ipaddress.IPv6Network("2001:2::/48")  # pymesh.controlplane.vips.V6_PREFIX


def unusable_address(
    ip: str, *, allow_loopback: bool = False, vip_owner: Callable[[str], str | None] | None = None
) -> str | None:
    """Why ``ip`` cannot be a workload's address, or None when it can."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "not an IP address"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_unspecified:
        return "the unspecified address (it names no host)"
    if addr == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.is_link_local:
        return "a link-local address (169.254.0.0/16 or fe80::/10: the cloud metadata service lives there)"
    if addr.is_loopback and not allow_loopback:
        return "a loopback address (allowed only while the control plane itself listens on loopback, for development)"
    if addr in _V4_RESERVED if isinstance(addr, ipaddress.IPv4Address) else addr in _AUTO_V6:
        return "in reserved address space (it holds the mesh's auto-allocated VIPs)"
    owner = vip_owner(str(addr)) if vip_owner is not None else None
    if owner:
        return f"the VIP of {owner}"
    return None


def object_uid(kind: str, namespace: str, name: str) -> str:
    # Configured objects have no API server to assign a uid; derive a stable one.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pymesh:{kind}/{namespace}/{name}"))


class Registrations:
    """Owns the registered entries and the connection bookkeeping. Runs on the
    control plane's event loop; ``changed`` is called after every change that
    affects endpoints (it schedules a debounced push)."""

    def __init__(
        self,
        store: StoreBackend | None,
        *,
        instance_id: str,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        groups: Callable[[str, str], Object | None],
        configured_entry: Callable[[str, str], Object | None],
        changed: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        address_check: Callable[[str], str | None] | None = None,
    ) -> None:
        self.store = store
        self.instance_id = instance_id
        self.grace_period = grace_period
        self._groups = groups
        self._configured_entry = configured_entry
        self._changed = changed
        self._clock = clock
        # ip -> why it cannot be registered (None: it can); unusable_address() by default.
        self._address_check = address_check or unusable_address
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}
        self.overlays: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._parsed: dict[tuple[str, str], WorkloadEntry] = {}
        self._conns: dict[tuple[str, ...], set[int]] = {}
        self._live: dict[int, Connection] = {}  # auto-registering connections, for re-registration
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        if store is not None:
            for doc in store.registered():
                md = doc.get("metadata") or {}
                self.entries[(md.get("namespace", ""), md.get("name", ""))] = doc
            self.overlays = store.overlays()

    # --- start-up --------------------------------------------------------------

    def recover(self) -> None:
        """Called once on the loop at start: no stream survived the restart."""
        now = self._clock()
        for key, doc in list(self.entries.items()):
            ann = doc["metadata"].setdefault("annotations", {})
            if CONNECTED_AT in ann:
                del ann[CONNECTED_AT]
                ann[DISCONNECTED_AT] = healthmod.rfc3339(now)
                self._put(doc)
                self._schedule_cleanup(key, self.grace_period)
            elif DISCONNECTED_AT in ann:
                since = healthmod.parse_rfc3339(ann[DISCONNECTED_AT]) or now
                self._schedule_cleanup(key, max(0.0, since + self.grace_period - now))

    # --- views -----------------------------------------------------------------

    def registered(self) -> list[WorkloadEntry]:
        out = []
        for key, doc in self.entries.items():
            we = self._parsed.get(key)
            if we is None:
                try:
                    obj = parse_object(doc, source="registered")
                except ValidationError as e:
                    log.error("registered entry %s/%s is invalid and not served: %s", key[0], key[1], e)
                    continue
                assert isinstance(obj.typed, WorkloadEntry)
                we = obj.typed
                self._parsed[key] = we
            out.append(we)
        return out

    def overlay(self, obj: Object) -> Object:
        """A configured WorkloadEntry with the annotations and status this
        control plane wrote for it."""
        ov = self.overlays.get(obj.key)
        if ov is None:
            return obj
        doc = copy.deepcopy(dict(obj.raw))
        md = doc.setdefault("metadata", {})
        md["annotations"] = {**(md.get("annotations") or {}), **ov.get("annotations", {})}
        if "status" in ov:
            doc["status"] = ov["status"]
        try:
            return parse_object(doc, source=obj.source)
        except ValidationError:
            return obj

    # --- connect / disconnect ---------------------------------------------------

    async def on_connect(self, conn: Connection) -> None:
        proxy = conn.proxy
        assert proxy is not None
        if proxy.auto_register_group:
            self._register(conn)
        elif proxy.workload_entry:
            self._attach(conn)

    def _register(self, conn: Connection) -> None:
        target = self._target(conn)
        if target is None:
            return
        group_obj, group, name, conn_key = target
        proxy = conn.proxy
        assert proxy is not None
        ns, ip, group_name = proxy.namespace, proxy.ip_addresses[0], proxy.auto_register_group
        key = (ns, name)
        doc = self.entries.get(key)
        if doc is None:
            doc = build_entry(group_obj, group, name, proxy, self._clock())
            log.info("auto-registered WorkloadEntry %s/%s (address %s, group %s)", ns, name, ip, group_name)
        else:
            doc = copy.deepcopy(doc)
        ann = doc["metadata"].setdefault("annotations", {})
        # Skip when this connection is older than the recorded one (istiod compares connectedAt).
        recorded = healthmod.parse_rfc3339(ann.get(CONNECTED_AT, "")) or 0.0
        if conn.connected_at >= recorded - TIME_SLACK:
            ann[CONTROLLER_ANNOTATION] = self.instance_id
            ann[CONNECTED_AT] = healthmod.rfc3339(conn.connected_at)
            ann.pop(DISCONNECTED_AT, None)
        self._cancel_cleanup(key)
        self._put(doc)
        self._conns.setdefault(conn_key, set()).add(conn.id)
        self._live[conn.id] = conn
        conn.attrs["entry"] = key
        conn.attrs["conn_key"] = conn_key
        self._changed(f"registered {ns}/{name}")

    def _target(self, conn: Connection) -> tuple[Object, WorkloadGroup, str, tuple[str, ...]] | None:
        """The group, the entry name and the connection key of an auto-registering stream, once
        its group, identity and address are checked (RegistrationError otherwise); None when
        the proxy gave no IP or namespace (not registered, not refused)."""
        proxy = conn.proxy
        assert proxy is not None
        group_name, ns = proxy.auto_register_group, proxy.namespace
        if not proxy.ip_addresses or not ns:
            log.warning("%r: no IP or namespace; not auto-registered", conn)
            return None
        group_obj = self._groups(ns, group_name)
        if group_obj is None:
            raise RegistrationError(
                f"cannot find WorkloadGroup {ns}/{group_name} (named by the proxy's AUTO_REGISTER_GROUP); "
                "create the group before the VM connects",
                code="FAILED_PRECONDITION",
            )
        group = group_obj.typed
        assert isinstance(group, WorkloadGroup)
        _check_identity(conn, ns, group.template.service_account, f"WorkloadGroup {ns}/{group_name}")
        ip = proxy.ip_addresses[0]
        reason = self._address_check(ip)
        if reason is not None:
            raise RegistrationError(
                f"cannot register in WorkloadGroup {ns}/{group_name}: the proxy's address {ip} "
                f"(INSTANCE_IPS, else the node id) is {reason}",
                code="INVALID_ARGUMENT",
            )
        network = proxy.network
        return group_obj, group, entry_name(group_name, ip, network), ("auto", network, ip, group_name, ns)

    def _attach(self, conn: Connection) -> None:
        proxy = conn.proxy
        assert proxy is not None
        ns, name = proxy.namespace, proxy.workload_entry
        obj = self._configured_entry(ns, name)
        if obj is None and (ns, name) not in self.entries:
            raise RegistrationError(
                f"cannot find WorkloadEntry {ns}/{name} (named by the proxy's WORKLOAD_ENTRY)", code="NOT_FOUND"
            )
        if obj is not None:
            assert isinstance(obj.typed, WorkloadEntry)
            _check_identity(conn, ns, obj.typed.spec.service_account, f"WorkloadEntry {ns}/{name}")
        if obj is None:
            return  # a registered entry named explicitly: nothing more to track
        if HEALTH_CHECKS_ANNOTATION not in obj.typed.meta.annotations:
            return  # only health-checked entries are tracked (istiod: health-checks-enabled)
        ov = copy.deepcopy(self.overlays.get(obj.key, {}))
        ann = ov.setdefault("annotations", {})
        ann[CONTROLLER_ANNOTATION] = self.instance_id
        ann[CONNECTED_AT] = healthmod.rfc3339(conn.connected_at)
        ann.pop(DISCONNECTED_AT, None)
        self._put_overlay(obj.key, ov)
        conn_key = ("entry", ns, name)
        self._conns.setdefault(conn_key, set()).add(conn.id)
        conn.attrs["overlay"] = obj.key
        conn.attrs["conn_key"] = conn_key

    async def on_disconnect(self, conn: Connection) -> None:
        conn_key = conn.attrs.get("conn_key")
        if conn_key is None:
            return
        ids = self._conns.get(conn_key, set())
        ids.discard(conn.id)
        self._live.pop(conn.id, None)
        if ids:
            return  # another stream of the same workload is still up
        self._conns.pop(conn_key, None)
        now = self._clock()
        if "entry" in conn.attrs:
            key = conn.attrs["entry"]
            doc = self.entries.get(key)
            if doc is None:
                return
            doc = copy.deepcopy(doc)
            ann = doc["metadata"].setdefault("annotations", {})
            recorded = healthmod.parse_rfc3339(ann.get(CONNECTED_AT, "")) or 0.0
            if recorded > conn.connected_at + TIME_SLACK or ann.get(CONTROLLER_ANNOTATION) != self.instance_id:
                return  # a newer connection (or another instance) owns it now
            ann.pop(CONNECTED_AT, None)
            ann[DISCONNECTED_AT] = healthmod.rfc3339(now)
            self._put(doc)
            self._schedule_cleanup(key, self.grace_period)
        elif "overlay" in conn.attrs:
            okey = conn.attrs["overlay"]
            ov = copy.deepcopy(self.overlays.get(okey, {}))
            ann = ov.setdefault("annotations", {})
            ann.pop(CONNECTED_AT, None)
            ann[DISCONNECTED_AT] = healthmod.rfc3339(now)
            self._put_overlay(okey, ov)
            loop = asyncio.get_running_loop()
            self._timers[okey[1:]] = loop.call_later(self.grace_period, self._cleanup_overlay, okey)

    # --- health ------------------------------------------------------------------

    async def on_health(self, conn: Connection, healthy: bool, message: str) -> None:
        now = self._clock()
        if "entry" in conn.attrs:
            key = conn.attrs["entry"]
            doc = self.entries.get(key)
            if doc is None or not healthmod.eligible(doc):
                log.debug("%r: health report for an entry without health checks; ignored", conn)
                return
            self._put(healthmod.with_health(doc, healthy, message, now))
        elif "overlay" in conn.attrs:
            okey = conn.attrs["overlay"]
            ov = copy.deepcopy(self.overlays.get(okey, {}))
            ov["status"] = healthmod.with_health({"status": ov.get("status") or {}}, healthy, message, now)["status"]
            self._put_overlay(okey, ov)
        else:
            log.debug("%r: health report from a proxy with no WorkloadEntry; ignored", conn)
            return
        log.info("%r reports %s%s", conn, "healthy" if healthy else "unhealthy", f": {message}" if message else "")
        self._changed("health")

    # --- cleanup -------------------------------------------------------------------

    def _schedule_cleanup(self, key: tuple[str, str], delay: float) -> None:
        self._cancel_cleanup(key)
        loop = asyncio.get_event_loop()
        self._timers[key] = loop.call_later(delay, self._cleanup, key)

    def _cancel_cleanup(self, key: tuple[str, str]) -> None:
        t = self._timers.pop(key, None)
        if t is not None:
            t.cancel()

    def _cleanup(self, key: tuple[str, str]) -> None:
        self._timers.pop(key, None)
        doc = self.entries.get(key)
        if doc is None:
            return
        ann = doc["metadata"].get("annotations") or {}
        if CONNECTED_AT in ann or AUTO_GROUP_ANNOTATION not in ann:
            return
        since = healthmod.parse_rfc3339(ann.get(DISCONNECTED_AT, "")) or 0.0
        remaining = since + self.grace_period - self._clock()
        if remaining > 0.001:
            self._schedule_cleanup(key, remaining)
            return
        del self.entries[key]
        self._parsed.pop(key, None)
        if self.store is not None:
            self.store.delete_registered(*key)
        log.info("WorkloadEntry %s/%s removed: disconnected for longer than %.1fs", key[0], key[1], self.grace_period)
        self._changed(f"unregistered {key[0]}/{key[1]}")

    def _cleanup_overlay(self, okey: tuple[str, str, str]) -> None:
        self._timers.pop(okey[1:], None)
        ov = self.overlays.get(okey)
        if ov is None or CONNECTED_AT in ov.get("annotations", {}):
            return
        self._put_overlay(okey, healthmod.without_health(ov))
        self._changed("health-checked entry disconnected")

    # --- persistence ----------------------------------------------------------------

    def _put(self, doc: dict[str, Any]) -> None:
        md = doc["metadata"]
        key = (md["namespace"], md["name"])
        self.entries[key] = doc
        self._parsed.pop(key, None)
        if self.store is not None:
            self.store.put_registered(doc)

    def _put_overlay(self, okey: tuple[str, str, str], ov: dict[str, Any]) -> None:
        self.overlays[okey] = ov
        if self.store is not None:
            self.store.put_overlay(*okey, ov)

    def groups_changed(self, exists: Callable[[str, str], bool]) -> None:
        """After a config reload. Entries owned by a WorkloadGroup that no
        longer exists are deleted (Kubernetes' owner-reference GC does this
        for istiod); connected VMs stay connected and are registered again
        when their group comes back (istio/istio PR #44709)."""
        for key, doc in list(self.entries.items()):
            owners = doc["metadata"].get("ownerReferences") or []
            group = next((o.get("name") for o in owners if o.get("kind") == "WorkloadGroup"), None)
            if group is not None and not exists(key[0], group):
                self._cancel_cleanup(key)
                del self.entries[key]
                self._parsed.pop(key, None)
                if self.store is not None:
                    self.store.delete_registered(*key)
                log.info("WorkloadEntry %s/%s removed: its WorkloadGroup %s is gone", key[0], key[1], group)
                self._changed(f"group {key[0]}/{group} deleted")
        for conn in list(self._live.values()):
            entry_key = conn.attrs.get("entry")
            proxy = conn.proxy
            if entry_key is None or entry_key in self.entries or proxy is None:
                continue
            if exists(proxy.namespace, proxy.auto_register_group):
                self._conns.get(conn.attrs["conn_key"], set()).discard(conn.id)
                try:
                    self._register(conn)
                except RegistrationError as e:
                    log.warning("%r: re-registration failed: %s", conn, e)

    def connection_count(self) -> int:
        return sum(len(s) for s in self._conns.values())


def _check_identity(conn: Connection, namespace: str, service_account: str, what: str) -> None:
    """``ensureProxyCanControlEntry`` on streams the security layer
    authenticated (``conn.attrs["identity"]``, set by pymesh.controlplane.ca.service);
    plaintext dev streams carry none and are not checked. Refused before any
    entry is created or touched."""
    ident = conn.attrs.get("identity")
    if ident is None:
        return
    from pymesh.controlplane.ca.authz import check_entry

    try:
        check_entry(ident, namespace, service_account, what)
    except PymeshError as e:
        raise RegistrationError(str(e), code="PERMISSION_DENIED") from e


def build_entry(group_obj: Object, group: WorkloadGroup, name: str, proxy: Proxy, now: float) -> dict[str, Any]:
    """The WorkloadEntry istiod creates for ``proxy`` from ``group`` (``workloadEntryFromGroup``)."""
    ns = group.meta.namespace
    spec = group.template.to_dict()
    spec["address"] = proxy.ip_addresses[0]
    labels: dict[str, str] = {**group.template.labels, **group.template_labels, **proxy.labels}
    labels.pop("istio-locality", None)
    if labels:
        spec["labels"] = labels
    if proxy.network:
        spec["network"] = proxy.network
    if proxy.has_locality:
        spec["locality"] = proxy.locality
        if not proxy.locality:
            spec.pop("locality", None)
    annotations = {AUTO_GROUP_ANNOTATION: group.meta.name, **group.template_annotations}
    if "readinessProbe" in proxy.proxy_config:
        annotations[HEALTH_CHECKS_ANNOTATION] = "true"
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "uid": str(uuid.uuid4()),
        "creationTimestamp": healthmod.rfc3339(now),
        "annotations": annotations,
        "ownerReferences": [
            {
                "apiVersion": group_obj.api_version,
                "kind": "WorkloadGroup",
                "name": group.meta.name,
                "uid": object_uid("WorkloadGroup", ns, group.meta.name),
                "controller": True,
            }
        ],
    }
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": API_VERSION, "kind": "WorkloadEntry", "metadata": metadata, "spec": spec}

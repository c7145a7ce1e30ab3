"""The embeddable control plane: config directory in, xDS out.

Threads: one event-loop thread owns all state (the gRPC aio server, the
connections, the registrations, the store writes, the config watcher and
the debounce timer); the public methods hand work to it and wait. Reading
and parsing configuration is the exception: a scan of the directory and the
parse of what changed run on one worker thread (``pymesh-config``), so a
large file or a hostile one never stalls xDS, the CA or registrations; the
loop only applies the result. A change (config files, a registration, a
health report) only marks the state dirty; after ``debounce`` seconds without
further change (at most ``max_delay`` after the first) the registry is
rebuilt once, published as a new immutable snapshot and pushed to the
connections it concerns.

Config errors never stop serving: a rejected object is logged (file,
object, field) and left out, and when an object that was valid becomes
invalid — or its file stops parsing — the last good version keeps serving
until the file is fixed. A ServiceEntry whose hosts cannot all get an
auto-allocated VIP is rejected the same way, alone.

The watcher never dies: a failed scan (the directory cannot be listed, out
of file descriptors), a failed read or a store error is logged, reported
(:meth:`ControlPlane.status`, the store's ``status`` row that ``pymesh get``
prints, ``/debug/status`` and ``/metrics`` on the monitoring port) and
retried with backoff; nothing is applied from a partial view, and the next
good scan reloads.

Listeners: the plaintext xDS listener (``xds_listen``) is unauthenticated —
any client can register a VM into any group and namespace, and bearer tokens
sent to the CA on it travel in clear — so on anything but a loopback address
it needs ``insecure_xds=True`` (``--insecure-xds``) and says so loudly at
start. Istio serves the same plaintext port (15010); loopback stays allowed,
with a warning, for development and tests.

    cp = ControlPlane("mesh/", xds_listen="127.0.0.1:0", data_dir="/tmp/cp").start()
    ... cp.port ...
    cp.stop()

Size: the control plane's one event loop and everything that must run on it (the config
watcher's state machine, snapshot rebuilds, VIP admission, store writes, lifecycle) stay
together so the ordering between them is visible in one place; what can run elsewhere
is elsewhere (ads, autoregistration, health, snapshot, generators, vips, configdir).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from pymesh.controlplane.ads import DEFAULT_MAX_NODE_BYTES, AdsServer
from pymesh.controlplane.applied import AppliedConfig
from pymesh.controlplane.autoregistration import Registrations, unusable_address
from pymesh.controlplane.backend import EtcdOptions, StoreBackend, open_store
from pymesh.controlplane.configdir import Entry, ScanError, scan
from pymesh.controlplane.defaults import (
    DEFAULT_DEBOUNCE,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_LEASE_TTL,
    DEFAULT_MAX_PENDING_STREAMS,
    DEFAULT_XDS_LISTEN,
)
from pymesh.controlplane.errors import ControlPlaneError, StoreError, ValidationError
from pymesh.controlplane.etcdstore import EtcdStore
from pymesh.controlplane.lograte import clip
from pymesh.controlplane.networks import DEFAULT_CLUSTER_ID, MeshNetworks, NetworksFile, unreachable_endpoints
from pymesh.controlplane.peerauth import DEFAULT_ROOT_NAMESPACE
from pymesh.controlplane.registry import Registry, build_registry
from pymesh.controlplane.replicas import ReplicaSession, SharedRegistrations, replica_id
from pymesh.controlplane.resources import FileCache, LoadResult, Object, ServiceEntry, WorkloadEntry, load_path
from pymesh.controlplane.snapshot import Snapshot
from pymesh.controlplane.store import Store
from pymesh.controlplane.telemetry import MeshAccessLog
from pymesh.controlplane.vips import DEFAULT_QUARANTINE, VipAllocator, VipError, wants_vip
from pymesh.controlplane.yamlsafe import DEFAULT_LIMITS, Limits
from pymesh.mesh.addr import parse_host_port
from pymesh.mesh.defaults import DEFAULT_DOMAIN, DEFAULT_TRUST_DOMAIN, STATUS_PORT
from pymesh.mesh.errors import AddressError

log = logging.getLogger("pymesh.controlplane")
T = TypeVar("T")
Key = tuple[str, str, str]
STATUS_KEY = "controlplane"
# Retry delays of a failing watcher: doubling from the watch interval up to this.
MAX_WATCH_BACKOFF = 10.0
# Rejections logged one by one per reload; the rest are counted (pymesh get lists them all).
MAX_LOGGED_ERRORS = 50


def _split_listen(addr: str) -> tuple[str, int]:
    try:
        return tuple(parse_host_port(addr, what="--xds-listen", listen=True))  # type: ignore[return-value]
    except AddressError as e:
        raise ControlPlaneError(str(e)) from None


def is_loopback(host: str) -> bool:
    """Whether a listen host reaches this machine only (``0.0.0.0``/``::`` do not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WatchState:
    """The config watcher's health, as :meth:`ControlPlane.status` reports it."""

    def __init__(self) -> None:
        self.ok = True
        self.since = time.time()
        self.failures = 0
        self.error = ""
        self.last_scan = 0.0
        self.last_reload = 0.0
        self._last_logged = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": "ok" if self.ok else "failing",
            "since": self.since,
            "failures": self.failures,
            "error": self.error,
            "last_scan": self.last_scan,
            "last_reload": self.last_reload,
        }


class ControlPlane:
    def __init__(
        self,
        config_dir: str | os.PathLike[str],
        *,
        xds_listen: str = DEFAULT_XDS_LISTEN,
        data_dir: str | os.PathLike[str] | None = None,
        persist: bool = True,
        store: str | StoreBackend | None = None,
        store_options: EtcdOptions | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        debounce: float = DEFAULT_DEBOUNCE,
        max_delay: float = 1.0,
        watch_interval: float = 0.5,
        domain: str = DEFAULT_DOMAIN,
        instance_id: str | None = None,
        strategy: str = "incremental",
        security: Any = None,
        plaintext: bool = True,
        insecure_xds: bool = False,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        limits: Limits = DEFAULT_LIMITS,
        max_node_bytes: int = DEFAULT_MAX_NODE_BYTES,
        max_pending_streams: int = DEFAULT_MAX_PENDING_STREAMS,
        vip_quarantine: float = DEFAULT_QUARANTINE,
        monitoring_listen: str | None = None,
        monitoring_allowed_hosts: Sequence[str] = (),
        prometheus_url: str | None = None,
        agent_status_port: int = STATUS_PORT,
        mesh_networks: str | os.PathLike[str] | None = None,
        cluster_id: str = DEFAULT_CLUSTER_ID,
        lease_ttl: int = DEFAULT_LEASE_TTL,
        access_log: tuple[str, str] | None = None,
    ) -> None:
        self.config_dir = Path(config_dir)
        # meshConfig accessLogFile / accessLogEncoding: the workloads' default access log, and
        # where Telemetry's envoy provider writes (pymesh.controlplane.telemetry).
        self.mesh_access_log = MeshAccessLog(*access_log) if access_log else MeshAccessLog()
        # istiod's --networksConfig (meshNetworks) and --clusterID: networks and gateways
        # (pymesh.controlplane.networks). Invalid at start: an error; later: the last good one stays.
        self.cluster_id = cluster_id
        self.networks_file = NetworksFile(Path(mesh_networks), limits) if mesh_networks is not None else None
        self.listen = _split_listen(xds_listen)
        self.plaintext = plaintext or security is None
        if self.plaintext and not is_loopback(self.listen[0]) and not insecure_xds:
            raise ControlPlaneError(
                f"refusing plaintext xDS on {xds_listen}: it is unauthenticated (any client can register a VM "
                "into any WorkloadGroup and namespace and read the whole mesh config, and the CA on it receives "
                "bearer tokens in clear). Use the TLS port (--secure-listen), a loopback address, or pass "
                "--insecure-xds (insecure_xds=True) to accept that"
            )
        self.insecure_xds = insecure_xds
        self.domain = domain
        # meshConfig.rootNamespace: where a PeerAuthentication without selector is mesh-wide.
        self.root_namespace = root_namespace
        # Endpoint identities (EDS service_account) in the CA's trust domain.
        self.trust_domain = str(getattr(security, "trust_domain", "") or DEFAULT_TRUST_DOMAIN)
        self.debounce = debounce
        self.max_delay = max_delay
        self.watch_interval = watch_interval
        self.limits = limits
        self.instance_id = instance_id or f"pymesh-{socket.gethostname()}"
        # The store: SQLite in ``data_dir`` unless ``store`` names another backend
        # (``etcd://h1:2379,h2:2379/prefix``, pymesh.controlplane.backend.open_store) or is one.
        self.store: StoreBackend | None = None
        if persist:
            if store is None:
                self.store = Store(data_dir)
            elif isinstance(store, str):
                self.store = open_store(store, etcd=store_options)
            else:
                self.store = store
        # Objects `pymesh apply` wrote into the store, served with the directory's (applied.py).
        self.applied = AppliedConfig(self.store) if self.store is not None else None
        self._objects: dict[Key, Object] = {}
        self._file_cache: FileCache = {}
        self.errors: list[ValidationError] = []
        self._fingerprint: tuple[Entry, ...] | None = None
        # What the store's mirror holds (None: a row from the previous run, rewritten at the first load);
        # the sources it names are the "existing" owners of a key a new file duplicates, across restarts.
        stored = self.store.configured_sources() if self.store is not None else {}
        self._mirrored: dict[Key, Object | None] = dict.fromkeys(stored)
        self._stored_owners: dict[Key, str] = stored
        self._mirror_dirty = False
        self._mirror_writes = 0  # submitted to the worker, not done yet
        self.watch = WatchState()
        self.push_error = ""
        claim = None
        if isinstance(self.store, EtcdStore):
            # Replicas allocate VIPs through the store's create-if-absent claims (vips.py).
            for conflict in self.store.index_vips():
                log.error("VIP records in the store name one address for two hosts: %s", conflict)
            claim = self.store.claim_vip
        self.vips = VipAllocator(
            self.store.vip_records() if self.store else None, quarantine=vip_quarantine, claim=claim
        )
        self._vip_owners: dict[str, str] | None = None  # service address -> its service, per snapshot
        # Registering a loopback address is for development: only while every listener is on loopback.
        self._loopback_only = is_loopback(self.listen[0]) if self.plaintext else True
        self._loop = asyncio.new_event_loop()
        # On etcd, one of several replicas (pymesh.controlplane.replicas): connection keys on this
        # process's lease, the fenced grace-period sweeper, registrations shared through the store.
        self.replica: ReplicaSession | None = None
        if isinstance(self.store, EtcdStore):
            self.replica = ReplicaSession(
                self.store,
                replica_id(self.instance_id),
                ttl=lease_ttl,
                grace=grace_period,
                poll_interval=watch_interval,
                post=self._post,
            )
        registrations: dict[str, Any] = dict(
            instance_id=self.instance_id,
            grace_period=grace_period,
            groups=lambda ns, name: self._objects.get(("WorkloadGroup", ns, name)),
            configured_entry=lambda ns, name: self._objects.get(("WorkloadEntry", ns, name)),
            changed=self._mark_dirty,
            address_check=self._address_problem,
        )
        self.registrations: Registrations
        if self.replica is not None:
            shared = SharedRegistrations(self.store, session=self.replica, **registrations)
            self.replica.on_entries = shared.sync
            self.replica.on_lease_lost = shared.reassert
            self.replica.on_held = shared.held
            self.registrations = shared
        else:
            self.registrations = Registrations(self.store, **registrations)
        self._version = 0
        self.ads = AdsServer(
            self._build(),
            self.registrations,
            strategy=strategy,
            max_node_bytes=max_node_bytes,
            max_pending_streams=max_pending_streams,
        )
        # pymesh.controlplane.ca.service.SecurityOptions: the CA, the TLS port (15012) and the identity
        # checks. ``plaintext`` keeps the unauthenticated ``xds_listen`` listener too (tests, dev).
        self.security: Any = None
        self.secure_port = 0
        if security is not None:
            from pymesh.controlplane.ca.service import MeshSecurity
            from pymesh.controlplane.store import default_data_dir

            sec_dir = Path(data_dir) if data_dir is not None else default_data_dir()
            self.security = MeshSecurity(sec_dir, security, allow_plaintext=self.plaintext)
            try:
                self._check_shared_ca()
            except BaseException:
                # Nothing started yet: close what exists, so a refused replica leaves nothing open.
                self._loop.close()
                if self.store is not None:
                    self.store.close()
                raise
            self.security.install(self.ads)
            self._loopback_only = self._loopback_only and is_loopback(self.security.listen[0])
        self.monitoring_listen = monitoring_listen
        # Host names the monitoring port serves besides loopback and its bound address (DNS
        # rebinding protection, pymesh.admin.AdminServer).
        self.monitoring_allowed_hosts = tuple(monitoring_allowed_hosts)
        # The traffic graph's source (pymesh.controlplane.graph): a Prometheus scraping the
        # proxies, else the agents' status ports (istio-agent's 15020) scraped from here.
        self.prometheus_url = prometheus_url
        self.agent_status_port = agent_status_port
        self.monitoring: Any = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pymesh-config")
        self._load_lock: asyncio.Lock | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self.port = 0
        self._dirty_since: float | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._reasons: list[str] = []
        self.pushed = threading.Condition()

    def _check_shared_ca(self) -> None:
        """Replicas on one etcd prefix must sign with one CA, or a VM's certificate from one
        replica would not verify at another: the first replica's root goes into the store
        (public material only) and a replica with another root refuses to start, saying why."""
        if not isinstance(self.store, EtcdStore) or self.security is None:
            return
        from pymesh.mesh.pki import fingerprint

        ours = self.security.ca.root_pem
        held = self.store.claim_ca_root(ours)
        if held.strip() != ours.strip():
            raise ControlPlaneError(
                f"the replicas on this store sign with another CA (stored root {fingerprint(held)}, this replica's "
                f"{fingerprint(ours)}): give every replica the same CA (--plugin-ca DIR, Istio's cacerts layout)"
            )

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> ControlPlane:
        self._apply(*self._load_now())
        if self.watch.ok:
            self._persist_status()  # replaces what a previous run recorded
        self.ads.snapshot = self._build()
        if self.replica is not None:
            self.replica.start()  # the lease before any stream can be registered
        self._thread = threading.Thread(target=self._loop.run_forever, name="pymesh-controlplane", daemon=True)
        self._thread.start()
        try:
            self._call(self._astart())
        except BaseException:
            if self.replica is not None:
                self.replica.stop()  # no lease kept alive for a replica that never served
            raise
        if self.plaintext:
            host, port = self.listen[0], self.port
            if is_loopback(host):
                log.warning(
                    "plaintext, unauthenticated xDS on %s:%d (loopback only: development and tests)", host, port
                )
            else:
                for line in (
                    f"INSECURE: plaintext, unauthenticated xDS on {host}:{port} (--insecure-xds)",
                    "INSECURE: any client that reaches it can register a VM into any WorkloadGroup and namespace",
                    "INSECURE: and read the mesh's whole configuration; bearer tokens sent to the CA on it",
                    "INSECURE: travel in clear. Serve VMs on the TLS port (--secure-listen) instead.",
                ):
                    log.warning(line)
            log.info("control plane serving xDS on %s:%d (config %s)", host, port, self.config_dir)
        if self.security is not None:
            log.info(
                "control plane serving xDS and the CA over TLS on %s:%d (config %s)",
                self.security.listen[0],
                self.secure_port,
                self.config_dir,
            )
        if self.monitoring_listen:
            from pymesh.controlplane.monitoring import serve

            self.monitoring = serve(self, self.monitoring_listen)
            log.info("monitoring (/metrics, /debug/status, /api/v1/) on http://%s", self.monitoring.address)
            host = self.monitoring.server.server_address[0]
            if not is_loopback(str(host)):
                log.warning(
                    "the monitoring port %s is not on loopback: its /api/v1/ shows the mesh's topology (every "
                    "service, workload address and identity, rejected configuration) to anyone who can reach it",
                    self.monitoring.address,
                )
        return self

    async def _astart(self) -> None:
        self._load_lock = asyncio.Lock()
        self.registrations.recover()
        server = grpc.aio.server(
            options=[
                ("grpc.max_concurrent_streams", 1 << 20),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.max_pings_without_data", 0),
            ]
        )
        server.add_generic_rpc_handlers((self.ads.handler(),))
        if self.security is not None:
            server.add_generic_rpc_handlers((self.security.handler(),))
        host, port = self.listen
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.plaintext:
            bound = server.add_insecure_port(target)
            if bound == 0:
                raise ControlPlaneError(f"cannot listen on {target}")
            self.port = bound
        internal = server.add_insecure_port("127.0.0.1:0") if self.security is not None else 0
        await server.start()
        self._server = server
        if self.security is not None:
            # The TLS port's connections reach gRPC through this loopback listener.
            self.secure_port = await self.security.start(("127.0.0.1", internal))
        if self.watch_interval > 0:
            self._watch_task = asyncio.ensure_future(self._watch())

    def stop(self, grace: float = 0.2) -> None:
        if self._thread is None:
            if not self._loop.is_closed():
                # Never started: nothing runs, but the loop and the store are open.
                self._loop.close()
                if self.store is not None:
                    self.store.close()
            return
        if self.monitoring is not None:
            self.monitoring.stop()
            self.monitoring = None
        try:
            self._call(self._astop(grace))
        finally:
            if self.replica is not None:
                self.replica.stop()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            # Writes already submitted finish (the store stays whole); loads not started are dropped.
            self._executor.shutdown(wait=True, cancel_futures=True)
            if not self._thread.is_alive():
                self._loop.close()
            self._thread = None
            if self.store is not None:
                self.store.close()

    async def _astop(self, grace: float) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for t in list(self.registrations._timers.values()):
            t.cancel()
        if self.security is not None:
            await self.security.stop()
        if self._server is not None:
            await self._server.stop(grace)
        if isinstance(self.registrations, SharedRegistrations):
            await self.registrations.cancel_background()
        self.ads.limiter.tick()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _post(self, fn: Callable[[], None]) -> None:
        """Runs ``fn`` on the loop, from another thread (the replica's); dropped once it is closed."""
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:
            pass

    def call_soon(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Runs ``fn`` on the control plane's loop (where its state lives)."""
        if self._thread is None:
            return fn()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

        self._loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    # --- configuration: scanned and parsed on the worker thread, applied on the loop ---------

    def _load(self, entries: tuple[Entry, ...], owners: dict[Key, str]) -> LoadResult:
        """Worker thread: parse what changed (the file cache skips the rest)."""
        result = load_path(self.config_dir, self._file_cache, limits=self.limits, entries=entries, owners=owners)
        if self.applied is not None:
            result = self.applied.merge(result, entries, owners)
        for o in result.objects:
            _ = o.body  # the store's JSON, computed here rather than on the loop
        return result

    def _owners(self) -> dict[Key, str]:
        return {**self._stored_owners, **{k: o.source for k, o in self._objects.items()}}

    def _load_now(self) -> tuple[tuple[Entry, ...] | None, LoadResult]:
        """Scan and load synchronously (before the loop runs)."""
        if self.networks_file is not None:
            self.networks_file.refresh()
        try:
            entries = scan(self.config_dir)
        except ScanError as e:
            result = LoadResult()
            result.errors.append(ValidationError(f"cannot read: {e}", file=str(self.config_dir), whole_file=True))
            self._watch_failed(e)
            return None, result
        self.watch.last_scan = time.time()
        return entries, self._load(entries, self._owners())

    async def _in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _reload_if_changed(self, force: bool = False) -> bool:
        assert self._load_lock is not None
        async with self._load_lock:
            entries = await self._in_worker(scan, self.config_dir)
            self.watch.last_scan = time.time()
            if self.networks_file is not None and await self._in_worker(self.networks_file.refresh):
                self._mark_dirty("meshNetworks")  # gateways and networks: EDS (and NDS) views change
            # The applied configuration's version: polled here, at the watcher's interval.
            applied = self.applied is not None and await self._in_worker(self.applied.changed)
            same = entries == self._fingerprint and not applied
            if not force and same and not self._mirror_dirty:
                return False
            if not force and same:
                if not self._mirror_writes:
                    self._write_mirror()  # only the store needs a retry
                return False
            log.info("config changed (%s); reloading", "applied, in the store" if applied else self.config_dir)
            result = await self._in_worker(self._load, entries, self._owners())
            self._apply(entries, result)
            self._after_reload()
            return True

    def _apply(self, entries: tuple[Entry, ...] | None, result: LoadResult) -> None:
        """Loop: the loaded objects become the configuration; last-good versions of
        rejected objects (or of objects in unreadable files) keep serving."""
        fresh = {o.key: o for o in result.objects}
        errors = list(result.errors)
        broken_files = {e.file for e in result.errors if e.whole_file}
        rejected = {(e.file, e.obj) for e in result.errors}
        for key, old in self._objects.items():
            if old.source == "":
                continue
            label = f"{key[0]} {key[1]}/{key[2]}"
            new = fresh.get(key)
            if new is not None and new.source != old.source and old.source in broken_files:
                # Another file defines it while the one that held it does not parse: the held one stays.
                errors.append(
                    ValidationError(
                        f"duplicate: {label} is already defined in {old.source}; this copy is ignored "
                        "(the object held first stays)",
                        file=new.source,
                        obj=label,
                    )
                )
                new = None
            if new is None and (old.source in broken_files or (old.source, label) in rejected):
                fresh[key] = old
                log.warning("%s: keeping the last valid %s until the file is fixed", old.source, label)
        try:
            errors += self._admit_vips(fresh)
        except StoreError:
            self._fingerprint = None  # VIP claims need the store (etcd): nothing applied, retried next tick
            raise
        for e in errors[:MAX_LOGGED_ERRORS]:
            log.error("rejected: %s", e)
        if len(errors) > MAX_LOGGED_ERRORS:
            log.error("... and %d more rejected (all of them: `pymesh get`)", len(errors) - MAX_LOGGED_ERRORS)
        self._objects = fresh
        self._stored_owners = {}
        self.errors = errors
        self.watch.last_reload = time.time()
        transient = [e for e in errors if e.transient]
        # A read that failed for a passing reason (out of descriptors) is retried at the next tick.
        self._fingerprint = None if transient or entries is None else entries
        if transient:
            self._watch_failed(ScanError(f"{len(transient)} file(s) could not be read: {transient[0]}"))
        self._write_mirror()

    def _admit_vips(self, fresh: dict[Key, Object]) -> list[ValidationError]:
        """Every ServiceEntry gets its hosts' VIPs or is rejected alone (its last good
        version, whose VIPs it holds, keeps serving). Objects that already hold all their
        VIPs go first, so a newcomer can never take what a served object has."""

        def hosts(o: Object) -> list[str]:
            se = o.typed
            assert isinstance(se, ServiceEntry)
            return [h for h in se.hosts if wants_vip(se, h)]

        vips = self.vips
        wanting = [(k, o, hosts(o)) for k, o in fresh.items() if isinstance(o.typed, ServiceEntry)]
        before = {k: hosts(o) for k, o in self._objects.items() if isinstance(o.typed, ServiceEntry)}
        protected = {h for _, _, hs in wanting for h in hs}
        protected.update(h for hs in before.values() for h in hs)
        released = vips.released()
        newcomers = []
        for k, o, hs in wanting:
            if not all(vips.holds(h) for h in hs):
                newcomers.append((k, o, hs))
            elif any(h in released for h in hs):
                vips.reserve(hs)  # held already: only un-releases
        errors: list[ValidationError] = []
        for k, o, hs in sorted(newcomers, key=lambda p: p[0]):
            try:
                vips.reserve(hs, protected=protected.__contains__)
            except VipError as e:
                se = o.typed
                assert isinstance(se, ServiceEntry)
                errors.append(
                    ValidationError(
                        f"host {e.host!r}: {e}",
                        file=o.source,
                        obj=f"ServiceEntry {k[1]}/{k[2]}",
                        field=f"spec.hosts[{se.hosts.index(e.host)}]",
                    )
                )
                old = self._objects.get(k)
                if old is not None and old is not o and all(vips.holds(h) for h in before[k]):
                    fresh[k] = old
                    vips.reserve(before[k])  # held already: only un-releases
                else:
                    del fresh[k]
        wanted = {h for o in fresh.values() if isinstance(o.typed, ServiceEntry) for h in hosts(o)}
        gone = vips.release_unused(wanted)
        if gone:
            log.info(
                "VIPs of %d host(s) no longer configured released (%s%s); another host may get them %.0fs from now "
                "at the earliest",
                len(gone),
                ", ".join(gone[:5]),
                ", ..." if len(gone) > 5 else "",
                vips.quarantine,
            )
        self._persist_vips()
        return errors

    def _persist_vips(self) -> None:
        """VIP changes to the store, on the worker thread (SQLite releases the GIL; the loop goes on)."""
        if self.store is None:
            return
        changed, deleted = self.vips.take_changes()
        if not changed and not deleted:
            return
        store = self.store

        def write() -> None:
            store.put_vips(changed, deleted)

        def done(fut: concurrent.futures.Future[None]) -> None:
            e = fut.exception()
            if e is not None:
                # The allocation stands in memory; it is written with the next change that succeeds.
                log.error("VIPs not persisted: %s", e)
                self.vips.requeue(changed, deleted)

        self._store_write(write, done)

    def _write_mirror(self) -> None:
        """The store's mirror by difference, written on the worker thread; a store
        error is reported (the watcher is failing) and retried at the next tick."""
        if self.store is None:
            return
        objects = dict(self._objects)
        upserts = [(k[0], k[1], k[2], o.source, o.body) for k, o in objects.items() if self._mirrored.get(k) is not o]
        deleted = [k for k in self._mirrored if k not in objects]
        rejected = [str(e) for e in self.errors]
        store = self.store
        self._mirror_dirty = True
        self._mirror_writes += 1

        def write() -> None:
            store.update_configured(upserts, deleted, rejected)

        def done(fut: concurrent.futures.Future[None]) -> None:
            self._mirror_writes -= 1
            e = fut.exception()
            if e is not None:
                self._watch_failed(e)
                return
            self._mirrored = dict(objects)
            self._mirror_dirty = self._mirror_writes > 0

        self._store_write(write, done)

    def _store_write(self, write: Callable[[], None], done: Callable[[concurrent.futures.Future[None]], None]) -> None:
        """Runs ``write`` on the worker thread (writes stay in order: one worker); ``done``
        runs on the loop, or at once when the loop is not running yet (start-up)."""
        if self._thread is None:
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()
            try:
                write()
                fut.set_result(None)
            except Exception as e:
                fut.set_exception(e)
            done(fut)
            return
        fut = self._executor.submit(write)

        def back(f: concurrent.futures.Future[None]) -> None:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(done, f)

        fut.add_done_callback(back)

    # --- the watcher -------------------------------------------------------------------

    async def _watch(self) -> None:
        delay = self.watch_interval
        while True:
            await asyncio.sleep(delay)
            self.ads.limiter.tick()
            try:
                await self._reload_if_changed()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never ends the watcher: reported, retried
                self._watch_failed(e)
            else:
                if self._fingerprint is not None and not self._mirror_dirty:
                    self._watch_ok()
            delay = (
                self.watch_interval
                if self.watch.ok
                else min(MAX_WATCH_BACKOFF, self.watch_interval * 2 ** min(self.watch.failures, 8))
            )

    def _watch_failed(self, e: BaseException) -> None:
        w = self.watch
        message = clip(f"{type(e).__name__}: {e}" if not isinstance(e, ControlPlaneError) else str(e), 1000)
        first = w.ok
        if first:
            w.ok, w.since, w.failures = False, time.time(), 0
        w.failures += 1
        w.error = message
        now = time.monotonic()
        if first or now - w._last_logged >= 60:
            w._last_logged = now
            expected = isinstance(e, (ControlPlaneError, OSError))
            log.log(
                logging.ERROR,
                "config watcher: %s (attempt %d since %s; config changes are not applied until this clears)",
                message,
                w.failures,
                time.strftime("%H:%M:%S", time.localtime(w.since)),
                exc_info=None if expected else e,
            )
        if first and not isinstance(e, StoreError):  # a failing store cannot record that it fails
            self._persist_status()

    def _watch_ok(self) -> None:
        w = self.watch
        if w.ok:
            return
        log.warning("config watcher recovered after %d failed attempts: %s", w.failures, w.error)
        w.ok, w.since, w.failures, w.error = True, time.time(), 0, ""
        self._persist_status()

    def _persist_status(self) -> None:
        if self.store is None:
            return
        try:
            self.store.put_status(STATUS_KEY, {"watcher": self.watch.as_dict(), "pid": os.getpid()})
        except StoreError as e:
            log.error("status not recorded in the store: %s", e)

    def _after_reload(self) -> None:
        self.registrations.groups_changed(lambda ns, name: ("WorkloadGroup", ns, name) in self._objects)
        self._mark_dirty("config")

    def reload(self, wait: bool = True, timeout: float = 30.0) -> int:
        """Re-reads the config now (what the watcher does on a change) and,
        with ``wait``, pushes at once; returns the snapshot version."""
        if self._thread is None:
            self._apply(*self._load_now())
            self._after_reload()
            if wait:
                self._flush()
            return self.ads.snapshot.version

        async def run() -> int:
            try:
                await self._reload_if_changed(force=True)
            except ScanError as e:  # reported like the watcher reports it; nothing applied
                self._watch_failed(e)
            if wait:
                self._flush()
            return self.ads.snapshot.version

        return self._call(run(), timeout)

    def flush(self) -> int:
        """Pushes pending changes now; returns the current snapshot version."""

        def run() -> int:
            if self._dirty_since is not None:
                self._flush()
            return self.ads.snapshot.version

        return self.call_soon(run)

    # --- snapshots and pushes ----------------------------------------------------------

    def _configured_with_overlays(self) -> list[Object]:
        out = []
        for o in self._objects.values():
            out.append(self.registrations.overlay(o) if isinstance(o.typed, WorkloadEntry) else o)
        return out

    def _build(self) -> Snapshot:
        registry = build_registry(
            self._configured_with_overlays(),
            self.registrations.registered(),
            vips=self.vips,
            domain=self.domain,
            trust_domain=self.trust_domain,
            root_namespace=self.root_namespace,
            mesh_networks=self.networks_file.current if self.networks_file is not None else MeshNetworks(),
            cluster_id=self.cluster_id,
            mesh_access_log=self.mesh_access_log,
        )
        self._persist_vips()  # normally nothing: _apply reserved every VIP the registry reads
        self._vip_owners = None  # built when a registration asks (_address_problem)
        self._version += 1
        return Snapshot(self._version, registry)

    def _address_problem(self, ip: str) -> str | None:
        if self._vip_owners is None:
            self._vip_owners = _vip_owners(self.ads.snapshot.registry)
        return unusable_address(ip, allow_loopback=self._loopback_only, vip_owner=self._vip_owners.get)

    def _mark_dirty(self, reason: str) -> None:
        loop = self._loop
        now = loop.time()
        self._reasons.append(reason)
        if self._dirty_since is None:
            self._dirty_since = now
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        delay = min(self.debounce, max(0.0, self._dirty_since + self.max_delay - now))
        self._flush_handle = loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        reasons, self._reasons = self._reasons, []
        changed_at, self._dirty_since = self._dirty_since, None
        try:
            snap = self._build()
        except Exception as e:  # a bug must not stop every later push: reported, retried at the next change
            self.push_error = clip(f"{type(e).__name__}: {e}", 1000)
            log.exception("push failed; still serving v%d", self.ads.snapshot.version)
            return
        self.push_error = ""
        # _dirty_since is the loop's clock, time.monotonic() (asyncio's default loop)
        sent = self.ads.push(snap, changed_at=changed_at)
        log.info(
            "push v%d (%s): %d responses queued in %d ms",
            snap.version,
            ", ".join(sorted(set(reasons))) or "-",
            sent,
            self.ads.stats["last_push_ms"],
        )
        with self.pushed:
            self.pushed.notify_all()

    # --- views for callers --------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self.ads.snapshot

    def status(self) -> dict[str, Any]:
        """What the control plane would say about its health (``/debug/status``)."""

        def run() -> dict[str, Any]:
            front = getattr(self.security, "front", None)
            return {
                "config": {
                    "dir": str(self.config_dir),
                    "objects": len(self._objects),
                    "rejected": len(self.errors),
                    "watcher": self.watch.as_dict(),
                },
                "push": {"version": self.ads.snapshot.version, "error": self.push_error},
                "xds": {
                    "connections": len(self.ads.connections),
                    "pending": self.ads.pending,
                    "max_pending": self.ads.max_pending_streams,
                    **self.ads.stats,
                },
                "log_lines_dropped": self.ads.limiter.dropped_total,
                "vips": {"held": len(self.vips.allocations), "released": len(self.vips.released())},
                "tls": dict(front.stats, pending=front.pending) if front is not None else None,
                "networks": self._networks_status(),
                "replica": None
                if self.replica is None
                else {
                    "id": self.replica.replica,
                    "lease": f"{self.replica.lease:x}",
                    "leader": self.replica.is_leader,
                    "store_error": self.replica.store_error,
                    **self.replica.stats,
                },
                # VirtualServices hidden for a host by an older one (pymesh.controlplane.virtualservice).
                "virtual_service_conflicts": list(self.ads.snapshot.registry.virtual_services.conflicts),
            }

        return self.call_soon(run)

    def _networks_status(self) -> dict[str, Any]:
        """Gateways in use, and the endpoints proxies on other networks do not get (their network
        has a gateway, and they take no Istio mTLS, on which the gateway's SNI routing depends)."""
        registry = self.ads.snapshot.registry
        dropped = unreachable_endpoints(registry)
        nf = self.networks_file
        return {
            "mesh_networks": None if nf is None else {"file": str(nf.path), "error": nf.error},
            "gateways": [f"{g.network}={g.address}:{g.port}" for g in registry.gateways.all()],
            "dropped_cross_network": len(dropped),
            "dropped_endpoints": dropped[:100],
        }

    def objects(self) -> list[Object]:
        """Configured objects (with their overlays) and registered entries."""

        def run() -> list[Object]:
            from pymesh.controlplane.resources import parse_object

            out = self._configured_with_overlays()
            for key, doc in sorted(self.registrations.entries.items()):
                if ("WorkloadEntry", *key) in self._objects:
                    continue
                try:
                    out.append(parse_object(doc, source="registered"))
                except ValidationError:
                    continue
            return out

        return self.call_soon(run)

    def registered_entry(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.call_soon(lambda: self.registrations.entries.get((namespace, name)))


def _vip_owners(registry: Registry) -> dict[str, str]:
    """Every service address (cluster IPs, ServiceEntry addresses, auto-allocated VIPs) -> its service.
    Cluster IPs and allocated VIPs are canonical already; ServiceEntry addresses are as written."""
    out: dict[str, str] = {}
    for svc in registry.services:
        owner = f"{svc.registry} service {svc.hostname}"
        for a in svc.auto_addresses:
            out.setdefault(a, owner)
        for a in svc.addresses:
            if "/" in a:
                continue
            out.setdefault(a if svc.registry == "Kubernetes" else str(ipaddress.ip_address(a)), owner)
    return out

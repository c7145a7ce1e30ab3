"""Several control planes ("replicas") over one etcd prefix: who holds which VM, who sweeps.

Every replica serves xDS and registers the VMs that connect to it, as every istiod replica does
(istio/istio ``pilot/pkg/autoregistration/controller.go`` runs on all of them). What they share
goes through etcd (:class:`~pymesh.controlplane.etcdstore.EtcdStore`, its "replicas" section);
the SQLite store is one process and keeps its behaviour (annotations and timers in
:mod:`pymesh.controlplane.autoregistration`).

Decisions, and why:

- **Connection ownership lives in etcd, on the holder's lease.** Each replica grants one lease
  (``--lease-ttl``, 10 s by default; etcd's minimum is 2 s) and refreshes it every TTL/3 from its
  own thread, so a busy event loop does not let it lapse. While it holds a stream of an
  auto-registered entry it keeps ``conn/<ns>/<name>/<replica>`` on that lease. The entry counts
  as connected while any such key exists. A replica that dies (``kill -9``, host lost) stops
  refreshing and etcd deletes all its keys at once when the TTL runs out: its VMs are released
  without anyone comparing clocks. Istio records the holder in annotations
  (``istio.io/workloadController``, ``connectedAt``) and orders connects and disconnects of
  different istiod replicas by those timestamps; the races that took are in
  https://github.com/istio/istio/issues/28799 and https://github.com/istio/istio/pull/29604.
- **Replica ids are per process** (``<instance id>-<6 hex>``): a restarted replica is a new owner,
  never the continuation of keys whose lease it no longer has.
- **Registration is create-if-absent.** One txn creates the entry and the connection key if the
  entry does not exist; if it does, a second txn writes the connection key only while that same
  incarnation exists (its create revision). So two replicas registering the same VM at once make
  one entry, and a connection key never survives its entry's deletion by the sweeper (the
  sweep's own compares, below, make exactly one of the two win). In this mode an entry carries
  no per-replica annotations: every replica's copy is the same document, and a VM moving
  between replicas writes only its connection keys.
- **The grace-period sweep runs on one replica, and is fenced.** The leader is whoever created
  ``leader/sweeper`` (on its lease; a create-if-absent txn, retried by every replica at each
  sweep tick, so a dead leader is replaced within TTL + one tick). Its delete of an entry is one
  txn conditional on (1) the entry's mod revision being the one it judged, (2) the leader key's
  create revision being its own (a deposed leader's delete fails: the fencing of etcd's
  ``clientv3/concurrency`` election recipe, ``IsOwner``) and (3) no key under the entry's
  connection prefix (an empty range compares as an absent key, ``etcdserver/apply.go:
  applyCompare``). So an entry whose VM is connected to any replica is never deleted, and two
  sweepers cannot both delete it. The grace starts when the leader first sees the prefix empty
  or sees a new release marker (``released/<ns>/<name>``, rewritten in the disconnect's txn), so
  a reconnection that came and went between two sweeps restarts it; a new leader starts every
  grace afresh, so it can stretch, never shrink.
- **Group GC** (an entry whose WorkloadGroup is gone, the owner-reference GC istiod relies on) is
  also the leader's, fenced the same way but regardless of connections, as Istio deletes them.
- **Lease lost** (the process was paused past its TTL): a new lease is granted and every
  connection this replica still holds is claimed again (re-creating entries swept meanwhile).
  Leadership goes with the old lease.
- **Sharing registrations.** Each replica polls the registered entries' version (count and
  newest mod revision, as ``applied_version``) at its watch interval and re-reads them when it
  changes; every replica then builds its snapshot from the same documents, and serves the same
  resources with the same (content-hash) versions. A live stream whose entry disappeared (swept
  during a pause, group GC) is registered again. Real etcd watches would cut the delay to
  milliseconds; polling keeps the standard-library gateway client.
- **etcd in trouble never stalls the event loop.** Registration calls (claim, release, health)
  run on a few io threads, serialized per entry by an asyncio lock, so only the streams
  concerned wait. While the store fails, one call per second probes it and the others are
  refused at once: a new VM's stream fails with ``UNAVAILABLE`` "registration store unavailable
  ..." and retries; streams already registered keep being served from the last snapshot. No
  deletion can happen meanwhile (leases cannot expire without an etcd leader; but a frozen
  leader that resumes after more than a TTL expires every lease at once, and each replica then
  claims its streams again, as after a pause of its own). A connection key that cannot be
  removed is retried; until then the entry stays connected, the safe direction.
- **A write whose answer was lost may still be applied**, after the caller's deadline (a frozen
  member serves the request it buffered once it runs again). A claim of a stream refused with
  ``UNAVAILABLE`` may so leave this replica's connection key behind, on its live lease: the entry
  would look connected for as long as the replica runs, never swept. A release retried after
  such a timeout may land after the VM's next claim on the same replica and remove the key of a
  live stream: the entry would be swept while connected. So every sweep tick each replica reads
  which entries it holds a key of and reconciles them with its streams: a key without a stream
  is released, a stream without its key is claimed again, each once seen at two reads in a row
  (one read may predate a claim or release in progress; both run under the entry's lock). Both
  take at most two ticks, well within the grace period.
- **VIPs** are claimed in the store by whichever replica allocates (:mod:`pymesh.controlplane.vips`).
- **Not shared yet**: overlays of health-checked configured entries (``WORKLOAD_ENTRY``: each
  replica writes its own annotations and health, as one process does), a graceful drain before
  the lease is revoked at shutdown (the lease revoke drops the keys at once; the VMs' grace
  starts then), and group GC after a leadership change (a new leader deletes entries of a
  removed group only at its next configuration reload; disconnected ones are swept anyway).
  The SotW ``version_info`` stays a per-process counter (what existing clients and tests
  expect); the resources' own versions, which delta clients send back on reconnect, are
  content hashes and equal on every replica.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pymesh.controlplane import health as healthmod
from pymesh.controlplane.ads import Connection
from pymesh.controlplane.autoregistration import Registrations, build_entry
from pymesh.controlplane.defaults import DEFAULT_LEASE_TTL
from pymesh.controlplane.errors import RegistrationError, StoreError
from pymesh.controlplane.etcdstore import EtcdStore
from pymesh.controlplane.registry import AUTO_GROUP_ANNOTATION

log = logging.getLogger("pymesh.controlplane")

SWEEPER = "sweeper"
MAX_SWEEP_INTERVAL = 5.0
# Store errors in the background thread are logged at most this often.
LOG_EVERY = 30.0
# While the store fails, one registration call per this many seconds tries it; the others are
# refused at once (UNAVAILABLE) instead of each waiting out the store's deadline.
PROBE_EVERY = 1.0
# Registration calls in flight at once (each one txn or two; etcd serves them concurrently).
IO_WORKERS = 4

Key = tuple[str, str]
T = TypeVar("T")


def replica_id(instance_id: str) -> str:
    return f"{instance_id}-{os.urandom(3).hex()}"


class ReplicaSession:
    """This replica's lease, its connection keys, the sweeper election and the sweep.

    ``post`` runs a callable on the control plane's event loop; through it ``on_entries(revision,
    docs)`` receives the registered entries when they change and ``on_lease_lost()`` is called
    after a new lease replaced an expired one; ``on_held(keys)`` receives the entries this
    replica holds a connection key of, every sweep tick."""

    def __init__(
        self,
        store: EtcdStore,
        replica: str,
        *,
        ttl: int = DEFAULT_LEASE_TTL,
        grace: float,
        poll_interval: float,
        post: Callable[[Callable[[], None]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.replica = replica
        self.ttl = max(2, int(ttl))
        self.grace = grace
        self.poll_interval = poll_interval if poll_interval > 0 else 0.5
        # Below the TTL too, so a connection that lives shorter than a sweep tick but on a
        # replica that dies is still seen (its key outlives the replica by the TTL).
        self.sweep_interval = max(0.1, min(MAX_SWEEP_INTERVAL, grace / 4, self.ttl / 2))
        self._post = post
        # Set by the owner before start (SharedRegistrations.sync / .reassert), called through post.
        self.on_entries: Callable[[int, list[dict[str, Any]]], None] = lambda rev, docs: None
        self.on_lease_lost: Callable[[], None] = lambda: None
        self.on_held: Callable[[set[Key]], None] = lambda keys: None
        self._clock = clock
        self.lease = 0
        self.leader_rev: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._empty_since: dict[Key, float] = {}
        self._released_rev: dict[Key, int] = {}
        self._version = ""
        self._last_ok = 0.0
        self._logged: dict[str, float] = {}
        self.stats = {"deleted": 0, "leases": 0, "sweeps": 0}
        # Registration calls run here, off the event loop (pymesh-replica-io).
        self.io = concurrent.futures.ThreadPoolExecutor(IO_WORKERS, thread_name_prefix="pymesh-replica-io")
        self._health = threading.Lock()
        self._down: str | None = None  # the store's last error while it fails
        self._probing = False
        self._last_probe = 0.0

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.lease = self.store.lease_grant(self.ttl)
        self.stats["leases"] += 1
        self._last_ok = self._clock()
        log.info("replica %s: lease %x (TTL %ds)", self.replica, self.lease, self.ttl)
        self._thread = threading.Thread(target=self._run, name="pymesh-replica", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the thread, gives up leadership and revokes the lease: this replica's connection
        keys go at once, so the grace of the VMs it held starts now (the replicas they reconnect
        to hold their own keys)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.store.client.timeout * 3)
            self._thread = None
        self.io.shutdown(wait=True, cancel_futures=True)
        try:
            if self.leader_rev is not None:
                self.store.resign(SWEEPER, self.leader_rev)
            if self.lease:
                self.store.lease_revoke(self.lease)
        except StoreError as e:
            log.warning("replica %s: lease not revoked (it expires in %ds): %s", self.replica, self.ttl, e)
        self.leader_rev = None

    @property
    def is_leader(self) -> bool:
        return self.leader_rev is not None

    @property
    def store_error(self) -> str:
        """The store's last error while it fails (registrations are refused), else empty."""
        return self._down or ""

    # --- what the registrations call (on the io threads) -------------------------------

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` unless the store is failing and another call probes it, or the last
        failure was less than PROBE_EVERY ago: then StoreError at once with the last reason."""
        with self._health:
            down = self._down
            if down is not None and (self._probing or self._clock() - self._last_probe < PROBE_EVERY):
                raise StoreError(f"etcd unavailable: {down}")
            if down is not None:
                self._probing = True
                self._last_probe = self._clock()
        try:
            out = fn(*args)
        except StoreError as e:
            self._store_failed(e)
            raise
        finally:
            if down is not None:
                with self._health:
                    self._probing = False
        self._store_ok()
        return out

    def _store_failed(self, e: StoreError) -> None:
        if "lease not found" in str(e):
            return  # this replica's lease expired (a pause), not the store: the keep-alive replaces it
        with self._health:
            self._last_probe = self._clock()  # the next probe no sooner than PROBE_EVERY from now
            self._down = str(e)

    def _store_ok(self) -> None:
        with self._health:
            self._down = None

    def claim(self, doc: Mapping[str, Any]) -> tuple[dict[str, Any], bool, int]:
        return self._guarded(self.store.claim_registered, doc, self.replica, self.lease)

    def release(self, namespace: str, name: str) -> None:
        self._guarded(self.store.release_registered, namespace, name, self.replica)

    def put_if_exists(self, doc: Mapping[str, Any]) -> int:
        """The store revision of the write, 0 when the entry is no longer registered."""
        return self._guarded(self.store.put_registered_if_exists, doc)

    def delete_orphan(self, namespace: str, name: str) -> bool:
        """Group GC: the leader deletes (fenced), the others leave it to the leader."""
        rev = self.leader_rev
        if rev is None:
            return False
        return self.store.delete_registered_fenced(
            namespace, name, mod_revision=None, leader_rev=rev, require_disconnected=False
        )

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        now = self._clock()
        due = {"keepalive": now + self.ttl / 3, "poll": now, "sweep": now}
        while not self._stop.is_set():
            now = self._clock()
            for what, at in sorted(due.items(), key=lambda kv: kv[1]):
                if at > now or self._stop.is_set():
                    continue
                try:
                    if what == "keepalive":
                        self._keepalive()
                    elif what == "poll":
                        self._poll()
                    else:
                        self._campaign()
                        if self.leader_rev is not None:
                            self.sweep()
                        self._held()
                except StoreError as e:
                    self._log_error(what, e)
                except Exception:  # a bug must not end the thread (keep-alives)
                    log.exception("replica %s: %s failed", self.replica, what)
                interval = {"keepalive": self.ttl / 3, "poll": self.poll_interval, "sweep": self.sweep_interval}
                due[what] = self._clock() + interval[what]
            self._stop.wait(max(0.01, min(due.values()) - self._clock()))

    def _log_error(self, what: str, e: StoreError) -> None:
        now = self._clock()
        if now - self._logged.get(what, -LOG_EVERY) >= LOG_EVERY:
            self._logged[what] = now
            log.error("replica %s: %s: %s", self.replica, what, e)

    def _keepalive(self) -> None:
        try:
            ttl = self.store.lease_keepalive(self.lease)
        except StoreError as e:
            self._store_failed(e)
            if self._clock() - self._last_ok > self.ttl:
                self.leader_rev = None  # cannot know it still leads; its fenced writes would fail anyway
            raise
        self._store_ok()
        if ttl > 0:
            self._last_ok = self._clock()
            return
        # Expired: the process was paused (or cut off from etcd) past the TTL. Its keys are gone.
        old = self.lease
        self.leader_rev = None
        self._empty_since.clear()
        self.lease = self.store.lease_grant(self.ttl)
        self.stats["leases"] += 1
        self._last_ok = self._clock()
        log.warning(
            "replica %s: lease %x expired (paused or cut off for over %ds); new lease %x, its connections "
            "are claimed again",
            self.replica,
            old,
            self.ttl,
            self.lease,
        )
        self._post(self.on_lease_lost)

    def _poll(self) -> None:
        version = self.store.registered_version()
        if version == self._version:
            return
        rev, rows = self.store.registered_at()
        self._version = version
        docs = [doc for doc, _ in rows]
        self._post(lambda: self.on_entries(rev, docs))

    def _held(self) -> None:
        mine = {key for key, holders in self.store.connections().items() if self.replica in holders}
        self._post(lambda: self.on_held(mine))

    def _campaign(self) -> None:
        rev = self.store.campaign(SWEEPER, self.replica, self.lease)
        if rev is not None and self.leader_rev != rev:
            log.info("replica %s leads the grace-period sweeper (revision %d)", self.replica, rev)
            self._empty_since.clear()  # a new leader starts every grace afresh
        elif rev is None and self.leader_rev is not None:
            log.info("replica %s no longer leads the sweeper", self.replica)
        self.leader_rev = rev

    def sweep(self) -> list[Key]:
        """One pass of the leader: auto-registered entries without a connection key for the
        grace period are deleted (fenced, see the module docstring). Returns what it deleted."""
        leader_rev = self.leader_rev
        if leader_rev is None:
            return []
        self.stats["sweeps"] += 1
        _, rows = self.store.registered_at()
        conns = self.store.connections()
        released = self.store.released()
        now = self._clock()
        seen: set[Key] = set()
        deleted: list[Key] = []
        for doc, mod_rev in rows:
            md = doc.get("metadata") or {}
            key = (str(md.get("namespace", "")), str(md.get("name", "")))
            if AUTO_GROUP_ANNOTATION not in (md.get("annotations") or {}):
                continue  # a registered entry not made by auto-registration: not swept
            seen.add(key)
            if key in conns:
                self._empty_since.pop(key, None)
                continue
            marker = released.get(key, 0)
            if self._released_rev.get(key) != marker:
                self._released_rev[key] = marker
                self._empty_since[key] = now  # released since the last look: the grace restarts
            since = self._empty_since.setdefault(key, now)
            if now - since < self.grace:
                continue
            if self.store.delete_registered_fenced(key[0], key[1], mod_revision=mod_rev, leader_rev=leader_rev):
                deleted.append(key)
                self.stats["deleted"] += 1
                self._empty_since.pop(key, None)
                log.info(
                    "WorkloadEntry %s/%s removed: no replica held its VM for %.1fs (sweeper %s)",
                    key[0],
                    key[1],
                    now - since,
                    self.replica,
                )
        for key in list(self._empty_since):
            if key not in seen:
                del self._empty_since[key]
                self._released_rev.pop(key, None)
        if deleted:
            self._version = ""  # re-read at the next poll
        return deleted


class SharedRegistrations(Registrations):
    """Auto-registration when the store is shared (etcd): the entry is created if absent and this
    replica's connection key written in one txn; the last local stream of an entry removes the
    key; no connect/disconnect annotations and no local cleanup timers (the sweeper decides).
    Store calls run on the session's io threads, serialized per entry, so an etcd in trouble
    delays the streams it concerns and never the event loop. Health-checked configured entries
    (``WORKLOAD_ENTRY``) keep the single-process behaviour."""

    def __init__(self, *args: Any, session: ReplicaSession, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session = session
        self._store_rev = 0  # the newest store revision this replica wrote or read
        self._locks: weakref.WeakValueDictionary[Key, asyncio.Lock] = weakref.WeakValueDictionary()
        self._tasks: set[asyncio.Task[None]] = set()
        # At the last read of this replica's connection keys (``held``): keys without a stream
        # here, and streams here without their key.
        self._stray: set[Key] = set()
        self._missing: set[Key] = set()
        self._releasing: dict[Key, int] = {}  # entries with a release in progress (retried), how many

    def _spawn(self, coro: Any) -> None:
        """Runs ``coro`` in the background on the running loop (none yet: not run)."""
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_background(self) -> None:
        """At shutdown: re-registrations and retried releases stop (the lease revoke that
        follows removes every key of this replica)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _lock(self, key: Key) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.session.io, fn, *args)

    def recover(self) -> None:
        pass  # other replicas may hold the stored entries; the sweeper decides

    # --- connect / disconnect --------------------------------------------------------------

    async def on_connect(self, conn: Connection) -> None:
        proxy = conn.proxy
        assert proxy is not None
        if proxy.auto_register_group:
            await self._register_shared(conn)
        else:
            await super().on_connect(conn)

    async def _register_shared(self, conn: Connection, *, again: bool = False) -> None:
        """``again``: a stream registered before (lease replaced, entry gone): skipped if it has
        closed meanwhile."""
        target = self._target(conn)
        if target is None:
            return
        group_obj, group, name, conn_key = target
        proxy = conn.proxy
        assert proxy is not None
        key = (proxy.namespace, name)
        doc = build_entry(group_obj, group, name, proxy, self._clock())
        async with self._lock(key):
            if again and conn.id not in self._live:
                return
            fut = asyncio.get_running_loop().run_in_executor(self.session.io, self.session.claim, doc)
            try:
                stored, created, rev = await asyncio.shield(fut)
            except asyncio.CancelledError:
                # The stream went away while its key was being written: removed once written.
                fut.add_done_callback(lambda f: self._undo_claim(f, key, conn_key))
                raise
            except StoreError as e:
                raise RegistrationError(
                    f"registration store unavailable, cannot register {key[0]}/{key[1]}: {e}", code="UNAVAILABLE"
                ) from e
            self._store_rev = max(self._store_rev, rev)
            if self.entries.get(key) != stored:
                self.entries[key] = stored
                self._parsed.pop(key, None)
                self._changed(f"registered {key[0]}/{key[1]}")
            if created:
                log.info(
                    "auto-registered WorkloadEntry %s/%s (address %s, group %s)",
                    *key,
                    proxy.ip_addresses[0],
                    group.meta.name,
                )
            self._conns.setdefault(conn_key, set()).add(conn.id)
            self._live[conn.id] = conn
            conn.attrs["entry"] = key
            conn.attrs["conn_key"] = conn_key

    def _undo_claim(self, fut: asyncio.Future[Any], key: Key, conn_key: tuple[str, ...]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._spawn(self._release(key, conn_key))

    async def on_disconnect(self, conn: Connection) -> None:
        if "entry" not in conn.attrs:
            await super().on_disconnect(conn)  # health-checked configured entries: as before
            return
        conn_key = conn.attrs["conn_key"]
        ids = self._conns.get(conn_key, set())
        ids.discard(conn.id)
        self._live.pop(conn.id, None)
        if ids:
            return  # another stream of the same workload is still up here
        self._conns.pop(conn_key, None)
        # In the background: a store in trouble must not hold the closing stream's handler.
        self._spawn(self._release(conn.attrs["entry"], conn_key))

    async def _release(self, key: Key, conn_key: tuple[str, ...]) -> None:
        """This replica's connection key removed, unless a stream of the entry is back here. On a
        store error it is retried (until then the entry stays connected: the safe direction; a
        replica that stops revokes its lease, which removes them all)."""
        self._releasing[key] = self._releasing.get(key, 0) + 1
        try:
            for attempt in itertools.count():
                async with self._lock(key):
                    if conn_key in self._conns:
                        return
                    try:
                        await self._io(self.session.release, *key)
                        return
                    except StoreError as e:
                        if attempt == 0:
                            log.warning("connection to %s/%s not released in the store (retrying): %s", *key, e)
                    except RuntimeError:
                        return  # the io threads are shut down: the replica stops and revokes its lease
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
        finally:
            if self._releasing[key] > 1:
                self._releasing[key] -= 1
            else:
                del self._releasing[key]

    # --- health -------------------------------------------------------------------------

    async def on_health(self, conn: Connection, healthy: bool, message: str) -> None:
        key = conn.attrs.get("entry")
        if key is None:
            await super().on_health(conn, healthy, message)
            return
        doc = self.entries.get(key)
        if doc is None or not healthmod.eligible(doc):
            log.debug("%r: health report for an entry without health checks; ignored", conn)
            return
        doc = healthmod.with_health(doc, healthy, message, self._clock())
        try:
            rev = await self._io(self.session.put_if_exists, doc)
        except StoreError as e:
            log.error("%r: health report not recorded: %s", conn, e)
            return
        if not rev:
            log.info("%r: health report for %s/%s, which is no longer registered", conn, *key)
            return
        # A poll that read the store before this write must not bring the old health back.
        self._store_rev = max(self._store_rev, rev)
        self.entries[key] = doc
        self._parsed.pop(key, None)
        log.info("%r reports %s%s", conn, "healthy" if healthy else "unhealthy", f": {message}" if message else "")
        self._changed("health")

    # --- what other replicas did ----------------------------------------------------------------

    def sync(self, revision: int, docs: list[dict[str, Any]]) -> None:
        """The registered entries as the store holds them at ``revision`` (other replicas'
        registrations and health reports, the sweeper's deletions). A read older than what this
        replica wrote since is skipped: the next poll brings a newer one."""
        if revision < self._store_rev:
            return
        self._store_rev = revision
        fresh = {}
        for doc in docs:
            md = doc.get("metadata") or {}
            fresh[(str(md.get("namespace", "")), str(md.get("name", "")))] = doc
        if fresh == self.entries:
            return
        for key in set(self.entries) | set(fresh):
            if self.entries.get(key) != fresh.get(key):
                self._parsed.pop(key, None)
        self.entries = fresh
        self._changed("registrations in the store")
        self._register_again(lambda conn: conn.attrs.get("entry") not in self.entries)

    def held(self, keys: set[Key]) -> None:
        """The entries this replica holds a connection key of in the store, against its streams
        (see the module docstring): a key without a stream here is released, a stream without
        its key claimed again, when seen so at two reads in a row."""
        live: set[Key] = {conn.attrs["entry"] for conn in self._live.values()}
        stray, missing = keys - live - self._releasing.keys(), live - keys
        for key in stray & self._stray:
            self._spawn(self._release_stray(key))
        again = missing & self._missing
        if again:
            log.warning("%d streams here without their connection key in the store: claimed again", len(again))
            self._register_again(lambda conn: conn.attrs.get("entry") in again)
        self._stray, self._missing = stray, missing

    async def _release_stray(self, key: Key) -> None:
        async with self._lock(key):
            if any(conn.attrs.get("entry") == key for conn in self._live.values()):
                return  # registered meanwhile: the key is this stream's
            try:
                await self._io(self.session.release, *key)
            except (StoreError, RuntimeError):
                return  # seen again at the next sweep tick (RuntimeError: the io threads are shut down)
        log.warning("connection key of %s/%s released: no stream here (a claim applied after it timed out)", *key)

    def reassert(self) -> None:
        """After this replica's lease was replaced: every entry it holds a stream of is claimed
        again on the new lease (and re-created if it was swept meanwhile)."""
        self._register_again(lambda conn: True)

    def _register_again(self, which: Callable[[Connection], bool]) -> None:
        seen: set[Any] = set()
        for conn in list(self._live.values()):
            key = conn.attrs.get("entry")
            proxy = conn.proxy
            if key is None or key in seen or proxy is None or not which(conn):
                continue
            if self._groups(proxy.namespace, proxy.auto_register_group) is None:
                continue  # registered again when the group is back (groups_changed)
            seen.add(key)
            self._spawn(self._again(conn))

    async def _again(self, conn: Connection) -> None:
        """Registers a live stream again; while the store is unavailable, retried with backoff
        for as long as the stream lives."""
        for attempt in itertools.count():
            try:
                await self._register_shared(conn, again=True)
                return
            except RegistrationError as e:
                if attempt == 0:
                    log.warning("%r: not registered again: %s", conn, e)
                if e.code != "UNAVAILABLE":
                    return
            await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
            if conn.id not in self._live:
                return

    def groups_changed(self, exists: Callable[[str, str], bool]) -> None:
        """Entries whose WorkloadGroup is gone are deleted by the sweeper's leader (fenced; the
        others see them go at their next poll); connected VMs are registered again when their
        group comes back, as in one process."""
        for key, doc in list(self.entries.items()):
            owners = doc["metadata"].get("ownerReferences") or []
            group = next((o.get("name") for o in owners if o.get("kind") == "WorkloadGroup"), None)
            if group is not None and not exists(key[0], group) and self.session.is_leader:
                self._spawn(self._delete_orphan(key, group))
        self._register_again(lambda conn: conn.attrs.get("entry") not in self.entries)

    async def _delete_orphan(self, key: Key, group: str) -> None:
        try:
            if await self._io(self.session.delete_orphan, *key):
                log.info("WorkloadEntry %s/%s removed: its WorkloadGroup %s is gone", key[0], key[1], group)
        except StoreError as e:
            log.error("WorkloadEntry %s/%s (WorkloadGroup %s gone) not removed: %s", key[0], key[1], group, e)

"""The embeddable control plane: config directory in, xDS out.

Threads: one event-loop thread owns all state (the gRPC aio server, the
connections, the registrations, the store writes, the config watcher and
the debounce timer); the public methods hand work to it and wait. A change
(config files, a registration, a health report) only marks the state dirty;
after ``debounce`` seconds without further change (at most ``max_delay``
after the first) the registry is rebuilt once, published as a new
immutable snapshot and pushed to the connections it concerns.

Config errors never stop serving: a rejected object is logged (file,
object, field) and left out, and when an object that was valid becomes
invalid — or its file stops parsing — the last good version keeps serving
until the file is fixed.

    cp = ControlPlane("mesh/", xds_listen="127.0.0.1:0", data_dir="/tmp/cp").start()
    ... cp.port ...
    cp.stop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc

from pymesh.controlplane.ads import AdsServer
from pymesh.controlplane.autoregistration import Registrations
from pymesh.controlplane.defaults import DEFAULT_DEBOUNCE, DEFAULT_GRACE_PERIOD, DEFAULT_XDS_LISTEN
from pymesh.controlplane.errors import ControlPlaneError, ValidationError
from pymesh.controlplane.peerauth import DEFAULT_ROOT_NAMESPACE
from pymesh.controlplane.registry import build_registry
from pymesh.controlplane.resources import YAML_SUFFIXES, FileCache, Object, WorkloadEntry, load_path
from pymesh.controlplane.snapshot import Snapshot
from pymesh.controlplane.store import Store
from pymesh.controlplane.vips import VipAllocator
from pymesh.mesh.addr import parse_host_port
from pymesh.mesh.defaults import DEFAULT_DOMAIN, DEFAULT_TRUST_DOMAIN
from pymesh.mesh.errors import AddressError

log = logging.getLogger("pymesh.controlplane")
T = TypeVar("T")


def _split_listen(addr: str) -> tuple[str, int]:
    try:
        return tuple(parse_host_port(addr, what="--xds-listen", listen=True))  # type: ignore[return-value]
    except AddressError as e:
        raise ControlPlaneError(str(e)) from None


class ControlPlane:
    def __init__(
        self,
        config_dir: str | os.PathLike[str],
        *,
        xds_listen: str = DEFAULT_XDS_LISTEN,
        data_dir: str | os.PathLike[str] | None = None,
        persist: bool = True,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        debounce: float = DEFAULT_DEBOUNCE,
        max_delay: float = 1.0,
        watch_interval: float = 0.5,
        domain: str = DEFAULT_DOMAIN,
        instance_id: str | None = None,
        strategy: str = "incremental",
        security: Any = None,
        plaintext: bool = True,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    ) -> None:
        self.config_dir = Path(config_dir)
        self.listen = _split_listen(xds_listen)
        self.domain = domain
        # meshConfig.rootNamespace: where a PeerAuthentication without selector is mesh-wide.
        self.root_namespace = root_namespace
        # Endpoint identities (EDS service_account) in the CA's trust domain.
        self.trust_domain = str(getattr(security, "trust_domain", "") or DEFAULT_TRUST_DOMAIN)
        self.debounce = debounce
        self.max_delay = max_delay
        self.watch_interval = watch_interval
        self.instance_id = instance_id or f"pymesh-{socket.gethostname()}"
        self.store = Store(data_dir) if persist else None
        self._objects: dict[tuple[str, str, str], Object] = {}
        self._file_cache: FileCache = {}
        self.errors: list[ValidationError] = []
        self._fingerprint: tuple[tuple[str, int, int], ...] = ()
        self.vips = VipAllocator(self.store.vips() if self.store else None)
        self.registrations = Registrations(
            self.store,
            instance_id=self.instance_id,
            grace_period=grace_period,
            groups=lambda ns, name: self._objects.get(("WorkloadGroup", ns, name)),
            configured_entry=lambda ns, name: self._objects.get(("WorkloadEntry", ns, name)),
            changed=self._mark_dirty,
        )
        self._version = 0
        self.ads = AdsServer(self._build(), self.registrations, strategy=strategy)
        # pymesh.controlplane.ca.service.SecurityOptions: the CA, the TLS port (15012) and the identity
        # checks. ``plaintext`` keeps the unauthenticated ``xds_listen`` listener too (tests, dev).
        self.security: Any = None
        self.plaintext = plaintext or security is None
        self.secure_port = 0
        if security is not None:
            from pymesh.controlplane.ca.service import MeshSecurity
            from pymesh.controlplane.store import default_data_dir

            sec_dir = Path(data_dir) if data_dir is not None else default_data_dir()
            self.security = MeshSecurity(sec_dir, security, allow_plaintext=plaintext)
            self.security.install(self.ads)
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self.port = 0
        self._dirty_since: float | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._reasons: list[str] = []
        self.pushed = threading.Condition()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> ControlPlane:
        self._reload()
        self.ads.snapshot = self._build()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pymesh-controlplane", daemon=True)
        self._thread.start()
        self._call(self._astart())
        if self.plaintext:
            log.info("control plane serving xDS on %s:%d (config %s)", self.listen[0], self.port, self.config_dir)
        if self.security is not None:
            log.info(
                "control plane serving xDS and the CA over TLS on %s:%d (config %s)",
                self.security.listen[0],
                self.secure_port,
                self.config_dir,
            )
        return self

    async def _astart(self) -> None:
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
            return
        try:
            self._call(self._astop(grace))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
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

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

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

    # --- configuration ----------------------------------------------------------------

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        root = self.config_dir
        try:
            files = [root] if root.is_file() else [p for p in root.rglob("*") if p.suffix in YAML_SUFFIXES]
            out = []
            for p in sorted(files):
                st = p.stat()
                out.append((str(p), st.st_mtime_ns, st.st_size))
            return tuple(out)
        except OSError:
            return ()

    def _reload(self) -> None:
        """Reads the config directory; keeps last-good objects for rejected ones."""
        self._fingerprint = self._scan()
        result = load_path(self.config_dir, self._file_cache)
        fresh = {o.key: o for o in result.objects}
        broken_files = {
            e.file for e in result.errors if e.reason.startswith("invalid YAML") or e.reason.startswith("cannot read")
        }
        rejected = {(e.file, e.obj) for e in result.errors}
        for key, old in self._objects.items():
            if key in fresh or old.source == "":
                continue
            label = f"{key[0]} {key[1]}/{key[2]}"
            if old.source in broken_files or (old.source, label) in rejected:
                fresh[key] = old
                log.warning("%s: keeping the last valid %s until the file is fixed", old.source, label)
        for e in result.errors:
            log.error("rejected: %s", e)
        self._objects = fresh
        self.errors = result.errors
        if self.store is not None:
            self.store.replace_configured(
                ((k[0], k[1], k[2], o.source, dict(o.raw)) for k, o in sorted(fresh.items())),
                [str(e) for e in result.errors],
            )

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval)
            if self._scan() != self._fingerprint:
                log.info("config changed under %s; reloading", self.config_dir)
                self._reload()
                self._after_reload()

    def _after_reload(self) -> None:
        self.registrations.groups_changed(lambda ns, name: ("WorkloadGroup", ns, name) in self._objects)
        self._mark_dirty("config")

    def reload(self, wait: bool = True, timeout: float = 30.0) -> int:
        """Re-reads the config now (what the watcher does on a change) and,
        with ``wait``, pushes at once; returns the snapshot version."""

        def run() -> int:
            self._reload()
            self._after_reload()
            if wait:
                self._flush()
            return self.ads.snapshot.version

        return self.call_soon(run, timeout)

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
        before = dict(self.vips.allocations)
        registry = build_registry(
            self._configured_with_overlays(),
            self.registrations.registered(),
            vips=self.vips,
            domain=self.domain,
            trust_domain=self.trust_domain,
            root_namespace=self.root_namespace,
        )
        if self.store is not None and len(self.vips.allocations) != len(before):
            self.store.add_vips({h: p for h, p in self.vips.allocations.items() if h not in before})
        self._version += 1
        return Snapshot(self._version, registry)

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
        self._dirty_since = None
        snap = self._build()
        sent = self.ads.push(snap)
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

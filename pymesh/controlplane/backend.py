"""The control plane's store interface and the one place a store URL is opened.

:class:`StoreBackend` is exactly what the control plane does with its store
today (``server.py``, ``autoregistration.py``, ``cli.py``'s ``pymesh get``):
registered WorkloadEntries, overlays on configured objects, VIP records, the
mirror of configured objects (with their sources) and of the rejected ones,
the applied configuration (``pymesh apply``), and status documents. Two backends implement it and one conformance suite
(``tests/unit/test_store_conformance.py``) runs against both:

- :class:`pymesh.controlplane.store.Store`: SQLite in the data directory, the
  default, one process;
- :class:`pymesh.controlplane.etcdstore.EtcdStore`: etcd v3 (3.4+) through its
  JSON gRPC gateway, selected by ``--store etcd://h1:2379,h2:2379,h3:2379``.

It is a :class:`typing.Protocol` rather than a base class: the SQLite class
stays as it was (nothing to inherit), and mypy checks each backend where
:func:`open_store` returns it.

Store URLs (:func:`open_store`): a path or ``sqlite:///path`` (a data
directory; empty: the default one) or ``etcd://host:port[,host:port...][/prefix]``
(``etcds://`` for TLS). TLS files and credentials come as :class:`EtcdOptions`
(``--store-ca``, ``--store-cert``, ``--store-key``, ``--store-user`` and the
password from ``--store-password-file`` or ``$PYMESH_STORE_PASSWORD``), not as
URL query parameters: a URL is logged and shown in ``ps``, a password must be
neither.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pymesh.controlplane.errors import StoreError


class StoreBackend(Protocol):
    """What the control plane keeps across restarts (see ``store.py`` for what each part is).

    Every write is all-or-nothing unless a backend's docstring says where it is not
    (etcd: writes larger than one transaction). Errors are :class:`StoreError`."""

    def close(self) -> None: ...

    # registered WorkloadEntries (auto-registration), whole documents
    def registered(self) -> list[dict[str, Any]]: ...
    def put_registered(self, doc: Mapping[str, Any]) -> None: ...
    def delete_registered(self, namespace: str, name: str) -> None: ...

    # overlays (annotations, status) on configured objects, by (kind, namespace, name)
    def overlays(self) -> dict[tuple[str, str, str], dict[str, Any]]: ...
    def put_overlay(self, kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> None: ...

    # auto-allocated VIPs: host -> (IPv4, IPv6, released at or None)
    def vips(self) -> dict[str, tuple[str, str]]: ...
    def vip_records(self) -> dict[str, tuple[str, str, float | None]]: ...
    def add_vips(self, allocations: Mapping[str, tuple[str, str]]) -> None: ...
    def put_vips(self, records: Mapping[str, tuple[str, str, float | None]], deleted: Iterable[str]) -> None: ...

    # the configured mirror and the rejected list
    def replace_configured(
        self, objects: Iterable[tuple[str, str, str, str, Mapping[str, Any]]], rejected: Iterable[str]
    ) -> None: ...
    def update_configured(
        self,
        upserts: Iterable[tuple[str, str, str, str, str]],
        deleted: Iterable[tuple[str, str, str]],
        rejected: Iterable[str],
    ) -> None: ...
    def configured_sources(self) -> dict[tuple[str, str, str], str]: ...
    def configured(self) -> list[tuple[str, str, str, str, dict[str, Any]]]: ...
    def rejected(self) -> list[str]: ...

    # applied configuration (``pymesh apply``; pymesh.controlplane.applied): whole documents by
    # (kind, namespace, name) with the time each was first applied; a write is one transaction
    # (etcd: up to its txn limits). ``applied_version`` is an opaque token that changes whenever
    # the applied set changes: compared for equality only, polled by the control plane's watcher.
    def applied(self) -> list[tuple[str, str, str, float, dict[str, Any]]]: ...
    def put_applied(
        self, upserts: Iterable[tuple[str, str, str, float, str]], deleted: Iterable[tuple[str, str, str]]
    ) -> None: ...
    def applied_version(self) -> str: ...

    # status documents by key
    def put_status(self, key: str, value: Mapping[str, Any]) -> None: ...
    def status(self, key: str) -> dict[str, Any] | None: ...


PASSWORD_ENV = "PYMESH_STORE_PASSWORD"


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach etcd beyond its URL: TLS files, credentials, the per-operation timeout."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    timeout: float = 5.0

    @classmethod
    def from_args(
        cls,
        *,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password_file: str | None = None,
        timeout: float = 5.0,
    ) -> EtcdOptions:
        password = os.environ.get(PASSWORD_ENV) or None
        if password_file:
            try:
                with open(password_file) as f:
                    password = f.read().rstrip("\n")
            except OSError as e:
                raise StoreError(f"--store-password-file {password_file}: {e}") from e
        return cls(ca=ca, cert=cert, key=key, user=user, password=password, timeout=timeout)


def is_etcd_url(spec: str | os.PathLike[str] | None) -> bool:
    return isinstance(spec, str) and spec.split("://", 1)[0] in ("etcd", "etcds")


def open_store(
    spec: str | os.PathLike[str] | None,
    *,
    readonly: bool = False,
    etcd: EtcdOptions | None = None,
) -> StoreBackend:
    """The backend a store URL names; None or a plain path is the SQLite data directory."""
    if is_etcd_url(spec):
        from pymesh.controlplane.etcdstore import EtcdStore

        return EtcdStore.from_url(str(spec), etcd or EtcdOptions())
    from pymesh.controlplane.store import Store

    if isinstance(spec, str) and spec.startswith("sqlite://"):
        spec = spec[len("sqlite://") :] or None
    elif isinstance(spec, str) and "://" in spec:
        raise StoreError(f"--store {spec}: unknown scheme (use a directory, sqlite:///DIR or etcd://HOST:PORT,...)")
    return Store(spec, readonly=readonly)

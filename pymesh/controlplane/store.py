"""The control plane's local database: SQLite in a data directory.

What it keeps, so that a restart loses nothing (istiod keeps the same in
the Kubernetes API server):
- registered WorkloadEntries (auto-registration), whole, with status;
- overlays for configured objects: the annotations and status the control
  plane writes onto a pre-created WorkloadEntry (health-checked entries);
- auto-allocated VIPs (host -> IPv4, IPv6), so a name keeps its address;
- a mirror of the configured objects and of the rejected ones, which is
  what ``pymesh get`` reads (it never parses the config directory itself,
  so it shows what the running control plane holds).

WAL journal: ``pymesh get`` reads while the control plane writes. Every
change is one transaction. The default directory is shared by
``pymesh controlplane`` and ``pymesh get``: ``$PYMESH_DATA_DIR``, else
``/var/lib/pymesh`` for root, else ``$XDG_DATA_HOME/pymesh`` (default
``~/.local/share/pymesh``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pymesh.controlplane.errors import StoreError
from pymesh.mesh.files import data_dir

DB_NAME = "controlplane.sqlite3"
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS registered (
    namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS overlays (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS vips (host TEXT PRIMARY KEY, v4 TEXT NOT NULL, v6 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS configured (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, source TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS rejected (seq INTEGER PRIMARY KEY, message TEXT NOT NULL);
"""


default_data_dir = data_dir  # the one definition is pymesh.mesh.files.data_dir


class Store:
    def __init__(self, data_dir: str | os.PathLike[str] | None = None, *, readonly: bool = False) -> None:
        self.dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.path = self.dir / DB_NAME
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreError(f"{self.path}: no control-plane database (has `pymesh controlplane` run here?)")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            else:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            self._db.execute("PRAGMA busy_timeout=5000")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{self.path}: cannot open the control-plane database: {e}") from e

    def close(self) -> None:
        self._db.close()

    def _run(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e

    def _tx(self, statements: Iterable[tuple[str, Iterable[Any]]]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, tuple(args))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e

    # registered entries ----------------------------------------------------------

    def registered(self) -> list[dict[str, Any]]:
        return [json.loads(b) for (b,) in self._run("SELECT body FROM registered ORDER BY namespace, name")]

    def put_registered(self, doc: Mapping[str, Any]) -> None:
        md = doc["metadata"]
        self._tx(
            [
                (
                    "INSERT OR REPLACE INTO registered (namespace, name, body) VALUES (?, ?, ?)",
                    (md["namespace"], md["name"], json.dumps(doc, sort_keys=True)),
                )
            ]
        )

    def delete_registered(self, namespace: str, name: str) -> None:
        self._tx([("DELETE FROM registered WHERE namespace = ? AND name = ?", (namespace, name))])

    # overlays on configured objects ------------------------------------------------

    def overlays(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        rows = self._run("SELECT kind, namespace, name, body FROM overlays")
        return {(k, ns, n): json.loads(b) for k, ns, n, b in rows}

    def put_overlay(self, kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        self._tx(
            [
                (
                    "INSERT OR REPLACE INTO overlays (kind, namespace, name, body) VALUES (?, ?, ?, ?)",
                    (kind, namespace, name, json.dumps(body, sort_keys=True)),
                )
            ]
        )

    # VIPs ----------------------------------------------------------------------

    def vips(self) -> dict[str, tuple[str, str]]:
        return {h: (v4, v6) for h, v4, v6 in self._run("SELECT host, v4, v6 FROM vips")}

    def add_vips(self, allocations: Mapping[str, tuple[str, str]]) -> None:
        if allocations:
            self._tx(
                ("INSERT OR REPLACE INTO vips (host, v4, v6) VALUES (?, ?, ?)", (h, v4, v6))
                for h, (v4, v6) in allocations.items()
            )

    # the configured mirror --------------------------------------------------------

    def replace_configured(
        self, objects: Iterable[tuple[str, str, str, str, Mapping[str, Any]]], rejected: Iterable[str]
    ) -> None:
        stmts: list[tuple[str, Iterable[Any]]] = [("DELETE FROM configured", ()), ("DELETE FROM rejected", ())]
        for kind, ns, name, source, body in objects:
            stmts.append(
                (
                    "INSERT OR REPLACE INTO configured (kind, namespace, name, source, body) VALUES (?, ?, ?, ?, ?)",
                    (kind, ns, name, source, json.dumps(body, sort_keys=True, default=str)),
                )
            )
        stmts += [("INSERT INTO rejected (message) VALUES (?)", (m,)) for m in rejected]
        self._tx(stmts)

    def configured(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        rows = self._run("SELECT kind, namespace, name, source, body FROM configured ORDER BY kind, namespace, name")
        return [(k, ns, n, s, json.loads(b)) for k, ns, n, s, b in rows]

    def rejected(self) -> list[str]:
        return [m for (m,) in self._run("SELECT message FROM rejected ORDER BY seq")]

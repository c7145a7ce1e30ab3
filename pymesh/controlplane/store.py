"""The control plane's local database: SQLite in a data directory.

What it keeps, so that a restart loses nothing (istiod keeps the same in
the Kubernetes API server):
- registered WorkloadEntries (auto-registration), whole, with status;
- overlays for configured objects: the annotations and status the control
  plane writes onto a pre-created WorkloadEntry (health-checked entries);
- auto-allocated VIPs (host -> IPv4, IPv6, released at), so a name keeps
  its address and a released one stays in quarantine across restarts;
- a mirror of the configured objects and of the rejected ones, which is
  what ``pymesh get`` reads (it never parses the config directory itself,
  so it shows what the running control plane holds); it is updated by
  difference, so an edit writes the objects it changed, not the whole config;
- the control plane's status (``status`` table, JSON by key): whether its
  config watcher is failing and why, so ``pymesh get`` can say so;
- the applied configuration (``applied`` table, ``pymesh apply``), with a
  change counter (``meta`` row ``applied_version``, bumped in the same
  transaction as every applied write) that the control plane polls.

WAL journal: ``pymesh get`` reads while the control plane writes. Every
change is one transaction. One connection, used from the control plane's
loop and its config worker (large mirror writes go there): a lock keeps
their statements and transactions apart. The default directory is shared by
``pymesh controlplane`` and ``pymesh get``: ``$PYMESH_DATA_DIR``, else
``/var/lib/pymesh`` for root, else ``$XDG_DATA_HOME/pymesh`` (default
``~/.local/share/pymesh``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
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
CREATE TABLE IF NOT EXISTS vips (host TEXT PRIMARY KEY, v4 TEXT NOT NULL, v6 TEXT NOT NULL, released REAL);
CREATE TABLE IF NOT EXISTS configured (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, source TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS rejected (seq INTEGER PRIMARY KEY, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS status (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS applied (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, applied_at REAL NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name));
"""


default_data_dir = data_dir  # the one definition is pymesh.mesh.files.data_dir


class Store:
    def __init__(self, data_dir: str | os.PathLike[str] | None = None, *, readonly: bool = False) -> None:
        self.dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.path = self.dir / DB_NAME
        self._lock = threading.RLock()
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
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(vips)")}
                if "released" not in columns:  # a database from before VIPs were reclaimed
                    self._db.execute("ALTER TABLE vips ADD COLUMN released REAL")
                self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            # Writes happen on the control plane's event loop: a lock held elsewhere (another process
            # on the same data directory) must fail a write soon, to be reported and retried, rather
            # than stall xDS. Readers (`pymesh get`) wait longer; WAL readers never block the writer.
            self._db.execute(f"PRAGMA busy_timeout={5000 if readonly else 1000}")
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{self.path}: cannot open the control-plane database: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return self._db.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e

    def _tx(self, statements: Iterable[tuple[str, Iterable[Any]]]) -> None:
        with self._lock:
            self._tx_locked(statements)

    def _tx_locked(self, statements: Iterable[tuple[str, Iterable[Any]]]) -> None:
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

    def vip_records(self) -> dict[str, tuple[str, str, float | None]]:
        rows = self._run("SELECT host, v4, v6, released FROM vips")
        return {h: (v4, v6, released) for h, v4, v6, released in rows}

    def add_vips(self, allocations: Mapping[str, tuple[str, str]]) -> None:
        self.put_vips({h: (v4, v6, None) for h, (v4, v6) in allocations.items()}, ())

    def put_vips(self, records: Mapping[str, tuple[str, str, float | None]], deleted: Iterable[str]) -> None:
        stmts: list[tuple[str, Iterable[Any]]] = [("DELETE FROM vips WHERE host = ?", (h,)) for h in deleted]
        stmts += [
            ("INSERT OR REPLACE INTO vips (host, v4, v6, released) VALUES (?, ?, ?, ?)", (h, v4, v6, released))
            for h, (v4, v6, released) in records.items()
        ]
        if stmts:
            self._tx(stmts)

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

    def update_configured(
        self,
        upserts: Iterable[tuple[str, str, str, str, str]],
        deleted: Iterable[tuple[str, str, str]],
        rejected: Iterable[str],
    ) -> None:
        """The mirror by difference: ``upserts`` (kind, namespace, name, source, JSON body),
        ``deleted`` keys; the rejected list is replaced whole."""
        stmts: list[tuple[str, Iterable[Any]]] = [
            ("DELETE FROM configured WHERE kind = ? AND namespace = ? AND name = ?", key) for key in deleted
        ]
        stmts += [
            ("INSERT OR REPLACE INTO configured (kind, namespace, name, source, body) VALUES (?, ?, ?, ?, ?)", row)
            for row in upserts
        ]
        stmts.append(("DELETE FROM rejected", ()))
        stmts += [("INSERT INTO rejected (message) VALUES (?)", (m,)) for m in rejected]
        self._tx(stmts)

    # applied configuration ---------------------------------------------------------

    def applied(self) -> list[tuple[str, str, str, float, dict[str, Any]]]:
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT kind, namespace, name, applied_at, body FROM applied ORDER BY kind, namespace, name"
                ).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # a read-only open of a database from before `pymesh apply`
                return []
            raise StoreError(f"{self.path}: {e}") from e
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e
        return [(k, ns, n, float(t), json.loads(b)) for k, ns, n, t, b in rows]

    def put_applied(
        self, upserts: Iterable[tuple[str, str, str, float, str]], deleted: Iterable[tuple[str, str, str]]
    ) -> None:
        """Upserts (kind, namespace, name, applied at, JSON body) and deletions, one transaction."""
        stmts: list[tuple[str, Iterable[Any]]] = [
            ("DELETE FROM applied WHERE kind = ? AND namespace = ? AND name = ?", key) for key in deleted
        ]
        stmts += [
            ("INSERT OR REPLACE INTO applied (kind, namespace, name, applied_at, body) VALUES (?, ?, ?, ?, ?)", row)
            for row in upserts
        ]
        stmts.append(
            (
                "INSERT INTO meta (key, value) VALUES ('applied_version', '1') ON CONFLICT (key) "
                "DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
                (),
            )
        )
        self._tx(stmts)

    def applied_version(self) -> str:
        rows = self._run("SELECT value FROM meta WHERE key = 'applied_version'")
        return str(rows[0][0]) if rows else "0"

    # status ----------------------------------------------------------------------

    def put_status(self, key: str, value: Mapping[str, Any]) -> None:
        self._tx([("INSERT OR REPLACE INTO status (key, value) VALUES (?, ?)", (key, json.dumps(value)))])

    def status(self, key: str) -> dict[str, Any] | None:
        """None when nothing was recorded (or the database predates the table)."""
        try:
            with self._lock:
                rows = self._db.execute("SELECT value FROM status WHERE key = ?", (key,)).fetchall()
        except sqlite3.Error:
            return None
        return json.loads(rows[0][0]) if rows else None

    def configured_sources(self) -> dict[tuple[str, str, str], str]:
        """(kind, namespace, name) -> the file it came from, without reading the bodies."""
        return {(k, ns, n): src for k, ns, n, src in self._run("SELECT kind, namespace, name, source FROM configured")}

    def configured(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        rows = self._run("SELECT kind, namespace, name, source, body FROM configured ORDER BY kind, namespace, name")
        return [(k, ns, n, s, json.loads(b)) for k, ns, n, s, b in rows]

    def rejected(self) -> list[str]:
        return [m for (m,) in self._run("SELECT message FROM rejected ORDER BY seq")]

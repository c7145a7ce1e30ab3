"""Applied configuration: objects whose source of truth is the store (``pymesh apply -f``).

The config directory stays what it was: the embedded default, read and watched by each control
plane. When the store is shared (etcd, several control planes on one prefix) configuration can
live there instead: ``pymesh apply -f FILE|DIR|-`` validates the files exactly as the directory is
validated (:func:`pymesh.controlplane.resources.load_path` / ``load_documents``: the bounded YAML
reader, the schema, the typed parse) and writes the objects into the store's applied key space
(etcd ``<prefix>/applied/<kind>/<ns>/<name>``, SQLite table ``applied``), apart from the mirror of
what a control plane serves. ``pymesh delete -f`` removes them by (kind, namespace, name).

Decisions:

- **All or nothing per apply.** One invalid object (or a duplicate among the files) and nothing
  is written; every error names file, object and field. Valid objects are written in one store
  transaction (etcd: one txn up to its limits of 128 operations and 1 MiB, larger applies are
  written in several, in order). kubectl, by contrast, applies the valid objects of a file and
  reports the others (https://kubernetes.io/docs/reference/kubectl/generated/kubectl_apply/);
  here a partial apply would leave a mesh half-configured with no server-side rollback.
- **Applied and directory objects are one configuration.** A control plane serves the objects of
  its directory and the applied ones together, through the same load path (:func:`merge`): an
  applied object becomes an :class:`~pymesh.controlplane.resources.Object` whose source is
  ``store:applied/<kind>/<ns>/<name>``, validated again when read (a store written by another
  version, or by hand, is not trusted), with the same "last good version keeps serving" rule as
  a file. The directory can be imported once with ``pymesh apply -f DIR``.
- **Conflicts** (the same kind/namespace/name in both) are reported as duplicate files are: the
  object held already wins, else the older one (file modification time against the time the
  object was first applied); the other copy is a rejected duplicate naming where the winner is.
  ``pymesh apply`` warns when the store's mirror says a directory file already defines the object.
- **Changes reach a running control plane by polling** the store's ``applied_version`` at the
  config watcher's interval (SQLite: a counter bumped in the same transaction; etcd: one tiny
  range, see :mod:`pymesh.controlplane.etcdstore`). Real etcd watches are a later step.
- **A store that cannot be read stops reloads**, directory edits included: the watcher reports it
  (``pymesh get``, ``/debug/status``) and retries, and what is served stays. Applying the
  directory without the applied set could change which copy of a conflicting object is served.
- **Several control planes on one prefix** each read and serve the applied set; they still each
  write the mirror and status keys (the same content when their directories are the same).
  How they share registrations (leases, connection keys, the fenced sweeper) is
  :mod:`pymesh.controlplane.replicas`.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pymesh.controlplane.backend import StoreBackend
from pymesh.controlplane.configdir import Entry
from pymesh.controlplane.errors import ValidationError
from pymesh.controlplane.resources import LoadResult, Object, load_documents, load_path, parse_object
from pymesh.controlplane.yamlsafe import DEFAULT_LIMITS, Limits, YamlSyntaxError, units

Key = tuple[str, str, str]
SOURCE_PREFIX = "store:applied/"
# Shown by `pymesh get -o yaml|json` (where each object comes from); never stored.
SOURCE_ANNOTATION = "pymesh.io/source"


def source_of(key: Key) -> str:
    return f"{SOURCE_PREFIX}{key[0]}/{key[1]}/{key[2]}"


def label(key: Key) -> str:
    return f"{key[0]} {key[1]}/{key[2]}"


# --- the command side: read, validate, write ------------------------------------------------


def read_paths(paths: Iterable[str], limits: Limits = DEFAULT_LIMITS, *, stdin: str | None = None) -> LoadResult:
    """Every object of the files (``-`` is ``stdin``'s text), validated as the config directory is;
    duplicates across all of them are errors (the first stays, as the directory's rule)."""
    result = LoadResult()
    for path in paths:
        part = LoadResult()
        if path == "-":
            load_documents(stdin or "", "<stdin>", part, limits)
        else:
            part = load_path(path, limits=limits)
        result.objects += part.objects
        result.errors += part.errors
    seen: dict[Key, str] = {}
    unique = []
    for o in result.objects:
        if o.key in seen:
            result.errors.append(
                ValidationError(
                    f"duplicate: {label(o.key)} is already defined in {seen[o.key]}", file=o.source, obj=label(o.key)
                )
            )
            continue
        seen[o.key] = o.source
        unique.append(o)
    result.objects = unique
    return result


def stored_body(o: Object) -> str:
    """The validated document as the store keeps it, without the annotation ``pymesh get`` adds."""
    annotations = (o.raw.get("metadata") or {}).get("annotations") or {}
    if SOURCE_ANNOTATION not in annotations:
        return o.body
    raw = copy.deepcopy(dict(o.raw))
    del raw["metadata"]["annotations"][SOURCE_ANNOTATION]
    if not raw["metadata"]["annotations"]:
        del raw["metadata"]["annotations"]
    return json.dumps(raw, sort_keys=True)


def apply_objects(store: StoreBackend, objects: list[Object], now: float | None = None) -> list[tuple[Key, str]]:
    """Writes validated objects, one transaction; returns (key, "created"|"configured"|"unchanged")
    as kubectl reports them. An object keeps the time it was first applied."""
    now = time.time() if now is None else now
    held = {(k, ns, n): (at, body) for k, ns, n, at, body in store.applied()}
    upserts: list[tuple[str, str, str, float, str]] = []
    report: list[tuple[Key, str]] = []
    for o in objects:
        body = stored_body(o)
        old = held.get(o.key)
        if old is not None and old[1] == json.loads(body):
            report.append((o.key, "unchanged"))
            continue
        upserts.append((*o.key, old[0] if old is not None else now, body))
        report.append((o.key, "configured" if old is not None else "created"))
    if upserts:
        store.put_applied(upserts, ())
    return report


def delete_keys(paths: Iterable[str], limits: Limits = DEFAULT_LIMITS, *, stdin: str | None = None) -> list[Key]:
    """The (kind, namespace, name) of every document in the files. Only those are read (as
    ``kubectl delete -f`` does): an object whose spec no longer validates can still be deleted.
    Raises :class:`ValidationError` for a document without a known kind or a name."""
    from pymesh.controlplane.configdir import read, scan

    texts: list[tuple[str, str]] = []
    for path in paths:
        if path == "-":
            texts.append(("<stdin>", stdin or ""))
            continue
        for entry in scan(path):
            if entry.error:
                raise ValidationError(f"cannot read: {entry.error}", file=entry.path, whole_file=True)
            try:
                texts.append((entry.path, read(entry, limits.max_file_bytes)))
            except (OSError, ValueError) as e:
                raise ValidationError(f"cannot read: {e}", file=entry.path, whole_file=True) from e
    from pymesh.controlplane.resources import KINDS

    keys: list[Key] = []
    for source, text in texts:
        try:
            found = list(units(text, limits))
        except YamlSyntaxError as e:
            raise ValidationError(f"invalid YAML: {e}", file=source, whole_file=True) from e
        for u in found:
            where = f"object #{u.index + 1} in the file"
            doc = u.value if u.problem is None else None
            if not isinstance(doc, Mapping):
                raise ValidationError(f"invalid: {u.problem or 'not a mapping'}", file=source, obj=where)
            kind, md = doc.get("kind"), doc.get("metadata")
            if not isinstance(kind, str) or kind not in KINDS:
                raise ValidationError(f"unsupported kind {kind!r}", file=source, obj=where, field="kind")
            if not isinstance(md, Mapping) or not isinstance(md.get("name"), str) or not md.get("name"):
                raise ValidationError("required", file=source, obj=where, field="metadata.name")
            ns = md.get("namespace")
            keys.append((kind, ns if isinstance(ns, str) and ns else "default", str(md["name"])))
    return list(dict.fromkeys(keys))


# --- the control plane side: read when changed, merge into the directory's result --------------


class AppliedConfig:
    """The applied objects a control plane serves. Called on its config worker thread only."""

    def __init__(self, store: StoreBackend) -> None:
        self.store = store
        self.version: str | None = None  # of what was last read
        self._cache: dict[Key, tuple[dict[str, Any], Object | ValidationError]] = {}

    def changed(self) -> bool:
        """Whether the store's applied set differs from what was last read (one small read)."""
        return self.store.applied_version() != self.version

    def read(self) -> tuple[LoadResult, dict[Key, float]]:
        """Every applied object, parsed as a file's (bodies unchanged since the last read are not)."""
        version = self.store.applied_version()  # before the rows: a write in between reloads again
        rows = self.store.applied()
        result = LoadResult()
        applied_at: dict[Key, float] = {}
        cache: dict[Key, tuple[dict[str, Any], Object | ValidationError]] = {}
        for kind, ns, name, at, body in rows:
            key = (kind, ns, name)
            hit = self._cache.get(key)
            parsed: Object | ValidationError
            if hit is not None and hit[0] == body:
                parsed = hit[1]
            else:
                try:
                    parsed = parse_object(body, source=source_of(key))
                    if parsed.key != key:
                        parsed = ValidationError(
                            f"the document is {label(parsed.key)}, not what its store key names",
                            file=source_of(key),
                            obj=label(key),
                        )
                except ValidationError as e:
                    parsed = e
            cache[key] = (body, parsed)
            if isinstance(parsed, ValidationError):
                result.errors.append(parsed)
            else:
                _ = parsed.body  # the mirror's JSON, computed here rather than on the loop
                result.objects.append(parsed)
                applied_at[key] = at
        self._cache = cache
        self.version = version
        return result, applied_at

    def merge(self, files: LoadResult, entries: Iterable[Entry], owners: Mapping[Key, str]) -> LoadResult:
        applied, applied_at = self.read()
        return merge(files, applied, applied_at, {e.path: e.mtime_ns for e in entries}, owners)


def merge(
    files: LoadResult,
    applied: LoadResult,
    applied_at: Mapping[Key, float],
    mtimes_ns: Mapping[str, int],
    owners: Mapping[Key, str],
) -> LoadResult:
    """The directory's objects and the applied ones as one result (see the module docstring for
    the conflict rule: held wins, else the older)."""
    out = LoadResult(errors=[*files.errors, *applied.errors])
    by_key = {o.key: o for o in files.objects}
    for o in applied.objects:
        f = by_key.get(o.key)
        if f is None:
            by_key[o.key] = o
            continue
        owner = owners.get(o.key)
        if owner in (o.source, f.source):
            winner = o if owner == o.source else f
        else:
            winner = o if applied_at.get(o.key, 0.0) * 1e9 < mtimes_ns.get(f.source, 0) else f
        loser = f if winner is o else o
        out.errors.append(
            ValidationError(
                f"duplicate: {label(o.key)} is already defined in {winner.source}; this copy is ignored "
                "(the object held first stays)",
                file=loser.source,
                obj=label(o.key),
            )
        )
        by_key[o.key] = winner
    out.objects = list(by_key.values())
    return out


def is_applied(source: str) -> bool:
    return source.startswith(SOURCE_PREFIX)


def describe_source(source: str) -> str:
    """How ``pymesh get`` names a source: ``applied`` (the store) or ``file:<path>``."""
    return "applied" if is_applied(source) else f"file:{os.path.normpath(source)}" if source else "-"

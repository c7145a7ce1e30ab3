"""The configuration directory: which files it holds, read with bounds.

One scan serves both the watcher (its fingerprint: did anything change?) and
the loader (what to read), so they can never disagree. A scan lists every
``.yaml``/``.yml``/``.json`` file under the root (hidden names skipped, so a
Kubernetes ConfigMap mount's ``..data`` copies are not read twice; symlinks
followed, directory loops cut) with its stamp, or with the error that
prevented reading its stamp: a self-referencing symlink or a dangling one is
an entry *with an error*, reported as a rejected file, never a reason to
treat the whole directory as unchanged. What would make the scan lie — the
root cannot be listed, or a transient error (out of file descriptors or
memory) anywhere — raises :class:`ScanError` instead, so no change is applied
from a partial view (files missing from it would otherwise look deleted).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from pymesh.controlplane.errors import ControlPlaneError

YAML_SUFFIXES = (".yaml", ".yml", ".json")
# Errors that say nothing about the file and may be gone on the next attempt.
TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR, errno.ENOBUFS})


class ScanError(ControlPlaneError):
    """The configuration directory could not be listed completely."""


@dataclass(frozen=True)
class Entry:
    path: str
    stamp: tuple[int, int, int] | None  # (mtime_ns, size, inode); None when ``error``
    error: str = ""

    @property
    def mtime_ns(self) -> int:
        return self.stamp[0] if self.stamp else 0


def transient(e: OSError) -> bool:
    return e.errno in TRANSIENT


def _entry(path: str) -> Entry:
    try:
        st = os.stat(path)
    except OSError as e:
        if transient(e):
            raise ScanError(f"{path}: {e.strerror}") from e
        return Entry(path, None, e.strerror or str(e))
    if not stat.S_ISREG(st.st_mode):
        return Entry(path, None, "not a regular file")
    return Entry(path, (st.st_mtime_ns, st.st_size, st.st_ino))


def scan(root: str | os.PathLike[str]) -> tuple[Entry, ...]:
    """Every configuration file under ``root`` (a directory, or one file), sorted."""
    top = os.fspath(root)
    try:
        st = os.stat(top)
    except OSError as e:
        raise ScanError(f"{top}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        return (_entry(top),)
    out: list[Entry] = []
    visited = {(st.st_dev, st.st_ino)}
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as it:
                children = sorted(it, key=lambda d: d.name)
        except OSError as e:
            if directory == top or transient(e):
                raise ScanError(f"{directory}: {e.strerror}") from e
            out.append(Entry(directory, None, e.strerror or str(e)))
            continue
        for child in children:
            if child.name.startswith("."):
                continue
            try:
                is_dir = child.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    dst = os.stat(child.path)
                except OSError as e:
                    if transient(e):
                        raise ScanError(f"{child.path}: {e.strerror}") from e
                    out.append(Entry(child.path, None, e.strerror or str(e)))
                    continue
                if (dst.st_dev, dst.st_ino) in visited:
                    continue  # a symlink back up the tree: each directory is read once
                visited.add((dst.st_dev, dst.st_ino))
                pending.append(child.path)
            elif os.path.splitext(child.name)[1] in YAML_SUFFIXES:
                out.append(_entry(child.path))
    return tuple(sorted(out, key=lambda e: e.path))


def read(entry: Entry, max_bytes: int) -> str:
    """The file's text; OSError when it cannot be read, ValueError when it is
    larger than ``max_bytes`` (checked on the scan's size, then on what is read,
    so a file growing in between is caught too) or not UTF-8."""
    if entry.stamp is not None and entry.stamp[1] > max_bytes:
        raise ValueError(f"file is {entry.stamp[1]} bytes, more than the {max_bytes}-byte limit; not read")
    with open(entry.path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file is more than the {max_bytes}-byte limit; not read")
    return data.decode("utf-8")

"""Durable files and the directories pymesh keeps state in.

:func:`write_atomic` is the one writer for everything that must survive a
crash whole: a temporary file in the same directory (``mkstemp``), every
byte written, ``fsync``, ``rename`` over the old file, ``fsync`` of the
directory (``rename(2)`` is atomic, but only durable once the directory
entry is on disk). Mode 0600 unless asked otherwise, so keys and tokens are
never readable by others, not even for the instant before a chmod.
Errors are ``OSError``: callers say what the file was for.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = PRIVATE_FILE) -> None:
    """Replaces ``path`` with ``data`` atomically and durably (module doc)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(p.parent)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Makes a rename or create in ``path`` durable (best effort where the
    filesystem cannot fsync a directory)."""
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Creates ``path`` (and parents) and makes it 0700; returns it. OSError on failure."""
    p = Path(path)
    p.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(p, PRIVATE_DIR)
    return p


def data_dir() -> Path:
    """The control plane's data directory (and the CLI's default for the
    CA and tokens): ``$PYMESH_DATA_DIR``, else ``/var/lib/pymesh`` as root,
    else ``$XDG_DATA_HOME/pymesh`` (``~/.local/share/pymesh``)."""
    env = os.environ.get("PYMESH_DATA_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/pymesh")
    xdg = os.environ.get("XDG_DATA_HOME")
    return Path(xdg) / "pymesh" if xdg else Path.home() / ".local" / "share" / "pymesh"


def state_dir() -> Path:
    """The VM agent's state directory: ``$PYMESH_AGENT_STATE_DIR``, else
    ``/var/lib/pymesh/agent`` as root, else ``$XDG_STATE_HOME/pymesh/agent``
    (``~/.local/state/pymesh/agent``)."""
    env = os.environ.get("PYMESH_AGENT_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/pymesh/agent")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "pymesh" / "agent"

"""Private files: created 0600 in 0700 directories, replaced atomically
(write a temporary file, fsync, rename), so a crash never leaves a half
written key or certificate and nobody but the owner can read one."""

from __future__ import annotations

import os
from pathlib import Path

from pymesh.security.errors import SecurityError


def private_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as e:
        raise SecurityError(f"{path}: cannot create a private directory: {e.strerror}") from e
    return path


def write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise SecurityError(f"{path}: cannot write: {e.strerror}") from e


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SecurityError(f"{path}: cannot read the {what}: {e.strerror}") from e

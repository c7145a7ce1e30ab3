"""The last good xDS state on disk, so DNS and routing serve across an agent
restart while the control plane is unreachable.

One file per type (``cds.pb``, ``eds.pb``, ``nds.pb``, ``lds.pb`` — the
inbound listener that carries the PeerAuthentication mode) holding a
``DiscoveryResponse`` with every resource the agent holds of that type
(for EDS the merged set, not the last partial push) and the version that
was ACKed. Written atomically: a temporary file in the same directory,
fsync, rename over the old one, fsync of the directory — a crash leaves
either the old or the new state, never a torn one. A file that does not
parse is logged and ignored (the agent then waits for the control plane),
and so is state another node or control plane saved (``identity.json``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pymesh.agent.errors import StateError
from pymesh.mesh.files import state_dir, write_atomic
from pymesh.mesh.xds import CDS, EDS, LDS, NDS, RDS

log = logging.getLogger(__name__)

FILES = {CDS: "cds.pb", EDS: "eds.pb", NDS: "nds.pb", LDS: "lds.pb", RDS: "rds.pb"}
IDENTITY = "identity.json"


def default_state_dir() -> str:
    """:func:`pymesh.mesh.files.state_dir` as a string."""
    return str(state_dir())


class StateDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.writes = 0

    def save(self, type_url: str, version: str, resources: Iterable[Any]) -> None:
        """Writes the resources (``google.protobuf.Any``) of one type."""
        from envoy.service.discovery.v3 import discovery_pb2

        msg = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, resources=list(resources))
        self._write(FILES[type_url], msg.SerializeToString())

    def save_identity(self, identity: dict[str, str]) -> None:
        """Records whose state this is (node id, control plane): state saved
        for another node or mesh is not served after a reconfiguration."""
        self._write(IDENTITY, json.dumps(identity, sort_keys=True).encode())

    def identity(self) -> dict[str, str] | None:
        try:
            data = json.loads((self.path / IDENTITY).read_text())
        except (OSError, ValueError):
            return None
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None

    def _set_aside(self, p: Path) -> None:
        """A state entry that is not a regular file (a directory, a socket...)
        is renamed out of the way with a warning, so the agent goes on with
        what the control plane sends instead of failing on it."""
        aside = p.with_name(f"{p.name}.unusable-{int(time.time())}")
        try:
            os.replace(p, aside)
            log.warning("%s is not a regular file; moved to %s (state rebuilt from the control plane)", p, aside)
        except OSError as e:
            log.warning("%s is not a regular file and cannot be moved aside: %s", p, e.strerror)

    def _usable(self, p: Path) -> bool:
        """True when ``p`` is absent or a regular file (symlinks to files included)."""
        if p.is_symlink() and not p.exists():
            return True  # dangling: replaced by the next write
        if p.exists() and not p.is_file():
            self._set_aside(p)
            return False
        return True

    def _write(self, name: str, data: bytes) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._usable(self.path / name)
            write_atomic(self.path / name, data)
        except OSError as e:
            raise StateError(f"{self.path / name}: cannot write the state: {e.strerror or e}") from e
        self.writes += 1

    def load(self, type_url: str) -> Any | None:
        """The saved ``DiscoveryResponse`` of one type, or None."""
        from envoy.service.discovery.v3 import discovery_pb2
        from google.protobuf.message import DecodeError

        p = self.path / FILES[type_url]
        if not self._usable(p):
            return None
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("%s: cannot read the saved state: %s", p, e.strerror)
            return None
        try:
            msg = discovery_pb2.DiscoveryResponse.FromString(data)
        except DecodeError as e:
            log.warning("%s: saved state does not parse (%s); ignored", p, e)
            return None
        if msg.type_url != type_url or any(r.type_url != type_url for r in msg.resources):
            log.warning("%s: saved state holds another type; ignored", p)
            return None
        return msg

    def clear(self) -> None:
        for name in (*FILES.values(), IDENTITY):
            p = self.path / name
            if not self._usable(p):
                continue
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("%s: cannot remove the saved state: %s", p, e.strerror)

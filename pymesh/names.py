"""Name tables: loading them and the resolver settings they are built for.

The table itself is native (``pymesh.NameTable``); this module adds what a
host provides around it: the resolv.conf search list and name servers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from pymesh._native import FileError, NameTable
from pymesh.mesh.defaults import DEFAULT_DOMAIN

__all__ = ["DEFAULT_DOMAIN", "ResolvConf", "load_name_table", "read_resolv_conf"]


@dataclass(frozen=True)
class ResolvConf:
    """The parts of resolv.conf a DNS proxy needs."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    ndots: int = 1
    options: tuple[str, ...] = field(default=())


def read_resolv_conf(path: str | os.PathLike[str] = "/etc/resolv.conf") -> ResolvConf:
    """Reads nameservers, the search list (the last `search`/`domain` line
    wins, as in glibc) and ndots. A missing file gives glibc's defaults."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return ResolvConf()
    except OSError as e:
        raise FileError(f"{os.fspath(path)}: {e.strerror}") from e
    nameservers: list[str] = []
    search: tuple[str, ...] = ()
    ndots = 1
    options: list[str] = []
    for line in lines:
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        key, args = words[0], words[1:]
        if key == "nameserver" and args:
            nameservers.append(args[0])
        elif key == "search":
            search = tuple(args)
        elif key == "domain" and args:
            search = (args[0],)
        elif key == "options":
            for opt in args:
                if opt.startswith("ndots:") and opt[6:].isdigit():
                    ndots = min(int(opt[6:]), 15)
                options.append(opt)
    return ResolvConf(tuple(nameservers), search, ndots, tuple(options))


def load_name_table(
    path: str | os.PathLike[str],
    *,
    namespace: str = "",
    domain: str = DEFAULT_DOMAIN,
    search: Sequence[str] | str | None = None,
) -> NameTable:
    """Loads a name table file (NDS proto3 JSON, or YAML for .yaml/.yml)."""
    return NameTable.from_file(os.fspath(path), namespace=namespace, domain=domain, search=search)

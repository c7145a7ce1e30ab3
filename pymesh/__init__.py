"""pymesh: a service mesh for virtual machines and bare-metal hosts.

The native core (``pymesh._native``, Rust) holds the tables the data path
reads; this package is the thin Python layer around it. Every error pymesh
raises is a ``pymesh.PymeshError``.
"""

from pymesh._native import (
    ConfigError,
    FileError,
    InvalidEntryError,
    LiveNameTable,
    NameMatch,
    NameTable,
    ParseError,
    PymeshError,
    __version__,
)
from pymesh.names import DEFAULT_DOMAIN, ResolvConf, load_name_table, read_resolv_conf

__all__ = [
    "DEFAULT_DOMAIN",
    "ConfigError",
    "FileError",
    "InvalidEntryError",
    "LiveNameTable",
    "NameMatch",
    "NameTable",
    "ParseError",
    "PymeshError",
    "ResolvConf",
    "__version__",
    "load_name_table",
    "read_resolv_conf",
]

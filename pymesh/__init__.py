"""pymesh: a service mesh for virtual machines and bare-metal hosts.

The native core (``pymesh._native``, Rust) holds the tables the data path
reads; this package is the thin Python layer around it. Every error pymesh
raises is a ``pymesh.PymeshError``.
"""

from pymesh._native import (
    ConfigError,
    FileError,
    InvalidEntryError,
    LbTable,
    LiveNameTable,
    NameMatch,
    NameTable,
    ParseError,
    PymeshError,
    RedirectTable,
    UnknownClusterError,
    __version__,
)
from pymesh.lbtable import load_clusters, load_redirect_table
from pymesh.names import DEFAULT_DOMAIN, ResolvConf, load_name_table, read_resolv_conf

__all__ = [
    "DEFAULT_DOMAIN",
    "ConfigError",
    "FileError",
    "InvalidEntryError",
    "LbTable",
    "LiveNameTable",
    "NameMatch",
    "NameTable",
    "ParseError",
    "PymeshError",
    "RedirectTable",
    "ResolvConf",
    "UnknownClusterError",
    "__version__",
    "load_clusters",
    "load_name_table",
    "load_redirect_table",
    "read_resolv_conf",
]

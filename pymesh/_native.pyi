"""Type stubs of pymesh's native extension (checked against the built module by stubtest)."""

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, final

__version__: str
__all__ = [
    "ConfigError",
    "DnsServer",
    "FileError",
    "InvalidEntryError",
    "LiveNameTable",
    "NameMatch",
    "NameTable",
    "NameTableIter",
    "ParseError",
    "PymeshError",
    "__version__",
    "dns_answer",
]

class PymeshError(Exception):
    """Base class of every error pymesh raises."""

class InvalidEntryError(PymeshError): ...
class ConfigError(PymeshError): ...
class ParseError(PymeshError): ...
class FileError(PymeshError): ...

_Search = Sequence[str] | str | None

@final
class NameMatch:
    @property
    def canonical(self) -> str: ...
    @property
    def form(self) -> str: ...
    @property
    def search_index(self) -> int | None: ...
    @property
    def ipv4(self) -> tuple[str, ...]: ...
    @property
    def ipv6(self) -> tuple[str, ...]: ...
    def addresses(self, qtype: str = "A") -> tuple[str, ...]: ...

@final
class NameTable:
    @staticmethod
    def from_entries(
        entries: Iterable[Mapping[str, Any]],
        *,
        namespace: str = "",
        domain: str = "cluster.local",
        search: _Search = None,
    ) -> NameTable: ...
    @staticmethod
    def from_document(
        document: Mapping[str, Any], *, namespace: str = "", domain: str = "cluster.local", search: _Search = None
    ) -> NameTable: ...
    @staticmethod
    def from_json(
        text: str, *, namespace: str = "", domain: str = "cluster.local", search: _Search = None, yaml: bool = False
    ) -> NameTable: ...
    @staticmethod
    def from_file(
        path: str | os.PathLike[str], *, namespace: str = "", domain: str = "cluster.local", search: _Search = None
    ) -> NameTable: ...
    @staticmethod
    def from_nds(
        message: Any, *, namespace: str = "", domain: str = "cluster.local", search: _Search = None
    ) -> NameTable: ...
    def lookup(self, name: str) -> NameMatch | None: ...
    def lookup_many(self, names: Iterable[str], qtype: str = "A") -> list[tuple[str, ...] | None]: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: str, /) -> bool: ...
    def __iter__(self) -> NameTableIter: ...
    @property
    def namespace(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def search(self) -> list[str]: ...
    @property
    def skipped(self) -> int: ...
    @property
    def heap_bytes(self) -> tuple[int, int]: ...

@final
class NameTableIter:
    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def __next__(self) -> dict[str, Any]: ...

@final
class LiveNameTable:
    def __new__(cls, table: NameTable | None = None) -> LiveNameTable: ...
    def swap(self, table: NameTable) -> int: ...
    @property
    def current(self) -> NameTable | None: ...
    @property
    def generation(self) -> int: ...
    def lookup(self, name: str) -> NameMatch | None: ...
    def lookup_many(self, names: Sequence[str], qtype: str = "A") -> list[tuple[str, ...] | None]: ...

@final
class DnsServer:
    def __new__(
        cls,
        *,
        listen: Sequence[str] = ...,
        upstreams: Sequence[str] = ...,
        workers: int = 0,
        ttl: int = 30,
        zones: Sequence[str] = ...,
        cache_size: int = 10000,
        cache_bytes: int = ...,
        timeout: float = 1.0,
        hedge_delay: float = 0.15,
        tcp_idle_timeout: float = 10.0,
        tcp_read_timeout: float = 2.0,
    ) -> DnsServer: ...
    def start(self) -> list[str]: ...
    def stop(self) -> None: ...
    def swap_table(self, table: NameTable) -> int: ...
    def reconfigure(
        self,
        *,
        upstreams: Sequence[str] | None = None,
        ttl: int | None = None,
        zones: Sequence[str] | None = None,
        timeout: float | None = None,
        hedge_delay: float | None = None,
    ) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def metrics_text(self) -> str: ...
    @property
    def addresses(self) -> list[str]: ...
    @property
    def running(self) -> bool: ...
    @property
    def generation(self) -> int: ...

def dns_answer(
    table: NameTable | None,
    packet: bytes,
    *,
    tcp: bool = False,
    ttl: int = 30,
    zones: Sequence[str] = ...,
) -> bytes | None: ...

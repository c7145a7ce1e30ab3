"""A small pure-Python reference model of the native name table.

It mirrors ``native/src/names`` (``table.rs`` for the lookup rules,
``hostname.rs`` and ``entry.rs`` for validation, ``load.rs`` for the
``{"table": {...}}`` document form) as plainly as possible, so that property
tests can compare the native table against it and benchmarks can use it as
the pure-Python baseline. Everything a query needs is put into dicts at build
time; a query then applies the rules of ``table.rs`` in the same order:

1. exact forms of the full name, then of each search-stripped name in
   search-list order;
2. wildcards of the full name, then of each search-stripped name, the most
   specific wildcard (longest parent domain) first.

Error messages use the native formats ``entry "<host>": <field>: <reason>``
and ``config: <field>: <reason>`` with the same reason texts, so the shared
conformance cases' substrings match both.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_NAME_LEN = 253
MAX_LABEL_LEN = 63
REGISTRY_KUBERNETES = "Kubernetes"

# Form names, as Form::as_str in table.rs.
HOSTNAME = "hostname"
ALT_HOST = "alt_host"
NAME_NAMESPACE_SVC = "name.namespace.svc"
NAME_NAMESPACE = "name.namespace"
SHORT_NAME = "name"
WILDCARD = "wildcard"

# Collision strength of a form (Form::strength): lower wins.
_STRENGTH = {HOSTNAME: 0, WILDCARD: 0, ALT_HOST: 1, NAME_NAMESPACE_SVC: 2, NAME_NAMESPACE: 3, SHORT_NAME: 4}

# What Rust's str::trim removes (the Unicode White_Space property); Python's
# str.strip() would also remove U+001C..U+001F, which Rust keeps.
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)

ENTRY_FIELDS = ("hostname", "ips", "registry", "shortname", "namespace", "alt_hosts")

LookupResult = tuple[str, str, "int | None", tuple[str, ...], tuple[str, ...]]


class _Invalid(Exception):
    """Why a value is invalid; the caller adds which entry and field."""

    @property
    def reason(self) -> str:
        return str(self.args[0])


# -- Rust's Debug formatting, for the quoted values inside error messages ----


def _escape(c: str, quote: str) -> str:
    """One character as Rust's `{:?}` writes it inside `quote` quotes.

    Rust's own printable table is approximated with str.isprintable() plus
    the general categories Mn/Me for grapheme extenders; both agree on ASCII.
    """
    simple = {"\\": "\\\\", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\0": "\\0"}
    if c in simple:
        return simple[c]
    if c == quote:
        return "\\" + c
    if c.isprintable() and unicodedata.category(c) not in ("Mn", "Me"):
        return c
    return f"\\u{{{ord(c):x}}}"


def rust_debug_str(s: str) -> str:
    """`format!("{s:?}")` for a Rust &str."""
    return '"' + "".join(_escape(c, '"') for c in s) + '"'


def rust_debug_char(c: str) -> str:
    """`format!("{c:?}")` for a Rust char."""
    return "'" + _escape(c, "'") + "'"


# -- names (hostname.rs) --------------------------------------------------


def _normalize_table_name(raw: str, allow_wildcard: bool) -> str:
    """hostname.rs normalize_table_name: drop one trailing dot, validate, lower-case."""
    name = raw[:-1] if raw.endswith(".") else raw
    if not name:
        raise _Invalid("empty name")
    for c in name:
        if not c.isascii():
            raise _Invalid(
                f"non-ASCII character {rust_debug_char(c)}: internationalised names must be punycode (xn--...)"
            )
    if len(name) > MAX_NAME_LEN:
        raise _Invalid(f"name is {len(name)} characters long, the limit is {MAX_NAME_LEN}")
    for i, label in enumerate(name.split(".")):
        if not label:
            raise _Invalid("empty label (two dots in a row, or a leading dot)")
        if len(label) > MAX_LABEL_LEN:
            raise _Invalid(
                f"label {rust_debug_str(label)} is {len(label)} characters long, the limit is {MAX_LABEL_LEN}"
            )
        if label == "*":
            if not allow_wildcard:
                raise _Invalid("wildcard label '*' is not allowed here")
            if i != 0:
                raise _Invalid("wildcard '*' must be the leftmost label")
            if "." not in name:
                raise _Invalid("a wildcard needs a parent domain ('*.example.com')")
            continue
        for c in label:
            if not (c.isalnum() or c in "-_"):
                raise _Invalid(f"character {rust_debug_char(c)} is not allowed in a hostname label")
    return name.lower()


def normalize_table_name(raw: str, allow_wildcard: bool = False) -> str:
    """The normalised table name, or ValueError with the native reason text."""
    try:
        return _normalize_table_name(raw, allow_wildcard)
    except _Invalid as e:
        raise ValueError(e.reason) from None


def _label(raw: str) -> str:
    """entry.rs label: a single normalised DNS label (a namespace)."""
    n = _normalize_table_name(raw, False)
    if "." in n:
        raise _Invalid(f"{rust_debug_str(raw)} must be a single label")
    return n


def normalize_query_name(raw: str | bytes) -> str | None:
    """hostname.rs QueryName::new: the lower-cased name without one trailing
    dot, or None for a name no entry can match (empty, too long, empty or
    over-long label, non-ASCII, or containing '*')."""
    if isinstance(raw, bytes):
        if not raw.isascii():
            return None
        raw = raw.decode("ascii")
    name = raw[:-1] if raw.endswith(".") else raw
    if not name or len(name) > MAX_NAME_LEN or not name.isascii() or "*" in name:
        return None
    if any(not label or len(label) > MAX_LABEL_LEN for label in name.split(".")):
        return None
    return name.lower()


# -- addresses --------------------------------------------------------------


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`text.trim().parse::<IpAddr>()`: Rust accepts no IPv6 zone (`%eth0`),
    which Python's ipaddress does; everything else parses alike."""
    s = text.strip(_RUST_WHITESPACE)
    if not s.isascii() or "%" in s:
        return None
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def format_ipv6(a: ipaddress.IPv6Address) -> str:
    """Rust's Display for Ipv6Addr: RFC 5952 compression, as Python's, except
    that IPv4-mapped addresses end in dotted quad (`::ffff:192.0.2.1`), which
    Python only prints from 3.13 on."""
    mapped = a.ipv4_mapped
    if mapped is not None:
        return f"::ffff:{mapped}"
    return a.compressed


# -- the table ----------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    namespace: str
    domain: str
    svc_suffix: str
    search: tuple[str, ...]


def _validate_config(namespace: str, domain: str, search: Iterable[str]) -> _Config:
    """entry.rs NameConfig::validate."""
    try:
        ns = _label(namespace) if namespace else ""
    except _Invalid as e:
        raise ValueError(f"config: namespace: {e.reason}") from None
    try:
        dom = _normalize_table_name(domain, False)
    except _Invalid as e:
        raise ValueError(f"config: domain: {e.reason}") from None
    domains: list[str] = []
    for i, s in enumerate(search):
        try:
            d = _normalize_table_name(s, False)
        except _Invalid as e:
            raise ValueError(f"config: search[{i}]: {e.reason}") from None
        # A domain listed twice would only repeat the same lookups; search
        # indices in answers count the list without repeats.
        if d not in domains:
            domains.append(d)
    return _Config(ns, dom, f".svc.{dom}", tuple(domains))


def _entry_error(who: str, field: str, reason: str) -> ValueError:
    return ValueError(f"entry {rust_debug_str(who)}: {field}: {reason}")


@dataclass(frozen=True)
class _Prepared:
    """An entry after validation (table.rs Prepared)."""

    original: str
    registry: str
    hostname: str
    v4: tuple[str, ...]
    v6: tuple[str, ...]
    shortname: str
    namespace: str
    k8s_forms: bool
    alt_hosts: tuple[str, ...]


def _prepare(i: int, e: Mapping[str, Any], cfg: _Config) -> _Prepared:
    """table.rs prepare: validate and normalise one entry."""
    unknown = sorted(set(e) - set(ENTRY_FIELDS))
    raw_host: str = e.get("hostname") or ""
    who = raw_host if raw_host else f"#{i}"
    if unknown:
        raise _entry_error(who, unknown[0], "unknown field")
    ips: Sequence[str] = e.get("ips") or ()
    registry: str = e.get("registry") or ""
    raw_short: str = e.get("shortname") or ""
    raw_ns: str = e.get("namespace") or ""
    raw_alts: Sequence[str] = e.get("alt_hosts") or ()

    try:
        hostname = _normalize_table_name(raw_host, True)
    except _Invalid as x:
        raise _entry_error(who, "hostname", x.reason) from None
    v4: list[ipaddress.IPv4Address] = []
    v6: list[ipaddress.IPv6Address] = []
    for j, ip in enumerate(ips):
        a = _parse_ip(ip)
        if a is None:
            raise _entry_error(who, f"ips[{j}]", f"{rust_debug_str(ip)} is not an IPv4 or IPv6 address")
        if isinstance(a, ipaddress.IPv4Address):
            if a not in v4:
                v4.append(a)
        elif a not in v6:
            v6.append(a)
    if len(v4) > 0xFFFF or len(v6) > 0xFFFF:
        raise _entry_error(who, "ips", "more than 65535 addresses of one family")
    try:
        shortname = _normalize_table_name(raw_short, False) if raw_short else ""
    except _Invalid as x:
        raise _entry_error(who, "shortname", x.reason) from None
    try:
        namespace = _label(raw_ns) if raw_ns else ""
    except _Invalid as x:
        raise _entry_error(who, "namespace", x.reason) from None
    k8s_forms = (
        registry == REGISTRY_KUBERNETES
        and not hostname.startswith("*.")
        and bool(shortname)
        and bool(namespace)
        and hostname.endswith(cfg.svc_suffix)
    )
    if k8s_forms and len(shortname) + len(namespace) + 5 > 255:
        raise _entry_error(who, "shortname", "name.namespace.svc would exceed 255 characters")
    alt_hosts: list[str] = []
    for j, alt in enumerate(raw_alts):
        try:
            alt_hosts.append(_normalize_table_name(alt, True))
        except _Invalid as x:
            raise _entry_error(who, f"alt_hosts[{j}]", x.reason) from None
    return _Prepared(
        original=raw_host,
        registry=registry,
        hostname=hostname,
        v4=tuple(str(a) for a in v4),
        v6=tuple(format_ipv6(a) for a in v6),
        shortname=shortname,
        namespace=namespace,
        k8s_forms=k8s_forms,
        alt_hosts=tuple(alt_hosts),
    )


# An exact answer: canonical name, form, IPv4 and IPv6 addresses.
_Answer = tuple[str, str, tuple[str, ...], tuple[str, ...]]
# Who holds a key while building: entry id, stored form, collision rank.
_Holder = tuple[int, str, tuple[int, int, str, str]]


class OracleNameTable:
    """Reference model of ``NameTable``: build from entry dicts, then look up.

    ``entries`` are dicts with the keys of ``ENTRY_FIELDS`` (missing keys and
    None mean empty). Raises ValueError naming the entry and field (or the
    config field) of the first invalid input, in the order the native build
    checks them.
    """

    def __init__(
        self,
        entries: Iterable[Mapping[str, Any]],
        namespace: str = "",
        domain: str = "cluster.local",
        search: Iterable[str] = (),
    ) -> None:
        cfg = _validate_config(namespace, domain, search)
        self._config = cfg
        # First pass: validate every entry, so an invalid one anywhere fails
        # the build before any collision is settled (as table.rs does).
        valid: list[_Prepared] = []
        self._skipped = 0
        for i, e in enumerate(entries):
            p = _prepare(i, e, cfg)
            if not p.v4 and not p.v6:
                self._skipped += 1  # no address: forwarded upstream, as in Istio
                continue
            valid.append(p)

        # One entry per hostname: of several spellings of one name, the best by
        # (Kubernetes first, hostname as given) is kept whole, the rest left out.
        best: dict[str, int] = {}
        for i, p in enumerate(valid):
            j = best.get(p.hostname)
            if j is None:
                best[p.hostname] = i
                continue
            if valid[j].original == p.original:
                raise _entry_error(p.original, "hostname", "duplicate entry for this hostname")
            if _host_rank(p) < _host_rank(valid[j]):
                best[p.hostname] = i
        kept = set(best.values())
        prepared = [p for i, p in enumerate(valid) if i in kept]
        self._skipped += len(valid) - len(prepared)

        # Second pass: insert each entry's keys in table.rs order.
        exact: dict[str, _Holder] = {}
        wild: dict[str, _Holder] = {}
        registries: list[str] = []
        for eid, p in enumerate(prepared):
            if p.registry not in registries:
                if len(registries) == 255:
                    raise _entry_error(p.original, "registry", "more than 255 distinct registries")
                registries.append(p.registry)
            rank = 0 if p.registry == REGISTRY_KUBERNETES else 1
            keys: list[tuple[str, str]] = [(p.hostname, HOSTNAME)]
            keys += [(a, ALT_HOST) for a in p.alt_hosts]
            if p.k8s_forms:
                keys.append((f"{p.shortname}.{p.namespace}.svc", NAME_NAMESPACE_SVC))
                keys.append((f"{p.shortname}.{p.namespace}", NAME_NAMESPACE))
                if p.namespace == cfg.namespace:
                    keys.append((p.shortname, SHORT_NAME))
            for key, form in keys:
                index, k = (wild, key[2:]) if key.startswith("*.") else (exact, key)
                new: _Holder = (eid, form, (_STRENGTH[form], rank, p.hostname, p.original))
                old = index.get(k)
                if old is None or _prefer_new(new, old):
                    index[k] = new

        def answer(key: str, eid: int, form: str) -> _Answer:
            p = prepared[eid]
            # An alt host of a wildcard entry answers under its own name.
            return (key if p.hostname.startswith("*.") else p.hostname, form, p.v4, p.v6)

        self._exact: dict[str, _Answer] = {k: answer(k, eid, form) for k, (eid, form, _) in exact.items()}
        self._wild: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
            k: (prepared[eid].v4, prepared[eid].v6) for k, (eid, _, _) in wild.items()
        }
        # `.domain` suffixes of the search list, for stripping.
        self._search = tuple((i, "." + s) for i, s in enumerate(cfg.search))
        self._len = len(prepared)

    @classmethod
    def from_document(
        cls,
        doc: Any,
        *,
        namespace: str = "",
        domain: str = "cluster.local",
        search: Iterable[str] = (),
        source_name: str = "<document>",
    ) -> OracleNameTable:
        """Builds from the proto3 JSON form of an NDS ``NameTable`` as parsed
        by ``json.loads`` (load.rs). Entries are taken in sorted key order, as
        the native loader's map iterates them."""
        return cls(entries_from_document(doc, source_name), namespace=namespace, domain=domain, search=search)

    def __len__(self) -> int:
        return self._len

    @property
    def skipped(self) -> int:
        """Entries left out because they had no address."""
        return self._skipped

    @property
    def namespace(self) -> str:
        return self._config.namespace

    @property
    def domain(self) -> str:
        return self._config.domain

    @property
    def search(self) -> tuple[str, ...]:
        return self._config.search

    def lookup(self, name: str | bytes) -> LookupResult | None:
        """(canonical, form, search index, IPv4s, IPv6s) for a query name in
        any case, with or without the trailing dot; None if unknown."""
        q = normalize_query_name(name)
        if q is None:
            return None
        hit = self._exact.get(q)
        if hit is not None:
            return (hit[0], hit[1], None, hit[2], hit[3])
        stripped = [(i, q[: -len(s)]) for i, s in self._search if len(q) > len(s) and q.endswith(s)]
        for i, x in stripped:
            hit = self._exact.get(x)
            if hit is not None:
                return (hit[0], hit[1], i, hit[2], hit[3])
        if not self._wild:
            return None
        for i_or_none, x in [(None, q), *stripped]:
            dot = x.find(".")
            while dot >= 0:  # parent domains of x, longest (most specific) first
                addrs = self._wild.get(x[dot + 1 :])
                if addrs is not None:
                    return (x, WILDCARD, i_or_none, addrs[0], addrs[1])
                dot = x.find(".", dot + 1)
        return None


def _prefer_new(new: _Holder, old: _Holder) -> bool:
    """table.rs prefer_new: lower (form strength, registry rank, canonical
    hostname, hostname as given) wins; on a tie the key stays with its holder."""
    return new[2] < old[2]


def _host_rank(p: _Prepared) -> tuple[int, str]:
    """table.rs host_rank: which of two entries for one hostname is kept."""
    return (0 if p.registry == REGISTRY_KUBERNETES else 1, p.original)


# -- documents (load.rs) ------------------------------------------------------


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _doc_string(host: str, field: str, v: Any) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    raise _entry_error(host, field, f"expected a string, got {_kind(v)}")


def _doc_strings(host: str, field: str, v: Any) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise _entry_error(host, field, f"expected a list of strings, got {_kind(v)}")
    for i, item in enumerate(v):
        if not isinstance(item, str):
            raise _entry_error(host, f"{field}[{i}]", f"expected a string, got {_kind(item)}")
    return list(v)


def entries_from_document(doc: Any, source_name: str = "<document>") -> list[dict[str, Any]]:
    """load.rs entries_from_value: ``{"table": {host: info}}`` into entry dicts.

    serde_json's map is ordered by key, so entries and the fields within one
    are visited in sorted order: that decides which error is reported first
    and which of ``alt_hosts``/``altHosts`` wins when both are given.
    """
    if not isinstance(doc, dict):
        raise ValueError(f'{source_name}: expected an object with a "table" field')
    for k in sorted(doc):
        if k != "table":
            raise ValueError(f'{source_name}: unknown top-level field {rust_debug_str(k)} (expected "table")')
    table = doc.get("table")
    if table is None:
        return []
    if not isinstance(table, dict):
        raise ValueError(f'{source_name}: "table" must be an object mapping hostnames to entries')
    out: list[dict[str, Any]] = []
    for host in sorted(table):
        info = table[host]
        e: dict[str, Any] = {"hostname": host}
        if info is not None and not isinstance(info, dict):
            raise _entry_error(host, "(entry)", f"expected an object, got {_kind(info)}")
        fields: dict[str, Any] = info or {}
        for k in sorted(fields):
            v = fields[k]
            if k == "ips":
                e["ips"] = _doc_strings(host, "ips", v)
            elif k in ("registry", "shortname", "namespace"):
                e[k] = _doc_string(host, k, v)
            elif k in ("alt_hosts", "altHosts"):
                e["alt_hosts"] = _doc_strings(host, "alt_hosts", v)
            else:
                raise _entry_error(host, k, "unknown field")
        out.append(e)
    return out

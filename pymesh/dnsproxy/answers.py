"""What a DNS client is answered for a name, from a name table.

Mirrors the proxy's local answers: A/AAAA records owned by the name as the
client asked it (no CNAME to Istio-only names, istio/istio#35421), NODATA for
a known name without the asked family (never NXDOMAIN, istio/istio#31250),
and "forward" for names the table does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymesh._native import NameTable, PymeshError

DEFAULT_TTL = 30
QTYPES = ("A", "AAAA")


@dataclass(frozen=True)
class Answer:
    query: str
    qtype: str
    known: bool
    canonical: str | None = None
    form: str | None = None
    search_index: int | None = None
    addresses: tuple[str, ...] = ()
    ttl: int = DEFAULT_TTL

    @property
    def rcode(self) -> str:
        """The proxy's outcome: NOERROR for known names (NODATA when no
        address of the type), FORWARD when an upstream must answer."""
        return "NOERROR" if self.known else "FORWARD"

    @property
    def owner(self) -> str:
        return self.query if self.query.endswith(".") else self.query + "."

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query, "type": self.qtype, "known": self.known, "rcode": self.rcode}
        if self.known:
            out.update(
                canonical=self.canonical,
                form=self.form,
                search_index=self.search_index,
                answers=[{"name": self.owner, "type": self.qtype, "ttl": self.ttl, "data": a} for a in self.addresses],
            )
        return out

    def to_text(self) -> str:
        if not self.known:
            return f";; {self.owner}\t{self.qtype}: not in the name table (a proxy forwards it upstream)"
        how = f"via {self.form}" + (f", search domain #{self.search_index}" if self.search_index is not None else "")
        lines = [f";; {self.owner} -> {self.canonical}. ({how})"]
        if not self.addresses:
            lines.append(f";; NOERROR, no {self.qtype} records (NODATA)")
        lines += [f"{self.owner}\t{self.ttl}\tIN\t{self.qtype}\t{a}" for a in self.addresses]
        return "\n".join(lines)


def answer(table: NameTable, name: str, qtype: str = "A", ttl: int = DEFAULT_TTL) -> Answer:
    qtype = qtype.upper()
    if qtype not in QTYPES:
        raise PymeshError(f"--type must be one of {', '.join(QTYPES)}, got {qtype!r}")
    m = table.lookup(name)
    if m is None:
        return Answer(name, qtype, known=False)
    return Answer(name, qtype, True, m.canonical, m.form, m.search_index, m.addresses(qtype), ttl)

"""DNS queries for ``pymesh up``, with dnspython (the same client the tests
use; pymesh keeps one codec of its own, the native one in the DNS proxy)."""

from __future__ import annotations

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def query(server: tuple[str, int], name: str, qtype: str = "A", timeout: float = 2.0) -> tuple[str, list[str]]:
    """One UDP query: (rcode name, ["name ttl IN TYPE data", ...])."""
    q = dns.message.make_query(name, dns.rdatatype.from_text(qtype))
    r = dns.query.udp(q, server[0], port=server[1], timeout=timeout)
    records = [line for rrset in r.answer for line in rrset.to_text().splitlines()]
    return dns.rcode.to_text(r.rcode()), records

"""The DNS proxy: answers mesh names from the native name table and forwards
everything else upstream. This package holds its Python side."""

from pymesh._native import DnsServer, dns_answer
from pymesh.dnsproxy.answers import DEFAULT_TTL, Answer, answer
from pymesh.dnsproxy.server import DEFAULT_LISTEN, DnsProxy, TableSource, upstreams_from_resolv_conf

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_TTL",
    "Answer",
    "DnsProxy",
    "DnsServer",
    "TableSource",
    "answer",
    "dns_answer",
    "upstreams_from_resolv_conf",
]

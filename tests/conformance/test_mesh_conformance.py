"""The mesh's conventions (pymesh.mesh) against the case list the Rust core
runs too (tests/cases/mesh.cases, native/tests/conformance/mesh.rs), so the
two implementations of cluster names, SNI, SPIFFE, ALPN and EDS metadata
keys cannot drift."""

from __future__ import annotations

import pytest

from pymesh.mesh import alpn, xds
from pymesh.mesh.clusters import ClusterName, cluster_name, inbound_cluster_port, parse_cluster_name, parse_sni, sni
from pymesh.mesh.errors import AuthError
from pymesh.mesh.identity import parse_spiffe, spiffe_uri
from support.paths import CASES as CASES_DIR

CASES = CASES_DIR / "mesh.cases"
ALPN = {
    "outbound-tcp": alpn.MTLS_TCP,
    "inbound": alpn.INBOUND_PREFERENCE,
    "http-h2": alpn.MTLS_H2,
    "http-1.1": alpn.MTLS_HTTP11,
    "http-1.0": alpn.MTLS_HTTP10,
}
METADATA = {
    "service-account": (xds.ISTIO_FILTER, xds.SERVICE_ACCOUNT_KEY),
    "workload": (xds.ISTIO_FILTER, xds.WORKLOAD_KEY),
    "tls-mode": (xds.TRANSPORT_SOCKET_MATCH, xds.TLS_MODE_KEY),
}


def _cases() -> list[tuple[int, str, list[str], list[str]]]:
    out = []
    for lineno, line in enumerate(CASES.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        left, arrow, right = line.partition(" -> ")
        assert arrow, f"mesh.cases:{lineno}: no ' -> '"
        directive, *args = left.split(" ")
        out.append((lineno, directive, args, right.split(" ")))
    return out


def _parts(c: ClusterName | None) -> list[str]:
    if c is None:
        return ["invalid"]
    return [c.direction, str(c.port), c.subset or "-", c.host]


def _subset(s: str) -> str:
    return "" if s == "-" else s


@pytest.mark.parametrize(("lineno", "directive", "args", "want"), _cases(), ids=lambda v: str(v)[:40])
def test_case(lineno: int, directive: str, args: list[str], want: list[str]) -> None:
    if directive == "cluster":
        got = _parts(parse_cluster_name(args[0]))
    elif directive == "build-cluster":
        d, port, subset, host = args
        got = [cluster_name(host, int(port), _subset(subset), d)]
    elif directive == "sni":
        d, port, subset, host = args
        got = [sni(host, int(port), _subset(subset), d)]
    elif directive == "parse-sni":
        got = _parts(parse_sni(args[0]))
    elif directive == "spiffe":
        got = [spiffe_uri(*args)]
    elif directive == "parse-spiffe":
        try:
            i = parse_spiffe(args[0])
            got = [i.trust_domain, i.namespace, i.service_account]
        except AuthError:
            got = ["invalid"]
    elif directive == "alpn":
        got = list(ALPN[args[0]])
    elif directive == "metadata":
        got = list(METADATA[args[0]])
    else:
        pytest.fail(f"mesh.cases:{lineno}: unknown directive {directive!r}")
    assert got == want, f"mesh.cases:{lineno}"


def test_every_directive_is_covered() -> None:
    kinds = {d for _, d, _, _ in _cases()}
    assert kinds == {"cluster", "build-cluster", "sni", "parse-sni", "spiffe", "parse-spiffe", "alpn", "metadata"}


@pytest.mark.parametrize(
    ("name", "port"),
    [
        ("inbound|9080||", 9080),
        ("inbound|65535||", 65535),
        ("inbound|9080|v1|", None),  # a subset: not istiod's sidecar inbound cluster
        ("inbound|9080||reviews.default.svc.cluster.local", None),
        ("outbound|9080||", None),
        ("inbound|0||", None),
        ("inbound|x||", None),
        ("inbound|9080|", None),
        ("InboundPassthroughCluster", None),
    ],
)
def test_inbound_cluster_port(name: str, port: int | None) -> None:
    """istiod's sidecar inbound clusters (``BuildInboundSubsetKey``) name only their port; the
    agent reads the app's upstream protocol from them (pymesh.agent.state.Tables)."""
    assert inbound_cluster_port(name) == port

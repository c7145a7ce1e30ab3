"""Hostile input to the security parsers: any token text is a TokenError
(never another exception, never accepted unless it is exactly what was
signed), any CSR bytes are a CaError or a certificate for the caller's
identity, any SPIFFE text parses only in Istio's exact form."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymesh.controlplane.ca import CaError, TokenError
from pymesh.controlplane.ca.ca import CertificateAuthority
from pymesh.controlplane.ca.tokens import TokenAuthority
from pymesh.mesh.errors import AuthError
from pymesh.mesh.identity import identity, parse_spiffe
from pymesh.mesh.pki import load_certs, make_csr, new_key, spiffe_ids

SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


@pytest.fixture(scope="module")
def ta(tmp_path_factory: pytest.TempPathFactory) -> TokenAuthority:
    return TokenAuthority(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(Path(tmp_path_factory.mktemp("ca")) / "ca")


@SETTINGS
@given(st.text(max_size=300))
def test_any_text_is_a_token_error(ta: TokenAuthority, text: str) -> None:
    with pytest.raises(TokenError):
        ta.verify(text)


@SETTINGS
@given(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_of_a_token_is_refused(ta: TokenAuthority, pos: int, value: int) -> None:
    tok = ta.create("default", "product")
    i = pos % len(tok)
    mutated = tok[:i] + chr(value) + tok[i + 1 :]
    if mutated == tok:
        assert ta.verify(mutated).service_account == "product"
        return
    try:
        got = ta.verify(mutated)
    except TokenError:
        return
    # base64url decoding may map two texts to one byte string (unused trailing bits):
    # then what verified is exactly what was signed.
    assert got.uri == "spiffe://cluster.local/ns/default/sa/product"


@SETTINGS
@given(st.binary(max_size=400))
def test_any_csr_bytes_are_refused_cleanly(ca: CertificateAuthority, data: bytes) -> None:
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(data) + b"-----END CERTIFICATE REQUEST-----\n"
    for blob in (data, pem):
        try:
            issued = ca.sign_csr(blob, identity("default", "a"))
        except CaError:
            continue
        assert spiffe_ids(load_certs(issued.chain[0].encode(), "leaf")[0]) == ["spiffe://cluster.local/ns/default/sa/a"]


@SETTINGS
@given(st.text(max_size=120))
def test_spiffe_parsing_accepts_only_istio_form(text: str) -> None:
    try:
        ident = parse_spiffe(text)
    except AuthError:
        return
    assert ident.uri == text


@SETTINGS
@given(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
)
def test_identities_round_trip_through_certificates(ca: CertificateAuthority, ns: str, sa: str) -> None:
    ident = identity(ns, sa)
    issued = ca.sign_csr(make_csr(new_key()), ident)
    (uri,) = spiffe_ids(load_certs(issued.chain[0].encode(), "leaf")[0])
    assert parse_spiffe(uri) == ident

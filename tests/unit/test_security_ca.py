"""The mesh CA, bootstrap tokens and the CA proto, without a network: key
files and their modes, Istio's plug-in layout, what a certificate says
(SPIFFE SAN from the authenticated identity, never from the CSR), and every
way a token can be wrong."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import descriptor_pb2

from pymesh import PymeshError
from pymesh.controlplane.ca import CaError, TokenError
from pymesh.controlplane.ca.ca import CA_FILES, CertificateAuthority
from pymesh.controlplane.ca.tokens import TokenAuthority, b64url, parse_duration
from pymesh.mesh.identity import identity
from pymesh.mesh.pki import load_certs, make_csr, new_key, spiffe_ids
from pymesh.proto import ca as ca_pb
from support.system import require_module, require_tools

PROTO_DIR = Path(ca_pb.__file__).parent


def test_root_is_generated_once_with_owner_only_files(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    assert stat.S_IMODE(os.stat(tmp_path / "ca").st_mode) == 0o700
    for f in CA_FILES:
        assert stat.S_IMODE(os.stat(tmp_path / "ca" / f).st_mode) == 0o600, f
    again = CertificateAuthority(tmp_path / "ca")
    assert again.root_pem == ca.root_pem  # loaded, not regenerated
    assert again.root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_workload_certificate_takes_the_identity_not_the_csr(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca", trust_domain="example.org")
    key = new_key()
    # The CSR asks for another identity; the CA must ignore it.
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://example.org/ns/kube-system/sa/x")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    issued = ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), identity("default", "product", "example.org"))
    leaf = load_certs(issued.chain[0].encode(), "leaf")[0]
    assert spiffe_ids(leaf) == ["spiffe://example.org/ns/default/sa/product"]
    assert leaf.subject == x509.Name([])
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    life = leaf.not_valid_after_utc.timestamp() - time.time()
    assert 24 * 3600 - 120 < life <= 24 * 3600  # default 24 h
    assert issued.chain[-1] == ca.root_pem and len(issued.chain) == 2
    leaf.verify_directly_issued_by(ca.root)
    short = ca.sign_csr(make_csr(new_key()), identity("default", "product", "example.org"), ttl=3)
    assert short.not_after - time.time() < 4


def test_malformed_and_forged_csrs_are_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    with pytest.raises(CaError, match="not a PEM certificate signing request"):
        ca.sign_csr("hello", identity("default", "a"))
    pem = make_csr(new_key()).decode()
    body = pem.splitlines()
    raw = bytearray(base64.b64decode("".join(body[1:-1])))
    raw[-5] ^= 0xFF  # corrupt the signature
    b64 = base64.b64encode(bytes(raw)).decode()
    forged = "\n".join([body[0], *[b64[i : i + 64] for i in range(0, len(b64), 64)], body[-1]])
    with pytest.raises(CaError):
        ca.sign_csr(forged, identity("default", "a"))
    assert issubclass(CaError, PymeshError)


def test_plug_in_ca_from_an_existing_pki_with_openssl(tmp_path: Path) -> None:
    """Istio's cacerts layout made by openssl: root → intermediate; the chain returned ends at the root."""
    require_tools("openssl")
    d = tmp_path / "pki"
    d.mkdir()

    def sh(*args: str) -> None:
        subprocess.run(args, cwd=d, check=True, capture_output=True)

    sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "root-key.pem")
    sh("openssl", "req", "-x509", "-new", "-key", "root-key.pem", "-subj", "/O=corp root", "-days", "30",
       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
       "-out", "root-cert.pem")  # fmt: skip
    sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca-key.pem")
    sh("openssl", "req", "-new", "-key", "ca-key.pem", "-subj", "/O=corp intermediate", "-out", "ca.csr")
    (d / "ext.cnf").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
    sh("openssl", "x509", "-req", "-in", "ca.csr", "-CA", "root-cert.pem", "-CAkey", "root-key.pem",
       "-CAcreateserial", "-days", "10", "-extfile", "ext.cnf", "-out", "ca-cert.pem")  # fmt: skip
    (d / "cert-chain.pem").write_text((d / "ca-cert.pem").read_text() + (d / "root-cert.pem").read_text())
    ca = CertificateAuthority(tmp_path / "ca", plugin_dir=d)
    issued = ca.sign_csr(make_csr(new_key()), identity("default", "a"))
    assert len(issued.chain) == 3
    (tmp_path / "chain.pem").write_text(issued.chain[0] + issued.chain[1])
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(d / "root-cert.pem"), "-untrusted", str(tmp_path / "chain.pem"),
         str(tmp_path / "chain.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca-key.pem").st_mode) == 0o600
    (d / "cert-chain.pem").unlink()
    with pytest.raises(CaError, match=r"lacks cert-chain\.pem"):
        CertificateAuthority(tmp_path / "ca2", plugin_dir=d)


def test_token_round_trip_and_claims(tmp_path: Path) -> None:
    ta = TokenAuthority(tmp_path / "tokens")
    tok = ta.create("default", "product", ttl=60)
    assert ta.verify(tok).uri == "spiffe://cluster.local/ns/default/sa/product"
    header, claims = (json.loads(base64.urlsafe_b64decode(p + "==")) for p in tok.split(".")[:2])
    assert header["alg"] == "ES256" and claims["sub"] == "system:serviceaccount:default:product"
    assert claims["aud"] == ["istio-ca"] and claims["exp"] - claims["iat"] == 60
    assert stat.S_IMODE(os.stat(tmp_path / "tokens" / "signing-key.pem").st_mode) == 0o600
    # Another control plane's key: same shape, refused.
    other = TokenAuthority(tmp_path / "other")
    with pytest.raises(TokenError, match=r"another key|does not verify"):
        ta.verify(other.create("default", "product"))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda ta, tok: tok, "expired"),
        (lambda ta, tok: ta.create("default", "p", audience="other"), "audience"),
        (lambda ta, tok: "a.b", "not a JWT"),
        (lambda ta, tok: b64url(b'{"alg":"none"}') + "." + tok.split(".")[1] + ".", "algorithm 'none'"),
        (lambda ta, tok: tok.rsplit(".", 1)[0] + "." + b64url(b"\0" * 64), "does not verify"),
        (lambda ta, tok: tok.split(".")[0] + "." + b64url(b'{"sub":"x"}') + "." + tok.split(".")[2], "does not verify"),
        (lambda ta, tok: "!!!." + tok.split(".", 1)[1], "not base64url"),
    ],
)
def test_bad_tokens_are_refused_with_the_reason(tmp_path: Path, mutate: object, message: str) -> None:
    ta = TokenAuthority(tmp_path / "tokens", leeway=0)
    tok = ta.create("default", "p", ttl=1)
    bad = mutate(ta, tok)  # type: ignore[operator]
    with pytest.raises(TokenError, match=message):
        ta.verify(bad, now=time.time() + 5)


def test_token_names_and_durations_are_validated(tmp_path: Path) -> None:
    ta = TokenAuthority(tmp_path / "tokens")
    with pytest.raises(PymeshError, match="namespace 'a/b'"):
        ta.create("a/b", "x")
    assert parse_duration("90m") == 5400 and parse_duration("2h") == 7200 and parse_duration("30") == 30
    with pytest.raises(TokenError, match="positive"):
        parse_duration("0")


def test_ca_proto_descriptor_matches_the_file(tmp_path: Path) -> None:
    protoc = require_module("grpc_tools.protoc", "grpcio-tools is a test dependency (pip install -e .[test])")
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    out = tmp_path / "ca.desc"
    rc = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--descriptor_set_out={out}", str(PROTO_DIR / "ca.proto")]
    )
    assert rc == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    ours = ca_pb.file_descriptor()
    assert compiled.package == ours.package == "istio.v1.auth"
    assert compiled.message_type == ours.message_type
    assert compiled.service == ours.service
    # Istio's wire form: csr=1, validity_duration=3, metadata=4 (Struct); cert_chain=1 repeated.
    msg = ca_pb.IstioCertificateRequest(csr="C", validity_duration=60)
    assert msg.SerializeToString() == b"\n\x01C\x18<"
    assert ca_pb.IstioCertificateResponse(cert_chain=["a", "b"]).SerializeToString() == b"\n\x01a\n\x01b"


def test_ec_key_curve() -> None:
    assert isinstance(new_key().curve, ec.SECP256R1)

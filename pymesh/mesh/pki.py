"""Certificates and keys as both ends of the mesh handle them: the CA signs
(``pymesh.controlplane.ca``), the agent makes keys and CSRs and checks what
it got back (``pymesh.agent.certs``), the TLS front and the Python data path
read peers' SPIFFE ids. Istio's workload certificates carry one URI SAN
``spiffe://...`` and no subject (istio/istio ``security/pkg/pki/util``)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pymesh.mesh.errors import SecurityError

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class CertificateError(SecurityError, ValueError):
    """PEM that does not hold what it should (names where it came from)."""


def new_key(kind: str = "ec") -> SigningKey:
    """A fresh private key: ``ec`` (P-256, what the agent uses), ``rsa`` (2048, Istio's default)."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise CertificateError(f"unknown key type {kind!r} (ec or rsa)")


def key_pem(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certs(data: bytes, where: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle; CertificateError naming ``where``."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateError(f"{where}: not PEM certificates: {e}") from e
    return certs


def hash_for(key: SigningKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def make_csr(key: SigningKey) -> bytes:
    """A CSR as istio-agent sends it (the SANs are ignored by the CA anyway)."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hash_for(key))
    return csr.public_bytes(serialization.Encoding.PEM)


def spiffe_ids(cert: x509.Certificate) -> list[str]:
    """The certificate's ``spiffe://`` URI SANs."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [u for u in ext.value.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]


def not_after(cert_chain_pem: bytes) -> float:
    """The leaf's expiry (Unix time)."""
    return load_certs(cert_chain_pem, "cert-chain.pem")[0].not_valid_after_utc.timestamp()


def fingerprint(pem: str) -> str:
    """``sha256:<hex>`` of the first certificate's DER (what ``openssl x509 -fingerprint -sha256``
    shows, without colons), or ``unreadable`` when there is none."""
    try:
        cert = load_certs(pem.encode(), "certificate")[0]
    except (SecurityError, IndexError):
        return "unreadable"
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()

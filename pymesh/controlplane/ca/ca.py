"""The mesh CA: a root (or an intermediate plugged in from an existing PKI)
that signs workload certificates with SPIFFE identities.

Key material lives in ``<data-dir>/ca/`` in the layout Istio uses for plug-in
CA certificates (``cacerts``: ca-cert.pem, ca-key.pem, root-cert.pem,
cert-chain.pem), directory 0700 and files 0600. On first start, when the
directory is empty, a self-signed root is generated there (ECDSA P-256, 10
years; ca-cert = root-cert, cert-chain = the root). ``plugin_dir`` copies an
existing PKI's four files in instead (the intermediate signs, the chain up to
the root is returned with every certificate).

Workload certificates (istio ``security/pkg/pki/ca``): no subject, one
critical URI SAN ``spiffe://<td>/ns/<ns>/sa/<sa>`` taken from the caller's
authentication (the CSR's own subject and SANs are ignored), digital
signature + key encipherment, server and client auth, default lifetime
24 h, requested lifetimes capped at ``max_ttl``. The response chain is leaf
first, root last (IstioCertificateResponse.cert_chain).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pymesh.controlplane.ca.errors import CaError
from pymesh.mesh import pki
from pymesh.mesh.defaults import DEFAULT_TRUST_DOMAIN, ISTIOD_NAMES
from pymesh.mesh.files import private_dir, write_atomic
from pymesh.mesh.identity import Identity
from pymesh.mesh.pki import SigningKey, cert_pem, hash_for, key_pem, new_key

DEFAULT_CERT_TTL = 24 * 3600.0  # istiod's DEFAULT_WORKLOAD_CERT_TTL
MAX_CERT_TTL = 90 * 24 * 3600.0  # istiod's MAX_WORKLOAD_CERT_TTL
ROOT_TTL = 10 * 365 * 24 * 3600.0
# Certificates start a little in the past so a peer whose clock is slightly behind accepts them.
BACKDATE = 60.0
CA_FILES = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")


def load_certs(data: bytes, where: str) -> list[x509.Certificate]:
    try:
        return pki.load_certs(data, where)
    except pki.CertificateError as e:
        raise CaError(str(e)) from e


def write_private(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as e:
        raise CaError(f"{path}: cannot write: {e.strerror}") from e


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CaError(f"{path}: cannot read the {what}: {e.strerror}") from e


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Leaf:
    """What the dashboard shows of a workload certificate: its serial and expiry."""

    serial: int
    not_after: float  # Unix time, whole seconds as the certificate holds it

    @classmethod
    def of(cls, cert: x509.Certificate) -> Leaf:
        return cls(cert.serial_number, cert.not_valid_after_utc.timestamp())


@dataclass(frozen=True)
class Issued:
    chain: tuple[str, ...]  # PEM, leaf first, root last
    not_after: float  # Unix time
    serial: int

    @property
    def leaf(self) -> Leaf:
        return Leaf(self.serial, self.not_after)


class CertificateAuthority:
    def __init__(
        self,
        ca_dir: str | os.PathLike[str],
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        plugin_dir: str | os.PathLike[str] | None = None,
        default_ttl: float = DEFAULT_CERT_TTL,
        max_ttl: float = MAX_CERT_TTL,
    ) -> None:
        try:
            self.dir = private_dir(Path(ca_dir))
        except OSError as e:
            raise CaError(f"{ca_dir}: cannot create a private directory: {e.strerror}") from e
        self.trust_domain = trust_domain
        self.default_ttl = default_ttl
        self.max_ttl = max(max_ttl, default_ttl)
        self._lock = threading.Lock()
        if plugin_dir is not None:
            self._plug_in(Path(plugin_dir))
        elif not (self.dir / "ca-key.pem").exists():
            self._generate_root()
        self._load()

    # --- key material ----------------------------------------------------------------

    def _generate_root(self) -> None:
        key = new_key("ec")
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.trust_domain)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=BACKDATE))
            .not_valid_after(now + datetime.timedelta(seconds=ROOT_TTL))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )  # keyCertSign, cRLSign
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        pem = cert_pem(cert)
        # The key last: its presence is what marks the directory as initialised.
        for name_, data in (("ca-cert.pem", pem), ("root-cert.pem", pem), ("cert-chain.pem", pem)):
            write_private(self.dir / name_, data)
        write_private(self.dir / "ca-key.pem", key_pem(key))

    def _plug_in(self, src: Path) -> None:
        missing = [f for f in CA_FILES if not (src / f).is_file()]
        if missing:
            raise CaError(f"{src}: plug-in CA directory lacks {', '.join(missing)} (Istio's cacerts layout)")
        for f in CA_FILES:
            write_private(self.dir / f, read_file(src / f, f))

    def _load(self) -> None:
        def read(name: str) -> bytes:
            return read_file(self.dir / name, name)

        try:
            key = serialization.load_pem_private_key(read("ca-key.pem"), password=None)
        except (ValueError, TypeError) as e:
            raise CaError(f"{self.dir / 'ca-key.pem'}: not an unencrypted PEM private key: {e}") from e
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            raise CaError(f"{self.dir / 'ca-key.pem'}: unsupported key type {type(key).__name__}")
        self.key: SigningKey = key
        self.cert = load_certs(read("ca-cert.pem"), str(self.dir / "ca-cert.pem"))[0]
        roots = load_certs(read("root-cert.pem"), str(self.dir / "root-cert.pem"))
        chain = load_certs(read("cert-chain.pem"), str(self.dir / "cert-chain.pem"))
        if self.cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
            raise CaError(f"{self.dir}: ca-key.pem does not match ca-cert.pem")
        self.root = roots[0]
        # Chain after the leaf: the signing cert and its issuers up to the root, root last, once.
        ordered = [c for c in chain if c != self.root]
        if not ordered or ordered[0] != self.cert:
            ordered = [self.cert, *[c for c in ordered if c != self.cert]]
        if self.cert == self.root:
            ordered = []
        self._chain_tail = tuple(cert_pem(c).decode() for c in [*ordered, self.root])
        self.root_pem = cert_pem(self.root).decode()
        # Every root of root-cert.pem (during a root change: the new and the old one): what
        # client certificates are verified against, so workloads holding a certificate from
        # the previous root can still authenticate to renew.
        self.trust_pem = "".join(cert_pem(c).decode() for c in roots)
        self._issuer = self.cert.subject
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())

    # --- issuing ------------------------------------------------------------------------

    def ttl_for(self, requested: float) -> float:
        """istiod: a zero or negative request gets the default, a longer one is capped."""
        if requested <= 0:
            return self.default_ttl
        return min(requested, self.max_ttl)

    def sign_csr(self, csr_pem: str | bytes, ident: Identity, ttl: float = 0.0) -> Issued:
        """Signs the CSR's public key for ``ident``; the CSR's subject and SANs are ignored."""
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(data)
        except ValueError as e:
            raise CaError(f"csr: not a PEM certificate signing request: {e}") from e
        try:
            valid = csr.is_signature_valid
        except (InvalidSignature, ValueError):
            valid = False
        if not valid:
            raise CaError("csr: its signature does not verify (proof of possession of the key failed)")
        pub = csr.public_key()
        if not isinstance(pub, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
            raise CaError(f"csr: unsupported public key type {type(pub).__name__}")
        if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < 2048:
            raise CaError(f"csr: RSA key of {pub.key_size} bits; at least 2048 required")
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ident.uri)])
        return self._issue(pub, san, self.ttl_for(ttl), subject=x509.Name([]))

    def issue_server(
        self, dns_names: Sequence[str] = ISTIOD_NAMES, ips: Sequence[str] = (), ttl: float = 0.0
    ) -> tuple[Issued, bytes]:
        """A serving certificate and its key (PEM) for the control plane itself."""
        key = new_key("ec")
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        for ip in ips:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError:
                names.append(x509.DNSName(ip))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0] if dns_names else "istiod")])
        issued = self._issue(key.public_key(), x509.SubjectAlternativeName(names), self.ttl_for(ttl), subject=subject)
        return issued, key_pem(key)

    def _issue(self, pub: object, san: x509.SubjectAlternativeName, ttl: float, *, subject: x509.Name) -> Issued:
        now = _now()
        not_after = min(now + datetime.timedelta(seconds=ttl), self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._issuer)
            .public_key(pub)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=BACKDATE))
            .not_valid_after(not_after)
            # RFC 5280 §4.2.1.6: with an empty subject the SAN extension is critical.
            .add_extension(san, critical=len(subject) == 0)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(self._aki, critical=False)
        )
        cert = builder.sign(self.key, hash_for(self.key))
        leaf = Leaf.of(cert)
        return Issued((cert_pem(cert).decode(), *self._chain_tail), leaf.not_after, leaf.serial)


def not_after(cert_chain_pem: bytes) -> float:
    return load_certs(cert_chain_pem, "cert-chain.pem")[0].not_valid_after_utc.timestamp()

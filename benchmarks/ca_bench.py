"""Certificates signed per second by the mesh CA, beside baselines in the same run.

    .venv/bin/python benchmarks/ca_bench.py           # 2,000 signings per variant
    .venv/bin/python benchmarks/ca_bench.py --short   # 100 (CI)

Variants (the same pre-generated EC P-256 CSRs, so only signing is timed):
- ``pymesh ec``: CertificateAuthority.sign_csr with pymesh's root (EC P-256,
  ECDSA-SHA256): CSR parse + proof-of-possession check + certificate build + sign;
- ``rsa-2048 CA``: the same code with an RSA-2048 CA key (Istio's default
  self-signed CA key type) plugged in: the baseline key choice;
- ``openssl x509 -req``: the openssl CLI signing one CSR per process with the
  same EC CA (what a shell-script PKI does);
- ``grpc CreateCertificate``: the whole RPC over the control plane's TLS port
  (token auth, sequential client, one persistent mTLS-less channel): what an
  agent's request costs the server, one event-loop thread serving.

Reported: signings per second and the ratio to ``pymesh ec``. One core: the
in-process variants run in this one thread; the gRPC variant's server is one
event-loop thread (the client runs beside it on the other core).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' `support` package


def _rsa_ca(dest: Path) -> Path:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from pymesh.mesh.pki import cert_pem, key_pem, new_key

    key = new_key("rsa")
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rsa root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    dest.mkdir(parents=True)
    for f in ("ca-cert.pem", "root-cert.pem", "cert-chain.pem"):
        (dest / f).write_bytes(cert_pem(cert))
    (dest / "ca-key.pem").write_bytes(key_pem(key))
    return dest


def _rate(n: int, fn: object) -> float:
    started = time.perf_counter()
    for i in range(n):
        fn(i)  # type: ignore[operator]
    return n / (time.perf_counter() - started)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", action="store_true")
    ap.add_argument("-n", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.n or (100 if args.short else 2000)
    n_cli = max(10, n // 20)

    from pymesh.controlplane.ca.ca import CertificateAuthority
    from pymesh.mesh.identity import identity
    from pymesh.mesh.pki import make_csr, new_key

    tmp = Path(tempfile.mkdtemp(prefix="ca-bench-"))
    csrs = [make_csr(new_key()) for _ in range(min(n, 200))]
    ident = identity("bench", "sa")
    results: dict[str, float] = {}

    ec_ca = CertificateAuthority(tmp / "ec")
    results["pymesh ec"] = _rate(n, lambda i: ec_ca.sign_csr(csrs[i % len(csrs)], ident))
    rsa_ca = CertificateAuthority(tmp / "rsa", plugin_dir=_rsa_ca(tmp / "rsa-src"))
    results["rsa-2048 CA"] = _rate(n, lambda i: rsa_ca.sign_csr(csrs[i % len(csrs)], ident))

    csr_file = tmp / "req.csr"
    csr_file.write_bytes(csrs[0])
    ext = tmp / "ext.cnf"
    ext.write_text(
        "subjectAltName=critical,URI:spiffe://cluster.local/ns/bench/sa/sa\nbasicConstraints=critical,CA:FALSE\n"
    )

    def openssl(_: int) -> None:
        subprocess.run(
            ["openssl", "x509", "-req", "-in", str(csr_file), "-CA", str(tmp / "ec" / "ca-cert.pem"),
             "-CAkey", str(tmp / "ec" / "ca-key.pem"), "-set_serial", "1", "-days", "1", "-extfile", str(ext),
             "-out", os.devnull],
            check=True, capture_output=True,
        )  # fmt: skip

    results["openssl x509 -req"] = _rate(n_cli, openssl)

    import grpc

    from pymesh.proto import ca as ca_pb
    from support.sec import secure_cp, tls_channel

    cp = secure_cp(tmp / "cp")
    try:
        token = cp.security.tokens.create("bench", "sa")
        with tls_channel(cp.secure_port, cp.security.ca.root_pem) as ch:
            call = ch.unary_unary(
                ca_pb.METHOD,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=ca_pb.IstioCertificateResponse.FromString,
            )
            reqs = [ca_pb.IstioCertificateRequest(csr=c.decode()) for c in csrs]
            md = (("authorization", f"Bearer {token}"),)
            call(reqs[0], metadata=md, timeout=10)  # handshake outside the timing
            results["grpc CreateCertificate"] = _rate(n, lambda i: call(reqs[i % len(reqs)], metadata=md, timeout=10))
    finally:
        cp.stop()
    _ = grpc

    base = results["pymesh ec"]
    if args.json:
        print(json.dumps({"n": n, "per_second": results}))
        return 0
    print(f"CA signing, {n} certificates per in-process variant ({n_cli} for the openssl CLI)")
    print(f"{'variant':<26}{'signed/s':>12}{'vs pymesh ec':>14}")
    for k, v in results.items():
        print(f"{k:<26}{v:>12.0f}{v / base:>13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

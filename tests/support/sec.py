"""Real parts for the security tests: a control plane with its TLS port,
ADS streams over TLS channels (with or without a client certificate), the VM's
files for that port, workload certificates from a CA, and an echo app."""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socketserver
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from pymesh.controlplane import ControlPlane
from pymesh.controlplane.ca.ca import CertificateAuthority
from pymesh.controlplane.ca.service import SecurityOptions
from pymesh.mesh.defaults import DEFAULT_TRUST_DOMAIN
from pymesh.mesh.identity import identity
from pymesh.mesh.pki import key_pem, make_csr, new_key
from support.agent import write_vm_files
from support.cp import example_config
from support.procs import reap
from support.system import require_tools

PORT = 18080
SERVER_NAME = "istiod.istio-system.svc"


def secure_cp(tmp: Path, name: str = "cp", *, plaintext: bool = False, **opts: Any) -> ControlPlane:
    cfg = example_config(tmp / f"{name}-mesh", PORT)
    sec = SecurityOptions(secure_listen="127.0.0.1:0", **opts)
    return ControlPlane(
        cfg, xds_listen="127.0.0.1:0", data_dir=tmp / f"{name}-data", security=sec, plaintext=plaintext, debounce=0.02
    ).start()


def secure_vm_files(directory: Path, cp_port: int, root: str, token: str | None = None, **opts: Any) -> Path:
    """istioctl's VM files (``write_vm_files``) for a control plane's TLS port: its
    ``root-cert.pem``, the bootstrap ``istio-token`` when given, and an empty resolv.conf (no
    upstream resolver needed)."""
    d = write_vm_files(directory, cp_port, **{"control_plane_auth": "MUTUAL_TLS", **opts})
    (d / "root-cert.pem").write_text(root)
    if token is not None:
        (d / "istio-token").write_text(token + "\n")
    (d / "resolv.conf").write_text("")
    return d


def tls_channel(port: int, root_pem: str, key: bytes | None = None, chain: bytes | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_pem.encode(), key, chain)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)])


class Stream:
    """One SotW ADS stream on a given channel; first request carries the node."""

    def __init__(self, channel: grpc.Channel, node: Any, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.channel = channel
        self.q: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        self.error: grpc.RpcError | None = None
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources(iter(self.q.get, None), metadata=metadata)
        self.node = node
        self.first = True
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError as e:
            self.error = e
        self.responses.put(None)

    def send(self, type_url: str, version: str = "", nonce: str = "") -> None:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=version, response_nonce=nonce)
        if self.first:
            req.node.CopyFrom(self.node)
            self.first = False
        self.q.put(req)

    def recv(self, timeout: float = 10.0) -> Any:
        r = self.responses.get(timeout=timeout)
        if r is None:
            self.responses.put(None)
            raise AssertionError(f"stream ended: {self.error}")
        return r

    def failure(self, timeout: float = 10.0) -> grpc.RpcError:
        self.t.join(timeout)
        assert self.error is not None, "the stream was not refused"
        return self.error

    def close(self) -> None:
        self.q.put(None)
        self.call.cancel()
        self.channel.close()


# --- workload certificates and an echo app (the data-path tests) ---------------------------


@dataclass
class Workload:
    """An issued workload certificate: its directory and the PEM texts in it."""

    dir: Path
    chain: str
    key: str
    root: str
    serial: int  # the leaf's

    def args(self) -> tuple[str, str, str]:
        """Chain, key and root: what the native relays' ``set_identity`` takes."""
        return self.chain, self.key, self.root


def issue(
    ca: CertificateAuthority,
    d: Path,
    sa: str,
    ttl: float = 3600,
    kind: str = "ec",
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
) -> Workload:
    """A workload certificate for default/``sa`` (in ``trust_domain``) from ``ca``, on a fresh
    ``kind`` key, laid out in ``d`` as the agent writes it (key.pem, cert-chain.pem, root-cert.pem)."""
    key = new_key(kind)
    issued = ca.sign_csr(make_csr(key), identity("default", sa, trust_domain), ttl)
    chain, pem = "".join(issued.chain), key_pem(key)
    d.mkdir(parents=True, exist_ok=True)
    (d / "key.pem").write_bytes(pem)
    (d / "cert-chain.pem").write_text(chain)
    (d / "root-cert.pem").write_text(ca.root_pem)
    serial = x509.load_pem_x509_certificate(issued.chain[0].encode()).serial_number
    return Workload(d, chain, pem.decode(), ca.root_pem, serial)


def workload(ca: CertificateAuthority, d: Path, sa: str, ttl: float = 3600) -> Path:
    """``issue``'s directory: a workload certificate for default/``sa`` from ``ca`` in ``d``."""
    return issue(ca, d, sa, ttl).dir


class Echo(socketserver.ThreadingTCPServer):
    """A TCP echo app on 127.0.0.1 (a free port), served from a thread of its own."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        class H(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while data := self.request.recv(65536):
                    self.request.sendall(data)

        super().__init__(("127.0.0.1", 0), H)
        threading.Thread(target=self.serve_forever, daemon=True).start()


# --- openssl s_client as a client of another TLS stack (and a hostile one) -------------------

PING = b"PING-THROUGH-MTLS\n"


def s_client(
    host: str,
    port: int,
    ca_file: Path,
    cert_dir: Path | None = None,
    *extra: str,
    alpn: str | None = "istio",
    verbose: bool = False,
) -> str:
    """The echo of one line (PING) through ``openssl s_client`` to ``host:port`` (its stdout),
    presenting the workload certificate in ``cert_dir`` when given. ``alpn``: what it offers
    (None: no ALPN extension); ``verbose``: its session report (e.g. "ALPN protocol: ...") too,
    read until the echo arrives."""
    require_tools("openssl")
    args = ["openssl", "s_client", "-connect", f"{host}:{port}", "-CAfile", str(ca_file)]
    args += ["-nocommands"] if verbose else ["-quiet"]
    if alpn is not None:
        args += ["-alpn", alpn]
    if cert_dir is not None:
        args += ["-cert", str(cert_dir / "cert-chain.pem"), "-key", str(cert_dir / "key.pem")]
    args += extra
    # s_client keeps the session open after stdin ends (no TLS half-close): read the echo, then stop it.
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdin is not None and p.stdout is not None
    with contextlib.suppress(BrokenPipeError):
        p.stdin.write(PING)
        p.stdin.flush()
    out = b""
    deadline = time.monotonic() + 5
    done = PING if verbose else b"\n"
    while time.monotonic() < deadline and done not in out:
        if select.select([p.stdout], [], [], 0.2)[0]:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
    reap(p, 5)
    return out.decode(errors="replace")

"""The agent's workload certificate, from the first CSR (with the
istio-token) to renewals (with the certificate itself), and the gRPC channel
credentials that verify the control plane. The CA that answers is the
control plane's (``pymesh.controlplane.ca``); this is the node-agent side, as
Istio splits ``security/pkg/nodeagent`` from ``security/pkg/server/ca``.

The mode follows Istio: ``controlPlaneAuthPolicy`` in mesh.yaml's
``defaultConfig`` (istio-start.sh sets ``MUTUAL_TLS`` for VMs), overridden by
``AgentOptions.control_plane_auth``; ``NONE`` is plaintext.

As istio-agent does it (istio/istio ``security/pkg/nodeagent/cache/secretcache.go``,
``pkg/istio-agent/agent.go``):
- the control plane is verified against ``root-cert.pem`` with the host of
  ``discoveryAddress`` (``istiod.istio-system.svc``) as TLS server name, so a
  gateway or ``hosts`` entry may route the connection anywhere but nothing
  without a certificate from the mesh root can answer it;
- a fresh EC P-256 key and CSR per request; ``validity_duration`` = the
  requested lifetime; ``authorization: Bearer <token>`` and ``ClusterID``
  only when no valid certificate is held;
- ``cert-chain.pem``, ``key.pem`` and ``root-cert.pem`` are written atomically
  (0600) to a persistent directory (Istio's OUTPUT_CERTS, ``/etc/certs``) —
  pymesh keeps them in the agent's state directory, not in ``/var/run``, so a
  reboot keeps the identity (https://github.com/istio/istio/issues/27691);
- while the held certificate is unexpired it authenticates renewals (mTLS)
  and xDS; renewal happens at half its life; an expired or unreadable one
  falls back to the token ("cert expired, using token instead").
Rotation never touches an open connection: credentials are read when a
channel is made.

Several control-plane replicas (``target`` ``a:15012,b:15012``, or a name with
several addresses; :func:`pymesh.agent.xds_client.resolve_target`): the first
certificate is requested at the address the xDS stream is about to use (the
channel factory passes it), renewals at one address after another, moving on
after each failed call, so a dead replica delays a renewal by one retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pymesh.agent.xds_client import resolve_target
from pymesh.mesh.addr import parse_host_port
from pymesh.mesh.defaults import ISTIOD_NAMES, XDS_TLS_PORT
from pymesh.mesh.errors import AddressError, AuthError, SecurityError
from pymesh.mesh.files import private_dir, write_atomic
from pymesh.mesh.pki import key_pem, load_certs, make_csr, new_key, spiffe_ids

log = logging.getLogger(__name__)

DEFAULT_SERVER_NAME = ISTIOD_NAMES[0]
AUTH_MODES = ("MUTUAL_TLS", "NONE")
# istio-agent's SECRET_GRACE_PERIOD_RATIO: renew when half the lifetime is left.
RENEW_RATIO = 0.5


@dataclass(frozen=True)
class Held:
    chain: bytes
    key: bytes
    not_before: float
    not_after: float
    spiffe_id: str
    # When this agent got it (local clock; the file's mtime after a restart). Renewal is
    # timed from here, not from notBefore, which CAs backdate for clock skew (pymesh by
    # 60 s): with a 4 s certificate, "half of notBefore..notAfter" would already be past.
    issued_at: float = 0.0

    def valid(self, now: float | None = None) -> bool:
        t = time.time() if now is None else now
        return self.not_before - 300 <= t < self.not_after


class WorkloadCerts:
    def __init__(
        self,
        target: str,
        root_pem: str,
        cert_dir: str | Path,
        *,
        server_name: str = DEFAULT_SERVER_NAME,
        token: Callable[[], str | None] = lambda: None,
        cluster_id: str = "",
        ttl: float = 24 * 3600.0,
        timeout: float = 10.0,
        root_file: str | Path | None = None,
        root_check: float = 5.0,
    ) -> None:
        if not root_pem:
            raise SecurityError("TLS to the control plane needs root-cert.pem (the mesh root)")
        load_certs(root_pem.encode(), "root-cert.pem")
        self.target = target
        self.root_pem = root_pem.encode()
        try:
            self.dir = private_dir(Path(cert_dir))
        except OSError as e:
            raise SecurityError(f"{cert_dir}: cannot create a private directory: {e.strerror}") from e
        self.server_name = server_name
        self._token = token
        self.cluster_id = cluster_id
        self.ttl = ttl
        self.timeout = timeout
        self._lock = threading.RLock()
        self.held: Held | None = self._load()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0
        self.last_error = ""
        # Called with every certificate obtained (the first, renewals, after a root change),
        # so the data path can take it (pymesh.agent hands it to the relay's set_identity).
        self.on_renew: Callable[[Held], None] | None = None
        # Root change: root-cert.pem (the trust bundle) is re-read every ``root_check``
        # seconds; when it changes the new bundle is trusted and the certificate renewed
        # at once (authenticated by the held one), so it chains to the current root.
        self.root_file = Path(root_file) if root_file is not None else None
        self.root_check = root_check
        self.root_changes = 0
        self._turn = 0  # which of the control-plane addresses the next CA call goes to

    # --- files ----------------------------------------------------------------------------

    def _load(self) -> Held | None:
        try:
            chain = (self.dir / "cert-chain.pem").read_bytes()
            key = (self.dir / "key.pem").read_bytes()
        except OSError:
            return None
        try:
            return _held(chain, key, (self.dir / "cert-chain.pem").stat().st_mtime)
        except (SecurityError, OSError) as e:
            log.warning("%s: held certificate unreadable (%s); the token will be used", self.dir, e)
            return None

    def _store(self, chain: list[str], key: bytes) -> Held:
        data = "".join(c if c.endswith("\n") else c + "\n" for c in chain).encode()
        held = _held(data, key, time.time())
        # The key before the chain: a crash in between leaves a chain whose key is
        # missing or old, which _load() rejects (and the token path recovers).
        _write_private(self.dir / "key.pem", key)
        _write_private(self.dir / "cert-chain.pem", data)
        # The trust bundle, not only the root this chain ends at: during a root change the
        # file holds the new and the old roots, and whatever verifies peers with this
        # directory (the --inbound-mtls listener) must still accept workloads that have not
        # renewed under the new root yet (fetch() checked that chain[-1] is one of them).
        _write_private(self.dir / "root-cert.pem", self.root_pem)
        return held

    # --- gRPC credentials -----------------------------------------------------------------

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name), ("grpc.default_authority", self.server_name)]

    def credentials(self, with_cert: bool = True) -> Any:
        import grpc

        h = self.held if with_cert else None
        if h is not None and h.valid():
            return grpc.ssl_channel_credentials(self.root_pem, h.key, h.chain)
        return grpc.ssl_channel_credentials(self.root_pem)

    def ensure(self) -> Held:
        """The held certificate, fetched first if there is none valid."""
        with self._lock:
            if self.held is None or not self.held.valid():
                return self.fetch()
            return self.held

    def channel(self, target: str | None = None, options: list[tuple[str, Any]] | None = None) -> Any:
        """An mTLS channel (server-only TLS while no certificate is held); gets the first certificate if needed."""
        import grpc

        addr = target or self.address()
        with self._lock:  # one CSR even when the renewal thread is at it too
            if self.held is None or not self.held.valid():
                self.fetch(addr)
        return grpc.secure_channel(addr, self.credentials(), options=[*(options or []), *self.options()])

    def address(self) -> str:
        """The control-plane address the next CA call without a given target goes to."""
        addrs = resolve_target(self.target)
        return addrs[self._turn % len(addrs)] if addrs else self.target

    # --- the CA call ------------------------------------------------------------------------

    def fetch(self, target: str | None = None) -> Held:
        """One CreateCertificate at ``target`` (None: the next control-plane address, the
        following one after a failure): with the held certificate when it is valid, else
        with the token."""
        import grpc

        from pymesh.proto import ca as ca_pb

        with self._lock:
            held = self.held
            use_cert = held is not None and held.valid()
            metadata: list[tuple[str, str]] = []
            if not use_cert:
                tok = self._token()
                if not tok:
                    raise AuthError("no valid certificate held and no istio-token to get one with")
                if held is not None:
                    log.info("certificate expired, using the token instead")
                metadata.append(("authorization", f"Bearer {tok}"))
                if self.cluster_id:
                    metadata.append(("clusterid", self.cluster_id))
            key = new_key("ec")
            req = ca_pb.IstioCertificateRequest(csr=make_csr(key).decode(), validity_duration=int(self.ttl))
            req.metadata.update({"CertSigner": ""})
            addr = target or self.address()
            with grpc.secure_channel(addr, self.credentials(use_cert), options=self.options()) as ch:
                call = ch.unary_unary(
                    ca_pb.METHOD,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=ca_pb.IstioCertificateResponse.FromString,
                )
                try:
                    resp = call(req, timeout=self.timeout, metadata=metadata)
                except grpc.RpcError as e:
                    if target is None:
                        self._turn += 1  # the next attempt asks another replica
                    code = e.code().name if hasattr(e, "code") else "UNKNOWN"
                    raise AuthError(f"CreateCertificate at {addr}: {code}: {e.details()}", code=code) from e
            chain = list(resp.cert_chain)
            if len(chain) < 2:  # istio-agent: a chain without its root is rejected
                raise AuthError(f"CreateCertificate returned {len(chain)} certificate(s); leaf..root expected")
            if load_certs(chain[-1].encode(), "returned root")[0] not in load_certs(self.root_pem, "root-cert.pem"):
                raise AuthError("CreateCertificate returned a chain that does not end at root-cert.pem")
            self.held = self._store(chain, key_pem(key))
            log.info("certificate for %s until %s", self.held.spiffe_id, time.ctime(self.held.not_after))
            if self.on_renew is not None:
                try:
                    self.on_renew(self.held)
                except Exception:  # the certificate is held and stored; a consumer's failure is its own
                    log.exception("certificate consumer failed")
            return self.held

    # --- renewal ------------------------------------------------------------------------------

    def renew_at(self) -> float:
        h = self.held
        if h is None:
            return time.time()
        start = min(max(h.not_before, h.issued_at), h.not_after)
        return start + (h.not_after - start) * RENEW_RATIO

    def start(self) -> WorkloadCerts:
        self._thread = threading.Thread(target=self._run, name="pymesh-agent-certs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _due(self, root_changed: bool) -> bool:
        """Whether a CSR is needed now (checked again under the lock: the first
        xDS channel may have fetched the certificate meanwhile)."""
        h = self.held
        return root_changed or h is None or not h.valid() or self.renew_at() <= time.time()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            wait = self.renew_at() - time.time()
            if wait > 0 and self._stop.wait(min(wait, self.root_check if self.root_file else 60.0)):
                return
            root_changed = self._root_changed()
            if self.renew_at() > time.time() and not root_changed:
                continue
            had = self.held is not None
            try:
                with self._lock:
                    if not self._due(root_changed):
                        continue  # another caller got it first: one issuance, not two
                    h = self.fetch()
                self.renewals += had  # the first certificate is not a renewal
                self.last_error = ""
                backoff = 1.0
                log.debug("certificate %s (%s)", "renewed" if had else "issued", h.spiffe_id)
            except SecurityError as e:
                self.last_error = str(e)
                what = "renewal" if had else "first issuance"
                log.warning("certificate %s failed (retry in %.0fs): %s", what, backoff, e)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 60.0)

    def _root_changed(self) -> bool:
        if self.root_file is None:
            return False
        try:
            data = self.root_file.read_bytes()
        except OSError:
            return False
        if data.strip() == self.root_pem.strip():
            return False
        try:
            load_certs(data, str(self.root_file))
        except SecurityError as e:
            log.warning("%s changed but is not usable; keeping the previous roots: %s", self.root_file, e)
            return False
        with self._lock:
            self.root_pem = data
            self.root_changes += 1
        log.info("%s changed: trusting the new roots and renewing the certificate", self.root_file)
        return True


def _held(chain: bytes, key: bytes, issued_at: float) -> Held:
    certs = load_certs(chain, "cert-chain.pem")
    leaf: x509.Certificate = certs[0]
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:
        raise SecurityError(f"key.pem is not an unencrypted PEM private key: {e}") from e
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise SecurityError("key.pem does not belong to cert-chain.pem's certificate")
    ids = spiffe_ids(leaf)
    return Held(
        chain,
        key,
        leaf.not_valid_before_utc.timestamp(),
        leaf.not_valid_after_utc.timestamp(),
        ids[0] if ids else "",
        issued_at,
    )


def _write_private(path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as e:
        raise SecurityError(f"{path}: cannot write: {e.strerror}") from e


def auth_mode(proxy_config: dict[str, Any], option: str | None) -> str:
    """MUTUAL_TLS or NONE: ``option`` (the CLI / AgentOptions) over mesh.yaml's
    ``defaultConfig.controlPlaneAuthPolicy``, else Istio's default, MUTUAL_TLS
    (istio/istio ``pkg/config/mesh/mesh.go`` ``DefaultProxyConfig``: istio-agent
    speaks TLS to ``istiod...:15012``). Plaintext only when asked for (NONE)."""
    mode = (option or str(proxy_config.get("controlPlaneAuthPolicy") or "MUTUAL_TLS")).upper()
    if mode not in AUTH_MODES:
        raise SecurityError(f"controlPlaneAuthPolicy {mode!r}: expected MUTUAL_TLS or NONE")
    return mode


def server_name(discovery_address: str) -> str:
    """The TLS server name the control plane is verified under: the host of
    ``discoveryAddress`` (the hosts file may send the connection elsewhere)."""
    try:
        return parse_host_port(discovery_address, default_port=XDS_TLS_PORT, what="discoveryAddress").host
    except AddressError as e:
        raise SecurityError(str(e)) from None

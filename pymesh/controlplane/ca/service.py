"""The control plane's security: the CA service, the TLS port (15012) and the
identity checks on xDS streams.

- ``istio.v1.auth.IstioCertificateService/CreateCertificate`` (grpcio generic
  handler on the control plane's server): the caller is authenticated by its
  current certificate (mTLS on the secure port; istio-agent renews this way)
  or by ``authorization: Bearer <istio-token>`` (a token from ``pymesh token
  create``). The certificate's identity is the caller's; the CSR's SANs are
  ignored. ``ImpersonatedIdentity`` (for trusted node agents) is refused.
- xDS streams arriving through the secure port carry the identities of the
  client certificate (and with ``xds_auth="token"`` also of a bearer token);
  without one the stream is refused (UNAUTHENTICATED). Once the node is
  parsed, the first identity whose namespace is the proxy's (and whose
  account is the node's ``SERVICE_ACCOUNT`` when it sets one) becomes the
  stream's verified identity — what node metadata claims is checked against
  it, never trusted instead (pilot/pkg/xds/auth.go).
- The plaintext listener (``allow_plaintext``; 15010 in Istio) is for tests
  and development: its streams are not authenticated, as on istiod's 15010.
- The serving certificate (``istiod.istio-system.svc`` and the listen host)
  is issued by the CA and renewed at half its life; handshakes after the
  renewal see the new one, open connections are untouched.
- The certificate a proxy holds (the operators' API, :meth:`MeshSecurity.certificate`):
  the one its xDS stream presented, then each renewal this replica signed for
  a caller authenticated by the previous one (a :class:`Lineage`). istio-agent
  renews over mTLS with the certificate it holds
  (``security/pkg/nodeagent/cache/secretcache.go``), so a renewal is the same
  key holder's; a certificate names an identity, which the VMs of a group
  share, never a VM, so this is the one honest link from a CSR to a proxy.
  Renewals signed by another replica are not seen here.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from pymesh.controlplane.ca.authz import verify_proxy
from pymesh.controlplane.ca.ca import DEFAULT_CERT_TTL, MAX_CERT_TTL, CertificateAuthority, Leaf, write_private
from pymesh.controlplane.ca.errors import AuthError, CaError, SecurityError
from pymesh.controlplane.ca.tlsfront import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_MAX_PENDING,
    Peer,
    TlsFront,
    server_context,
)
from pymesh.controlplane.ca.tokens import DEFAULT_AUDIENCE, TokenAuthority
from pymesh.controlplane.errors import RegistrationError
from pymesh.controlplane.lograte import LogLimiter
from pymesh.mesh.addr import parse_host_port
from pymesh.mesh.defaults import DEFAULT_TRUST_DOMAIN, ISTIOD_NAMES, XDS_TLS_PORT
from pymesh.mesh.errors import AddressError
from pymesh.mesh.files import private_dir
from pymesh.mesh.identity import Identity, parse_spiffe
from pymesh.proto import ca as ca_pb

log = logging.getLogger(__name__)

DEFAULT_SECURE_LISTEN = f"0.0.0.0:{XDS_TLS_PORT}"
# Live certificates whose lineage is kept (two per VM: the held one and its renewal).
MAX_TRACKED = 100_000


class Lineage:
    """One key holder's certificates: the latest one this replica saw, shared by its streams."""

    __slots__ = ("leaf",)

    def __init__(self, leaf: Leaf) -> None:
        self.leaf = leaf


@dataclass
class SecurityOptions:
    secure_listen: str = DEFAULT_SECURE_LISTEN
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    plugin_ca_dir: str | None = None  # Istio's cacerts layout, copied into <data>/ca
    cert_ttl: float = DEFAULT_CERT_TTL  # default workload certificate lifetime
    max_cert_ttl: float = MAX_CERT_TTL
    server_cert_ttl: float = DEFAULT_CERT_TTL
    server_names: tuple[str, ...] = ISTIOD_NAMES
    # "mtls": xDS on the secure port needs a client certificate; "token": a bearer token also does.
    xds_auth: str = "mtls"
    audience: str = DEFAULT_AUDIENCE
    # Istio's CLUSTER_ID (default "Kubernetes"): a token request's ClusterID header must name
    # this cluster or be empty; istiod would send a remote cluster's token to that cluster's
    # TokenReview, and pymesh knows no remote clusters.
    cluster_id: str = "Kubernetes"
    # The TLS port's bounds (pymesh.controlplane.ca.tlsfront): connections before the end of their
    # handshake, the wait for a ClientHello, the whole handshake.
    tls_max_pending: int = DEFAULT_MAX_PENDING
    tls_hello_timeout: float = DEFAULT_HELLO_TIMEOUT
    tls_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


def _split(addr: str) -> tuple[str, int]:
    try:
        return tuple(parse_host_port(addr, what="secure listen address", listen=True))  # type: ignore[return-value]
    except AddressError as e:
        raise SecurityError(str(e)) from None


class MeshSecurity:
    def __init__(
        self, data_dir: str | os.PathLike[str], options: SecurityOptions, *, allow_plaintext: bool = False
    ) -> None:
        if options.xds_auth not in ("mtls", "token"):
            raise SecurityError(f"xds_auth {options.xds_auth!r}: expected mtls or token")
        self.options = options
        self.allow_plaintext = allow_plaintext
        self.dir = Path(data_dir)
        self.ca = CertificateAuthority(
            self.dir / "ca",
            trust_domain=options.trust_domain,
            plugin_dir=options.plugin_ca_dir,
            default_ttl=options.cert_ttl,
            max_ttl=options.max_cert_ttl,
        )
        self.tokens = TokenAuthority(self.dir / "tokens", trust_domain=options.trust_domain)
        self.listen = _split(options.secure_listen)
        self.front: TlsFront | None = None
        self._renew: asyncio.TimerHandle | None = None
        # "csr", "authn_failures", "issued" and sign_errors (by istiod's error type) are istiod's
        # citadel_server_* counters (security/pkg/server/ca/monitoring.go), counted where
        # istiod counts them (security/pkg/server/ca/server.go, CreateCertificate).
        self.stats = {"issued": 0, "refused": 0, "server_cert_renewals": 0, "csr": 0, "authn_failures": 0}
        self.sign_errors: dict[str, int] = {}  # CSR_ERROR, CERT_GEN_ERROR (security/pkg/pki/error) -> count
        # The lineage of each live certificate a stream presented or this CA signed as a renewal,
        # by serial; one goes when its certificate expires (it authenticates nothing more), the
        # soonest to expire first when MAX_TRACKED are held (a workload renewing in a loop).
        self._lineages: dict[int, Lineage] = {}
        self._expiry: list[tuple[float, int]] = []  # heap of (notAfter, serial)
        self._limiter = LogLimiter(log)  # refusals are the caller's doing: rate-limited

    # --- lifecycle (on the control plane's loop) ------------------------------------------

    def _server_cert(self) -> tuple[Path, Path, float]:
        try:
            tls = private_dir(self.dir / "tls")
        except OSError as e:
            raise CaError(f"{self.dir / 'tls'}: cannot create a private directory: {e.strerror}") from e
        host = self.listen[0]
        ips = [] if host in ("0.0.0.0", "::", "") else [host]
        issued, key = self.ca.issue_server(self.options.server_names, ips, ttl=self.options.server_cert_ttl)
        write_private(tls / "key.pem", key)
        write_private(tls / "cert-chain.pem", "".join(issued.chain).encode())
        return tls / "cert-chain.pem", tls / "key.pem", issued.not_after

    async def start(self, backend: tuple[str, int]) -> int:
        cert, key, until = self._server_cert()
        ctx = server_context(cert, key, self.ca.trust_pem)
        opts = self.options
        self.front = TlsFront(
            self.listen[0],
            self.listen[1],
            backend,
            ctx,
            max_pending=opts.tls_max_pending,
            hello_timeout=opts.tls_hello_timeout,
            handshake_timeout=opts.tls_handshake_timeout,
        )
        port = await self.front.start()
        self._schedule_renewal(until)
        return port

    def _schedule_renewal(self, until: float) -> None:
        # At half its life, as istio-agent renews workload certificates.
        delay = max(1.0, (until - time.time()) / 2)
        self._renew = asyncio.get_running_loop().call_later(delay, self._renew_server_cert)

    def _renew_server_cert(self) -> None:
        assert self.front is not None
        try:
            cert, key, until = self._server_cert()
            self.front.reload(cert, key)
            self.stats["server_cert_renewals"] += 1
            log.info("control plane serving certificate renewed")
        except SecurityError as e:
            log.error("serving certificate renewal failed (retrying in 10s): %s", e)
            self._renew = asyncio.get_running_loop().call_later(10.0, self._renew_server_cert)
            return
        self._schedule_renewal(until)

    async def stop(self) -> None:
        if self._renew is not None:
            self._renew.cancel()
        if self.front is not None:
            await self.front.stop()

    def install(self, ads: Any) -> None:
        ads.authenticate = self.authenticate_stream
        ads.authorize = self.authorize_stream

    # --- authentication ------------------------------------------------------------------

    def _peer(self, context: Any) -> Peer | None:
        return self.front.lookup(context.peer()) if self.front is not None else None

    def _cert_identities(self, peer: Peer) -> list[Identity]:
        out = []
        for uri in peer.spiffe_ids:
            try:
                ident = parse_spiffe(uri)
            except AuthError:
                continue
            if ident.trust_domain == self.options.trust_domain:
                out.append(ident)
        return out

    def _token_identity(self, context: Any) -> Identity | None:
        for key, value in context.invocation_metadata() or ():
            if key.lower() == "authorization":
                scheme, _, token = str(value).partition(" ")
                if scheme.lower() != "bearer" or not token:
                    raise AuthError("authorization metadata is not 'Bearer <token>'")
                try:
                    return self.tokens.verify(token, audience=self.options.audience)
                except SecurityError as e:
                    raise AuthError(f"bearer token refused: {e}") from e
        return None

    def authenticate_stream(self, conn: Any, context: Any) -> None:
        peer = self._peer(context)
        if peer is None:
            if self.allow_plaintext:
                return  # the plaintext dev listener: unauthenticated, as istiod's 15010
            raise AuthError("connect through the control plane's TLS port")
        conn.attrs["tls_peer"] = peer.address
        conn.attrs["lineage"] = None if peer.leaf is None else self._lineage(peer.leaf)
        ids = self._cert_identities(peer)
        if not ids and self.options.xds_auth == "token":
            tok = self._token_identity(context)
            ids = [tok] if tok is not None else []
        if not ids:
            need = "a client certificate from the mesh CA" + (
                " or a bearer token" if self.options.xds_auth == "token" else " (mTLS is required for xDS)"
            )
            raise AuthError(f"xDS from {peer.address} refused: no authenticated identity; present {need}")
        conn.attrs["identities"] = ids

    def authorize_stream(self, conn: Any) -> None:
        ids = conn.attrs.get("identities")
        if ids is None:
            return
        proxy = conn.proxy
        try:
            conn.attrs["identity"] = verify_proxy(
                ids, proxy.namespace, str(proxy.metadata.get("SERVICE_ACCOUNT") or "")
            )
        except AuthError as e:
            raise RegistrationError(str(e), code="PERMISSION_DENIED") from e

    # --- the CA service --------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            ca_pb.SERVICE,
            {
                "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                    self._create_certificate,
                    request_deserializer=ca_pb.IstioCertificateRequest.FromString,
                    response_serializer=lambda m: m.SerializeToString(),
                )
            },
        )

    def certificate(self, conn: Any) -> Leaf | None:
        """The certificate the proxy of a stream holds, as far as this replica knows: the one
        the stream presented, or its latest renewal signed here (None: no client certificate)."""
        lineage: Lineage | None = conn.attrs.get("lineage")
        return None if lineage is None else lineage.leaf

    def _lineage(self, leaf: Leaf) -> Lineage:
        """The lineage of a live certificate presented here, started at it when none is known."""
        lineage = self._lineages.get(leaf.serial)
        return lineage if lineage is not None else self._track(leaf, Lineage(leaf))

    def _track(self, leaf: Leaf, lineage: Lineage) -> Lineage:
        now = time.time()
        while self._expiry and (self._expiry[0][0] < now or len(self._lineages) >= MAX_TRACKED):
            self._lineages.pop(heapq.heappop(self._expiry)[1], None)
        self._lineages[leaf.serial] = lineage
        heapq.heappush(self._expiry, (leaf.not_after, leaf.serial))
        return lineage

    def caller(self, context: Any) -> tuple[Identity, Leaf | None]:
        """The CA caller's identity: its certificate first (renewal: the certificate too), else
        its token."""
        peer = self._peer(context)
        if peer is not None:
            ids = self._cert_identities(peer)
            if ids:
                return ids[0], peer.leaf
        for key, value in context.invocation_metadata() or ():
            if key.lower() == "clusterid" and value and value != self.options.cluster_id:
                raise AuthError(
                    f"ClusterID {value!r}: this control plane is cluster {self.options.cluster_id!r} "
                    "and verifies tokens of its own cluster only"
                )
        tok = self._token_identity(context)
        if tok is not None:
            return tok, None
        raise AuthError("no credentials: present a mesh certificate (mTLS) or 'authorization: Bearer <istio-token>'")

    def _sign_error(self, kind: str) -> None:
        self.sign_errors[kind] = self.sign_errors.get(kind, 0) + 1

    def expiry(self) -> tuple[float, float]:
        """Unix times the root and the signing certificate expire (istiod's
        citadel_server_root_cert_expiry_timestamp and cert_chain_expiry_timestamp)."""
        return self.ca.root.not_valid_after_utc.timestamp(), self.ca.cert.not_valid_after_utc.timestamp()

    async def _create_certificate(self, request: Any, context: Any) -> Any:
        self.stats["csr"] += 1
        try:
            try:
                ident, renewing = self.caller(context)
            except AuthError:
                self.stats["authn_failures"] += 1
                raise
            md = request.metadata.fields if request.HasField("metadata") else {}
            if "ImpersonatedIdentity" in md and md["ImpersonatedIdentity"].string_value:
                raise AuthError("ImpersonatedIdentity is not allowed for this caller", code="PERMISSION_DENIED")
            if not request.csr:
                self._sign_error("CSR_ERROR")
                raise AuthError("csr is empty", code="INVALID_ARGUMENT")
            try:
                issued = self.ca.sign_csr(request.csr, ident, float(request.validity_duration))
            except SecurityError:  # the CSR does not parse, verify or carry an acceptable key
                self._sign_error("CSR_ERROR")
                raise
            except Exception:
                self._sign_error("CERT_GEN_ERROR")
                raise
        except AuthError as e:
            self.stats["refused"] += 1
            self._limiter.log(logging.WARNING, "CA refusal", "CreateCertificate from %s refused: %s", context.peer(), e)
            code = getattr(grpc.StatusCode, e.code, grpc.StatusCode.UNAUTHENTICATED)
            await context.abort(code, str(e))
            raise AssertionError("unreachable") from None
        except SecurityError as e:
            self.stats["refused"] += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise AssertionError("unreachable") from None
        self.stats["issued"] += 1
        if renewing is not None:
            lineage = self._lineage(renewing)
            lineage.leaf = issued.leaf
            self._track(issued.leaf, lineage)
        log.info("issued a certificate for %s until %.0f", ident.uri, issued.not_after)
        return ca_pb.IstioCertificateResponse(cert_chain=list(issued.chain))

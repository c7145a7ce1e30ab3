//! Workload mTLS in the relay, as Istio sidecars speak it (`ISTIO_MUTUAL`),
//! with rustls in user space: kernel TLS (which would let `splice` keep
//! working) needs the `tls` ULP, which these hosts lack.
//!
//! - [`MeshTls`] holds the workload identity (certificate chain, key, mesh
//!   roots) parsed and validated once into rustls client and server configs,
//!   published through an `ArcSwapOption`: [`MeshTls::set_identity`] swaps
//!   them atomically, new connections use the new certificate, and an open
//!   connection keeps the session it has (its rustls connection holds its
//!   own `Arc` of the config it started with), so rotation never drops one.
//!   A rejected identity publishes nothing; the previous one keeps serving.
//! - Wire conventions (Envoy/Istio, and `pymesh/relay/pytls.py`, the
//!   reference implementation this one is tested against): TLS 1.2 or 1.3;
//!   both sides present workload certificates; the peer is verified against
//!   the mesh roots and then by its SPIFFE URI SAN, never by host name
//!   ([`verify`]); the client offers ALPN [`alpn::OUTBOUND_TCP`] and the
//!   server negotiates by [`alpn::INBOUND`]; a client offering only other
//!   protocols gets a handshake without ALPN, not a refusal, as from Envoy
//!   (see [`TlsIdentity::inbound_config`]); SNI
//!   `outbound_.<port>_.<subset>_.<host>` when the cluster is known
//!   ([`crate::mesh::outbound_sni`], Envoy's upstream SNI for Istio clusters).
//!   The conventions themselves (names, identities, ALPN) live in
//!   [`crate::mesh`].
//! - Sessions resume (TLS 1.3 tickets) as Envoy's do, per expected peer
//!   identity; every handshake, resumed or not, ends with the peer's
//!   identity checked against what is wanted now (`peer_matches`).
//! - [`PeerAuthentication`]: Istio's inbound mode, swapped atomically.
//! - `pump`: the handshake and the record pump of one TLS connection, as a
//!   task of the relay's event loop.

pub(crate) mod pump;
pub(crate) mod stream;
pub mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::error::{Error, Result};
use crate::mesh::{self, alpn};
pub use verify::{spiffe_ids, uri_sans, PeerIdentity};

/// Istio's PeerAuthentication mTLS mode for the inbound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PeerAuthentication {
    /// mTLS only: plaintext connections are closed.
    Strict = 0,
    /// mTLS when the client starts TLS, plaintext otherwise (Istio's default).
    Permissive = 1,
    /// No TLS termination: every connection is passed through as is.
    Disable = 2,
}

impl PeerAuthentication {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerAuthentication::Strict => "STRICT",
            PeerAuthentication::Permissive => "PERMISSIVE",
            PeerAuthentication::Disable => "DISABLE",
        }
    }

    fn from_u8(v: u8) -> PeerAuthentication {
        match v {
            0 => PeerAuthentication::Strict,
            2 => PeerAuthentication::Disable,
            _ => PeerAuthentication::Permissive,
        }
    }
}

impl std::str::FromStr for PeerAuthentication {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "STRICT" => Ok(PeerAuthentication::Strict),
            "PERMISSIVE" => Ok(PeerAuthentication::Permissive),
            "DISABLE" => Ok(PeerAuthentication::Disable),
            _ => Err(Error::config("peer_authentication", format!("{s:?} is not STRICT, PERMISSIVE or DISABLE"))),
        }
    }
}

/// The crypto provider: ring, with AES-128-GCM first. With AES-NI it is the
/// fastest AEAD here and as strong as the mesh needs (Envoy's BoringSSL
/// default order also prefers AES-128-GCM); the server picks by its own
/// order, so an OpenSSL client preferring AES-256 still gets AES-128.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn bad(field: &str, reason: impl std::fmt::Display) -> Error {
    Error::config(format!("tls identity: {field}"), reason)
}

/// The name a client connection presents: `sni` when it is a DNS name, else
/// the address (which rustls never puts in SNI).
pub fn server_name(sni: Option<&str>, addr: std::net::IpAddr) -> ServerName<'static> {
    match sni.and_then(|s| ServerName::try_from(s.to_owned()).ok()) {
        Some(n) => n,
        None => ServerName::IpAddress(addr.into()),
    }
}

/// What an outbound mTLS connection carries, which decides the ALPN it
/// offers (istio `pilot/pkg/xds/filters/filters.go`: the `istio.alpn`
/// filter's values per upstream protocol; `ALPNInMeshWithMxc` for TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    Tcp,
    Http11,
    H2,
}

impl Alpn {
    pub fn protocols(self) -> &'static [&'static str] {
        match self {
            Alpn::Tcp => &alpn::OUTBOUND_TCP,
            Alpn::Http11 => &alpn::HTTP_11,
            Alpn::H2 => &alpn::HTTP_H2,
        }
    }
}

/// One workload identity, validated and turned into rustls configs.
#[derive(Debug)]
pub struct TlsIdentity {
    client: Arc<ClientConfig>,
    /// The inbound config negotiating [`alpn::INBOUND`] (rustls picks by
    /// that order), and the same config
    /// without ALPN (one clone: certificate, verifier and session cache are
    /// shared), for clients offering none of ours. Both belong to this
    /// identity, so one `set_identity` swaps the pair atomically.
    server: Arc<ServerConfig>,
    server_no_alpn: Arc<ServerConfig>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    trust_domain: String,
    uri: String,
    /// Client configs by expected peer identity (few: one per service
    /// account). rustls resumes a session only with the verifier it was made
    /// with (`compatible_config` compares the Arc), so keeping one config per
    /// identity is what makes resumption (TLS 1.3 PSK) possible, as Envoy's
    /// upstream TLS context does; the identity is re-checked after every
    /// handshake anyway ([`peer_matches`]).
    clients: Mutex<HashMap<(PeerIdentity, bool, Alpn), Arc<ClientConfig>>>,
}

/// Client configs kept per identity before the cache starts over.
const MAX_CLIENT_CONFIGS: usize = 256;

impl TlsIdentity {
    /// Parses and checks the PEM inputs: the chain (leaf first) must have a
    /// SPIFFE URI SAN and chain to one of the roots; the key (PKCS#8, SEC1
    /// EC or PKCS#1 RSA) must be the leaf's. Errors name the input.
    pub fn build(
        chain_pem: &str,
        key_pem: &str,
        roots_pem: &str,
        trust_domain: Option<&str>,
        allowed: Arc<ArcSwap<Option<Vec<String>>>>,
    ) -> Result<TlsIdentity> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad("cert_chain_pem", format!("not PEM certificates: {e}")))?;
        if chain.is_empty() {
            return Err(bad("cert_chain_pem", "no CERTIFICATE block"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| bad("key_pem", format!("no private key (PKCS#8, SEC1 EC or PKCS#1 RSA PEM expected): {e}")))?;
        let mut roots = RootCertStore::empty();
        let mut n = 0usize;
        for (i, der) in CertificateDer::pem_slice_iter(roots_pem.as_bytes()).enumerate() {
            let der = der.map_err(|e| bad("roots_pem", format!("not PEM certificates: {e}")))?;
            roots.add(der).map_err(|e| bad(&format!("roots_pem[{i}]"), format!("not a usable CA certificate: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("roots_pem", "no CERTIFICATE block"));
        }
        let provider = provider();
        let signing = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| bad("key_pem", format!("unsupported private key: {e}")))?;
        CertifiedKey::new(chain.clone(), signing)
            .keys_match()
            .map_err(|_| bad("key_pem", "does not match the leaf certificate of cert_chain_pem"))?;
        let ids = spiffe_ids(chain[0].as_ref());
        let Some(uri) = ids.first().cloned() else {
            return Err(bad("cert_chain_pem", "the leaf certificate has no spiffe:// URI SAN"));
        };
        let trust_domain = match trust_domain {
            Some(td) if !td.is_empty() => td.to_owned(),
            _ => mesh::spiffe_trust_domain(&uri).unwrap_or_default().to_owned(),
        };
        if trust_domain.is_empty() || trust_domain.contains(['/', ':']) {
            return Err(bad("trust_domain", format!("{trust_domain:?} is not a trust domain name")));
        }
        // Our own chain must verify against the roots we hand peers' chains
        // to: a mismatch (a root not yet distributed) would fail every
        // handshake later; say so now instead.
        let roots = Arc::new(roots);
        let parsed = rustls::server::ParsedCertificate::try_from(&chain[0])
            .map_err(|e| bad("cert_chain_pem", format!("leaf certificate: {e}")))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| bad("cert_chain_pem", format!("does not verify against roots_pem: {e}")))?;

        let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| bad("roots_pem", e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| bad("protocol versions", e))?
            .with_client_cert_verifier(Arc::new(verify::SpiffeClientVerifier {
                inner: client_verifier,
                trust_domain: trust_domain.clone(),
                allowed,
            }))
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad("key_pem", e))?;
        server.ignore_client_order = true;
        let server_no_alpn = Arc::new(server.clone());
        server.alpn_protocols = alpn::INBOUND.iter().map(|a| a.as_bytes().to_vec()).collect();
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| bad("protocol versions", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::SpiffeServerVerifier {
                roots: roots.clone(),
                provider: provider.clone(),
                expect: PeerIdentity::TrustDomain(trust_domain.clone()),
            }))
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad("key_pem", e))?;
        client.alpn_protocols = alpn::OUTBOUND_TCP.iter().map(|a| a.as_bytes().to_vec()).collect();
        Ok(TlsIdentity {
            client: Arc::new(client),
            server: Arc::new(server),
            server_no_alpn,
            roots,
            provider,
            trust_domain,
            uri,
            clients: Mutex::default(),
        })
    }

    /// Our SPIFFE identity (the leaf's first `spiffe://` URI SAN).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// A client connection to a peer that must have identity `expect`.
    /// `sni`: a DNS name to send as SNI; None sends none (the address is
    /// only a placeholder name, which rustls never puts in SNI).
    /// `resume`: offer and keep session tickets (TLS 1.3 PSK resumption).
    pub fn client(
        &self,
        expect: PeerIdentity,
        sni: Option<&str>,
        addr: std::net::IpAddr,
        resume: bool,
    ) -> std::result::Result<ClientConnection, rustls::Error> {
        let cfg = self.client_config(expect, resume, Alpn::Tcp);
        ClientConnection::new(cfg, server_name(sni, addr))
    }

    /// The client config for a peer that must have identity `expect`,
    /// offering `alpn`. The expected identity is part of the verifier, so a
    /// wrong peer fails the handshake itself, which the relay counts as a
    /// connect failure. Configs share everything but the verifier and the
    /// ALPN list (Arc clones; the session store too).
    pub fn client_config(&self, expect: PeerIdentity, resume: bool, alpn: Alpn) -> Arc<ClientConfig> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let key = (expect, resume, alpn);
        if let Some(c) = clients.get(&key) {
            return c.clone();
        }
        if clients.len() >= MAX_CLIENT_CONFIGS {
            clients.clear();
        }
        let mut cfg = (*self.client).clone();
        cfg.dangerous().set_certificate_verifier(Arc::new(verify::SpiffeServerVerifier {
            roots: self.roots.clone(),
            provider: self.provider.clone(),
            expect: key.0.clone(),
        }));
        if !resume {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
        cfg.alpn_protocols = alpn.protocols().iter().map(|a| a.as_bytes().to_vec()).collect();
        let cfg = Arc::new(cfg);
        clients.insert(key, cfg.clone());
        cfg
    }

    /// The inbound config for a ClientHello, by the ALPN it offers. rustls
    /// refuses a client whose ALPN offer has none of the server's protocols
    /// (no_application_protocol, RFC 7301 §3.2's "SHALL") and has no
    /// selection callback; Envoy's does
    /// not: its `ServerContextImpl::alpnSelectCallback` answers
    /// `SSL_TLSEXT_ERR_NOACK` when `SSL_select_next_proto` finds no match, and
    /// BoringSSL then continues without ALPN (CPython's `ssl` answers NOACK
    /// too, so `pymesh/relay/pytls.py` always did this). So: an offer
    /// with one of ours gets the config that negotiates by our order
    /// (`istio` first); one without, or no offer at all, gets the config
    /// without ALPN: no extension in the ServerHello, and the connection is
    /// relayed as any other.
    pub fn inbound_config(&self, hello: &rustls::server::ClientHello<'_>) -> Arc<ServerConfig> {
        let ours = |p: &[u8]| self.server.alpn_protocols.iter().any(|a| a.as_slice() == p);
        if hello.alpn().is_some_and(|mut offered| offered.any(ours)) {
            self.server.clone()
        } else {
            self.server_no_alpn.clone()
        }
    }

    /// The inbound side of a connection on `socket`: reads the ClientHello,
    /// picks the config ([`Self::inbound_config`]) and returns the server
    /// connection, its handshake under way (finish it with
    /// `pump::handshake`). Failures (malformed ClientHello, EOF) as
    /// `pump::handshake`'s; the caller bounds it with `pump::with_deadline`.
    pub async fn accept(
        &self,
        socket: &tokio::net::TcpStream,
    ) -> std::result::Result<ServerConnection, pump::HandshakeError> {
        pump::accept(socket, |hello| self.inbound_config(hello)).await
    }
}

/// Counters of the TLS side of a relay.
#[derive(Debug, Default)]
pub(crate) struct TlsCounters {
    pub(crate) handshakes: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) peer_rejected: AtomicU64,
    pub(crate) plaintext_passthrough: AtomicU64,
    pub(crate) plaintext_refused: AtomicU64,
    pub(crate) identity_updates: AtomicU64,
    pub(crate) resumed: AtomicU64,
    pub(crate) identity_waits: AtomicU64,
    pub(crate) no_identity: AtomicU64,
}

/// A copy of the TLS counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// Completed mTLS handshakes (either side).
    pub handshakes: u64,
    /// Handshakes that failed (peer identity, chain, protocol, timeout, EOF).
    pub handshake_failures: u64,
    /// Of those, peers whose certificate was refused (chain or identity).
    pub peer_rejected: u64,
    /// Inbound plaintext connections passed through (PERMISSIVE, DISABLE, no identity).
    pub plaintext_passthrough: u64,
    /// Inbound connections refused by STRICT (plaintext, or no identity to serve TLS with).
    pub plaintext_refused: u64,
    /// Identities published with `set_identity`.
    pub identity_updates: u64,
    /// Of the handshakes, resumed sessions (TLS 1.3 PSK / 1.2 session ID).
    pub resumed: u64,
    /// Outbound connections to `tlsMode: istio` endpoints that arrived
    /// before any identity and waited for one.
    pub identity_waits: u64,
    /// Of those, connections refused because no identity came within the
    /// connect timeout (never sent in plaintext instead).
    pub no_identity: u64,
}

/// The relay's TLS state: the identity, the inbound policy, counters.
#[derive(Debug)]
pub struct MeshTls {
    identity: ArcSwapOption<TlsIdentity>,
    mode: AtomicU8,
    allowed: Arc<ArcSwap<Option<Vec<String>>>>,
    resumption: AtomicBool,
    /// Woken when an identity is published (connections waiting for one).
    published: tokio::sync::Notify,
    pub(crate) counters: TlsCounters,
}

impl Default for MeshTls {
    fn default() -> Self {
        MeshTls {
            identity: ArcSwapOption::empty(),
            mode: AtomicU8::new(PeerAuthentication::Permissive as u8),
            allowed: Arc::new(ArcSwap::from_pointee(None)),
            resumption: AtomicBool::new(true),
            published: tokio::sync::Notify::new(),
            counters: TlsCounters::default(),
        }
    }
}

impl MeshTls {
    /// Validates and publishes a new identity (one atomic store). On error
    /// nothing changes.
    pub fn set_identity(
        &self,
        chain_pem: &str,
        key_pem: &str,
        roots_pem: &str,
        trust_domain: Option<&str>,
    ) -> Result<()> {
        let id = TlsIdentity::build(chain_pem, key_pem, roots_pem, trust_domain, self.allowed.clone())?;
        self.identity.store(Some(Arc::new(id)));
        self.counters.identity_updates.fetch_add(1, Ordering::Relaxed);
        self.published.notify_waiters();
        Ok(())
    }

    /// The identity, waiting for one to be published when none is held.
    /// Never returns None: bound it with a timeout. This is how the
    /// outbound never downgrades a `tlsMode: istio` endpoint to plaintext
    /// while the first certificate is on its way (the capture
    /// rules go in before it arrives, and an agent restarted without a
    /// valid certificate serves its saved tables), as Envoy's cluster waits
    /// for its SDS secret instead of sending in the clear.
    pub async fn wait_identity(&self) -> Arc<TlsIdentity> {
        loop {
            let published = self.published.notified();
            tokio::pin!(published);
            // Registered before looking, so a store in between is not missed.
            published.as_mut().enable();
            if let Some(id) = self.identity() {
                return id;
            }
            published.await;
        }
    }

    /// No identity for new connections (open ones keep their sessions):
    /// connections to `tlsMode: istio` endpoints wait for the next one (or
    /// fail), inbound STRICT refuses, PERMISSIVE passes plaintext through.
    pub fn clear_identity(&self) {
        self.identity.store(None);
    }

    /// The identity new connections use.
    pub fn identity(&self) -> Option<Arc<TlsIdentity>> {
        self.identity.load_full()
    }

    pub fn set_peer_authentication(&self, mode: PeerAuthentication) {
        self.mode.store(mode as u8, Ordering::Release);
    }

    pub fn peer_authentication(&self) -> PeerAuthentication {
        PeerAuthentication::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// Restricts the client identities the inbound accepts (exact SPIFFE
    /// URIs); None: any identity of the trust domain. Applies to the next
    /// handshake.
    pub fn set_allowed_identities(&self, allowed: Option<Vec<String>>) {
        self.allowed.store(Arc::new(allowed));
    }

    /// Whether originated connections resume TLS sessions (default on, as
    /// Envoy's upstream TLS contexts do; off: a full handshake each time,
    /// Envoy's `max_session_keys: 0`).
    pub fn set_session_resumption(&self, enabled: bool) {
        self.resumption.store(enabled, Ordering::Relaxed);
    }

    pub fn session_resumption(&self) -> bool {
        self.resumption.load(Ordering::Relaxed)
    }

    /// The client identities the inbound accepts now.
    pub fn inbound_expect(&self, identity: &TlsIdentity) -> PeerIdentity {
        verify::inbound_identity(&self.allowed, &identity.trust_domain)
    }

    pub fn stats(&self) -> TlsStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TlsStats {
            handshakes: l(&c.handshakes),
            handshake_failures: l(&c.handshake_failures),
            peer_rejected: l(&c.peer_rejected),
            plaintext_passthrough: l(&c.plaintext_passthrough),
            plaintext_refused: l(&c.plaintext_refused),
            identity_updates: l(&c.identity_updates),
            resumed: l(&c.resumed),
            identity_waits: l(&c.identity_waits),
            no_identity: l(&c.no_identity),
        }
    }
}

/// Checks the peer of a finished handshake against `expect`. The verifiers
/// did so for a full handshake; a resumed session skips them, and what it
/// carries over is the certificate chain of the session's first handshake,
/// so this check applies the identity wanted now (an endpoint's account or
/// the inbound's allowed list may have changed since).
pub(crate) fn peer_matches(conn: &rustls::Connection, expect: &PeerIdentity) -> bool {
    let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else { return false };
    let ids = spiffe_ids(leaf.as_ref());
    expect.accepts(ids.iter().map(String::as_str))
}

/// The first SPIFFE identity of a finished handshake's peer certificate
/// (what Envoy's `uriSanPeerCertificate` gives istio_stats.cc for the
/// principal labels).
pub(crate) fn peer_spiffe(conn: &rustls::Connection) -> Option<String> {
    let leaf = conn.peer_certificates().and_then(|c| c.first())?;
    spiffe_ids(leaf.as_ref()).into_iter().next()
}

/// The identity an endpoint must present, from its EDS metadata
/// ([`mesh::metadata`]): a full `spiffe://` URI is used as is; a bare
/// service account is `spiffe://<td>/ns/<ns>/sa/<sa>` with the namespace
/// from the `workload` field ("name;namespace;..."); without one (or
/// without a namespace) any identity of the trust domain is accepted.
pub fn expected_identity(service_account: &str, workload: &str, trust_domain: &str) -> PeerIdentity {
    if service_account.starts_with(mesh::SPIFFE_PREFIX) {
        return PeerIdentity::AnyOf(vec![service_account.to_owned()]);
    }
    let ns = mesh::workload_namespace(workload);
    if service_account.is_empty() || ns.is_empty() {
        return PeerIdentity::TrustDomain(trust_domain.to_owned());
    }
    PeerIdentity::AnyOf(vec![mesh::spiffe_uri(trust_domain, ns, service_account)])
}

#[cfg(test)]
mod tests;

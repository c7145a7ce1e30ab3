//! Peer verification as Istio's `ISTIO_MUTUAL` does it: the peer's chain
//! must lead to the mesh roots, and its identity is the SPIFFE URI SAN of
//! the leaf (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`). There is no host
//! name check: workload certificates carry no DNS names, and Envoy's
//! upstream validation context for Istio mTLS matches `match_subject_alt_names`
//! against the URI SAN only (pilot `cluster_tls.go`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Which peer identities are acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// Any identity of the trust domain (`spiffe://<td>/...`).
    TrustDomain(String),
    /// Exactly one of these URIs.
    AnyOf(Vec<String>),
}

impl PeerIdentity {
    /// True when one of the leaf's URIs is acceptable.
    pub fn accepts<'a>(&self, mut uris: impl Iterator<Item = &'a str>) -> bool {
        match self {
            PeerIdentity::TrustDomain(td) => uris.any(|u| crate::mesh::in_trust_domain(u, td)),
            PeerIdentity::AnyOf(list) => uris.any(|u| list.iter().any(|w| w == u)),
        }
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerIdentity::TrustDomain(td) => write!(f, "any identity of trust domain {td}"),
            PeerIdentity::AnyOf(l) => write!(f, "{}", l.join(" or ")),
        }
    }
}

/// The URI SANs of a DER certificate, read with x509-parser (as ztunnel
/// reads its peers' identities). Hostile input: a malformed certificate,
/// or one whose subjectAltName extension is malformed or repeated
/// (RFC 5280 §4.2), gives an empty list, never a panic. The chain itself
/// is verified by webpki, not here.
pub fn uri_sans(cert: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(cert) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// The `spiffe://` URIs of a DER certificate.
pub fn spiffe_ids(cert: &[u8]) -> Vec<String> {
    uri_sans(cert).into_iter().filter(|u| u.starts_with(crate::mesh::SPIFFE_PREFIX)).collect()
}

/// Chain verification against the mesh roots with webpki, then the SPIFFE
/// identity; the server name the connection was made with is ignored.
#[derive(Debug)]
pub(crate) struct SpiffeServerVerifier {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) expect: PeerIdentity,
}

fn identity_ok(end_entity: &CertificateDer<'_>, expect: &PeerIdentity) -> Result<(), rustls::Error> {
    let ids = spiffe_ids(end_entity.as_ref());
    if expect.accepts(ids.iter().map(String::as_str)) {
        Ok(())
    } else {
        // access_denied (RFC 8446 §6.2): a valid certificate of the wrong identity.
        Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        identity_ok(end_entity, &self.expect)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The client identities the inbound accepts: the allowed list when one is
/// set, else any identity of the trust domain. Read per handshake, so a
/// policy change applies to the next one.
pub(crate) fn inbound_identity(allowed: &ArcSwap<Option<Vec<String>>>, trust_domain: &str) -> PeerIdentity {
    match allowed.load().as_ref() {
        Some(list) => PeerIdentity::AnyOf(list.clone()),
        None => PeerIdentity::TrustDomain(trust_domain.to_owned()),
    }
}

/// The inbound side: a client certificate is mandatory, must chain to the
/// mesh roots (webpki, client-auth usage) and carry an allowed identity.
/// `allowed` is shared with [`super::MeshTls`] so a policy change applies to
/// the next handshake without rebuilding the identity.
#[derive(Debug)]
pub(crate) struct SpiffeClientVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) trust_domain: String,
    pub(crate) allowed: Arc<ArcSwap<Option<Vec<String>>>>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        identity_ok(end_entity, &inbound_identity(&self.allowed, &self.trust_domain))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

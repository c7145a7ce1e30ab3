//! The TLS layer over real loopback sockets: identities parsed and refused,
//! handshakes between two of our own peers with SPIFFE checks, the record
//! pump moving large streams with half-close, and rotation under an open
//! connection. Certificates: `testdata/gen.sh` (mesh roots a and b).
//! Relaying with captured connections (original destination) is tested in
//! `tests/netns/test_relay_mtls.py`, in a network namespace.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream as StdStream};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::Connection;
use tokio::net::TcpStream;

use super::pump::{close_notify, handshake, pump, with_deadline, BufPool, HandshakeError, Sides};
use super::*;
use crate::relay::admit::ConnState;
use crate::relay::monotonic_ms;
use crate::relay::splice::End;

/// The event loop the TLS tests' sockets live on.
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

fn deadline(d: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + d
}

const ROOT_A: &str = include_str!("testdata/a-root.pem");
const ROOT_B: &str = include_str!("testdata/b-root.pem");
const CLIENT: (&str, &str) = (include_str!("testdata/client.pem"), include_str!("testdata/client.key"));
const CLIENT_SEC1: &str = include_str!("testdata/client.sec1.key");
const PRODUCT: (&str, &str) = (include_str!("testdata/product.pem"), include_str!("testdata/product.key"));
const REVIEWS_RSA: (&str, &str) = (include_str!("testdata/reviews.pem"), include_str!("testdata/reviews.key"));
const INTRUDER: (&str, &str) = (include_str!("testdata/intruder.pem"), include_str!("testdata/intruder.key"));

const SA_PRODUCT: &str = "spiffe://cluster.local/ns/default/sa/product";
const SA_CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";

fn mesh(id: (&str, &str), roots: &str) -> MeshTls {
    let m = MeshTls::default();
    m.set_identity(id.0, id.1, roots, None).unwrap();
    m
}

/// A connected pair on loopback, both ends on the test event loop.
fn pair() -> (TcpStream, TcpStream) {
    rt().block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    })
}

/// A pair whose first end is a blocking std socket (an app), the second on
/// the event loop (what a pump relays to).
fn app_pair() -> (StdStream, TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = StdStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    b.set_nonblocking(true).unwrap();
    let _enter = rt().enter();
    (a, TcpStream::from_std(b).unwrap())
}

/// Handshakes a client of `c` expecting `expect` with a server of `s`
/// over loopback, on two threads; returns both results and the sockets.
#[allow(clippy::type_complexity)]
fn connect(
    c: &MeshTls,
    s: &MeshTls,
    expect: PeerIdentity,
) -> (Result<Connection, HandshakeError>, Result<Connection, HandshakeError>, TcpStream, TcpStream) {
    connect_with(c, s, expect, true)
}

#[allow(clippy::type_complexity)]
fn connect_with(
    c: &MeshTls,
    s: &MeshTls,
    expect: PeerIdentity,
    resume: bool,
) -> (Result<Connection, HandshakeError>, Result<Connection, HandshakeError>, TcpStream, TcpStream) {
    let client = c
        .identity()
        .unwrap()
        .client(expect, Some("outbound_.80_._.product.default.svc.cluster.local"), [127, 0, 0, 1].into(), resume)
        .unwrap();
    handshake_with(client, s)
}

/// Handshakes `client` with the inbound side of `s` (ClientHello read
/// first, config picked by it, as the relay's inbound does), as two tasks.
#[allow(clippy::type_complexity)]
fn handshake_with(
    client: ClientConnection,
    s: &MeshTls,
) -> (Result<Connection, HandshakeError>, Result<Connection, HandshakeError>, TcpStream, TcpStream) {
    let (a, b) = pair();
    let id = s.identity().unwrap();
    rt().block_on(async move {
        let by = deadline(Duration::from_secs(5));
        let srv = tokio::spawn(async move {
            let r = with_deadline(by, async {
                let mut server = Connection::Server(id.accept(&b).await?);
                handshake(&mut server, &b).await.map(|_| server)
            })
            .await;
            (r, b)
        });
        let mut client = Connection::Client(client);
        let cr = with_deadline(by, handshake(&mut client, &a)).await.map(|_| client);
        // A refused client leaves the server waiting for bytes that never come.
        if cr.is_err() {
            let _ = socket2::SockRef::from(&a).shutdown(Shutdown::Both);
        }
        let (sr, b) = srv.await.unwrap();
        (cr, sr, a, b)
    })
}

#[test]
fn uri_sans_reads_the_spiffe_identity_and_survives_garbage() {
    let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert_eq!(spiffe_ids(der(PRODUCT.0).as_ref()), vec![SA_PRODUCT.to_owned()]);
    assert!(spiffe_ids(der(ROOT_A).as_ref()).is_empty(), "a root has no URI SAN");
    // Every truncation and a byte flipped anywhere: a list (maybe empty), never a panic.
    let d = der(REVIEWS_RSA.0).as_ref().to_vec();
    for n in 0..d.len() {
        let _ = uri_sans(&d[..n]);
        let mut m = d.clone();
        m[n] ^= 0xff;
        let _ = uri_sans(&m);
    }
    assert_eq!(uri_sans(&[]), Vec::<String>::new());
}

#[test]
fn identities_are_validated_and_a_bad_one_leaves_the_old_one_serving() {
    let m = mesh(PRODUCT, ROOT_A);
    let id = m.identity().unwrap();
    assert_eq!(id.uri(), SA_PRODUCT);
    assert_eq!(id.trust_domain(), "cluster.local");
    let err = |chain: &str, key: &str, roots: &str| m.set_identity(chain, key, roots, None).unwrap_err().to_string();
    let e = err("not pem", PRODUCT.1, ROOT_A);
    assert!(e.contains("cert_chain_pem") && e.contains("no CERTIFICATE"), "{e}");
    let e = err(PRODUCT.0, "garbage", ROOT_A);
    assert!(e.contains("key_pem") && e.contains("no private key"), "{e}");
    let e = err(PRODUCT.0, CLIENT.1, ROOT_A);
    assert!(e.contains("key_pem") && e.contains("does not match"), "{e}");
    let e = err(PRODUCT.0, PRODUCT.1, "");
    assert!(e.contains("roots_pem"), "{e}");
    let e = err(INTRUDER.0, INTRUDER.1, ROOT_A);
    assert!(e.contains("cert_chain_pem") && e.contains("does not verify against roots_pem"), "{e}");
    let root_key_mismatch = err(ROOT_A, PRODUCT.1, ROOT_A);
    assert!(root_key_mismatch.contains("key_pem"), "{root_key_mismatch}");
    let e = m.set_identity(PRODUCT.0, PRODUCT.1, ROOT_A, Some("a/b")).unwrap_err().to_string();
    assert!(e.contains("trust_domain"), "{e}");
    // Nothing of the above replaced the identity.
    assert!(Arc::ptr_eq(&m.identity().unwrap(), &id));
    assert_eq!(m.stats().identity_updates, 1);
    // SEC1 EC keys and PKCS#1 RSA keys are accepted too; two roots in one bundle.
    m.set_identity(CLIENT.0, CLIENT_SEC1, ROOT_A, None).unwrap();
    m.set_identity(REVIEWS_RSA.0, REVIEWS_RSA.1, &format!("{ROOT_B}{ROOT_A}"), Some("cluster.local")).unwrap();
    assert_eq!(m.identity().unwrap().uri(), "spiffe://cluster.local/ns/default/sa/reviews");
    m.clear_identity();
    assert!(m.identity().is_none());
}

#[test]
fn peer_authentication_parses_istio_modes() {
    assert_eq!("STRICT".parse::<PeerAuthentication>().unwrap(), PeerAuthentication::Strict);
    assert_eq!("PERMISSIVE".parse::<PeerAuthentication>().unwrap(), PeerAuthentication::Permissive);
    assert_eq!("DISABLE".parse::<PeerAuthentication>().unwrap(), PeerAuthentication::Disable);
    let e = "strict".parse::<PeerAuthentication>().unwrap_err().to_string();
    assert!(e.contains("peer_authentication") && e.contains("\"strict\""), "{e}");
    let m = MeshTls::default();
    assert_eq!(m.peer_authentication(), PeerAuthentication::Permissive, "Istio's default");
    m.set_peer_authentication(PeerAuthentication::Strict);
    assert_eq!(m.peer_authentication(), PeerAuthentication::Strict);
}

#[test]
fn sni_and_expected_identity_follow_istio() {
    assert_eq!(
        crate::mesh::outbound_sni("outbound|9080||reviews.default.svc.cluster.local").as_deref(),
        Some("outbound_.9080_._.reviews.default.svc.cluster.local")
    );
    assert_eq!(crate::mesh::outbound_sni("outbound|80|v1|r.ns.svc").as_deref(), Some("outbound_.80_.v1_.r.ns.svc"));
    assert_eq!(crate::mesh::outbound_sni("inbound|80||x"), None);
    assert_eq!(crate::mesh::outbound_sni("plain"), None);
    let td = "cluster.local";
    assert_eq!(
        expected_identity("spiffe://other/ns/a/sa/b", "", td),
        PeerIdentity::AnyOf(vec!["spiffe://other/ns/a/sa/b".into()])
    );
    assert_eq!(
        expected_identity("reviews", "reviews-v1;shop;reviews;v1;Kubernetes", td),
        PeerIdentity::AnyOf(vec!["spiffe://cluster.local/ns/shop/sa/reviews".into()])
    );
    assert_eq!(expected_identity("", "x;shop", td), PeerIdentity::TrustDomain(td.into()));
    assert_eq!(expected_identity("reviews", "", td), PeerIdentity::TrustDomain(td.into()));
    let any = PeerIdentity::TrustDomain(td.into());
    assert!(any.accepts([SA_PRODUCT].into_iter()));
    assert!(!any.accepts(["spiffe://cluster.localx/ns/a/sa/b", "spiffe://evil/cluster.local/"].into_iter()));
}

#[test]
fn handshake_checks_both_identities_and_negotiates_istio_alpn() {
    let (client, server) = (mesh(CLIENT, ROOT_A), mesh(PRODUCT, ROOT_A));
    let (c, s, _a, _b) = connect(&client, &server, PeerIdentity::AnyOf(vec![SA_PRODUCT.into()]));
    let (c, s) = (c.unwrap(), s.unwrap());
    // Our inbound prefers the metadata exchange, as Envoy's inbound does.
    assert_eq!(c.alpn_protocol(), Some(&b"istio-peer-exchange"[..]));
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(c.negotiated_cipher_suite().map(|s| s.suite()), Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    let peer = s.peer_certificates().unwrap();
    assert_eq!(spiffe_ids(peer[0].as_ref()), vec![SA_CLIENT.to_owned()]);
    let Connection::Server(sc) = &s else { unreachable!() };
    assert_eq!(sc.server_name(), Some("outbound_.80_._.product.default.svc.cluster.local"));

    // The endpoint is not who the EDS metadata says: the client refuses.
    let want = PeerIdentity::AnyOf(vec!["spiffe://cluster.local/ns/default/sa/reviews".into()]);
    let (c, _, _a, _b) = connect(&client, &server, want);
    let e = c.unwrap_err();
    assert!(e.is_peer_rejected(), "{e}");

    // A server certificate from another CA with the right identity: refused by the chain check.
    let intruder = MeshTls::default();
    intruder.set_identity(INTRUDER.0, INTRUDER.1, ROOT_B, Some("cluster.local")).unwrap();
    let (c, _, _a, _b) = connect(&client, &intruder, PeerIdentity::AnyOf(vec![SA_PRODUCT.into()]));
    assert!(c.unwrap_err().is_peer_rejected());

    // The server refuses a client from another CA (which itself trusts both
    // CAs), and one outside its allowed list.
    intruder.set_identity(INTRUDER.0, INTRUDER.1, &format!("{ROOT_B}{ROOT_A}"), None).unwrap();
    let (c, s, _a, _b) = connect(&intruder, &server, PeerIdentity::TrustDomain("cluster.local".into()));
    assert!(c.is_ok(), "TLS 1.3: the client finishes before the server's verdict");
    assert!(s.unwrap_err().is_peer_rejected());
    server.set_allowed_identities(Some(vec!["spiffe://cluster.local/ns/default/sa/reviews".into()]));
    let (_, s, _a, _b) = connect(&client, &server, PeerIdentity::TrustDomain("cluster.local".into()));
    assert!(s.unwrap_err().is_peer_rejected());
    server.set_allowed_identities(Some(vec![SA_CLIENT.into()]));
    let (_, s, _a, _b) = connect(&client, &server, PeerIdentity::TrustDomain("cluster.local".into()));
    assert!(s.is_ok());
}

/// A client of identity `client` (None: no certificate) trusting mesh root
/// a, offering exactly `alpn` (empty: no ALPN extension) over `version`,
/// without resumption so each handshake negotiates afresh.
fn client_offering(
    alpn: &[&str],
    version: &'static rustls::SupportedProtocolVersion,
    client: Option<(&str, &str)>,
) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ROOT_A.as_bytes()).unwrap()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verify::SpiffeServerVerifier {
            roots: Arc::new(roots),
            provider: provider(),
            expect: PeerIdentity::AnyOf(vec![SA_PRODUCT.into()]),
        }));
    let mut cfg = match client {
        Some((chain, key)) => {
            let chain =
                CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<std::result::Result<_, _>>().unwrap();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    cfg.resumption = rustls::client::Resumption::disabled();
    ClientConnection::new(Arc::new(cfg), ServerName::try_from("product.default.svc").unwrap()).unwrap()
}

#[test]
fn inbound_alpn_is_negotiated_when_ours_is_offered_and_skipped_as_envoy_does_otherwise() {
    let server = mesh(PRODUCT, ROOT_A);
    let cases: [(&[&str], Option<&[u8]>); 11] = [
        // Only unknown protocols: rustls alone would send no_application_protocol;
        // Envoy (SSL_TLSEXT_ERR_NOACK) completes without ALPN, and so do we.
        (&["foo"], None),
        (&["foo", "bar/2"], None),
        // One of ours among unknown ones: ours, by our order (the exchange first).
        (&["foo", "istio"], Some(b"istio")),
        (&["h2", "istio-peer-exchange", "istio"], Some(b"istio-peer-exchange")),
        (&["foo", "http/1.1"], Some(b"http/1.1")),
        // What sidecars offer (istio.alpn filter), answered as Envoy's
        // inbound does: TCP gets the exchange, HTTP gets h2 or http/1.1
        // (the inbound's HTTP path), Istio's values alone get themselves.
        (&crate::mesh::alpn::OUTBOUND_TCP, Some(b"istio-peer-exchange")),
        (&crate::mesh::alpn::HTTP_11, Some(b"http/1.1")),
        (&crate::mesh::alpn::HTTP_10, Some(b"istio")),
        (&crate::mesh::alpn::HTTP_H2, Some(b"h2")),
        (&["istio-h2"], Some(b"istio-h2")),
        // No ALPN extension at all.
        (&[], None),
    ];
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for (offer, want) in cases {
            let (c, s, _a, _b) = handshake_with(client_offering(offer, version, Some(CLIENT)), &server);
            let what = format!("{offer:?} over {:?}", version.version);
            let c = c.unwrap_or_else(|e| panic!("{what}: client: {e}"));
            let s = s.unwrap_or_else(|e| panic!("{what}: server: {e}"));
            assert_eq!(c.protocol_version(), Some(version.version), "{what}");
            assert_eq!(c.alpn_protocol(), want, "{what}: client side");
            assert_eq!(s.alpn_protocol(), want, "{what}: server side");
            // Still mutual TLS with the identity checks, ALPN or not.
            assert!(peer_matches(&s, &PeerIdentity::AnyOf(vec![SA_CLIENT.into()])), "{what}");
            assert!(peer_matches(&c, &PeerIdentity::AnyOf(vec![SA_PRODUCT.into()])), "{what}");
        }
    }
    // Skipping ALPN relaxes nothing else: no client certificate is still refused.
    let (_, s, _a, _b) = handshake_with(client_offering(&["foo"], &rustls::version::TLS13, None), &server);
    assert!(s.is_err(), "no client certificate: refused whatever the ALPN");
    // After a rotation both configs are the new identity's.
    server.set_identity(REVIEWS_RSA.0, REVIEWS_RSA.1, ROOT_A, None).unwrap();
    for offer in [&["foo"][..], &["istio"][..]] {
        let conn = client_offering(offer, &rustls::version::TLS13, Some(CLIENT));
        let (c, _, _a, _b) = handshake_with(conn, &server);
        let e = c.unwrap_err();
        assert!(e.is_peer_rejected(), "{offer:?}: the client wants product, the inbound is reviews now: {e}");
    }
}

#[test]
fn a_malformed_client_hello_fails_cleanly_with_an_alert() {
    let server = mesh(PRODUCT, ROOT_A);
    let id = server.identity().unwrap();
    // A handshake record holding a ClientHello (what the PERMISSIVE
    // detection lets through as TLS) whose body is garbage, and one cut
    // short by EOF.
    let bodies: [&[u8]; 2] = [&[0x16, 3, 1, 0, 8, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef], &[0x16, 3, 1, 0, 200, 1, 0, 0]];
    for (i, body) in bodies.into_iter().enumerate() {
        let (mut a, b) = app_pair();
        a.write_all(body).unwrap();
        if i == 1 {
            a.shutdown(Shutdown::Write).unwrap();
        }
        let r = rt().block_on(with_deadline(deadline(Duration::from_secs(5)), id.accept(&b)));
        match (i, r) {
            (0, Err(HandshakeError::Tls(_))) => {
                // The alert went out: a record of content type 21 (RFC 8446 §6).
                let mut hdr = [0u8; 5];
                a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                a.read_exact(&mut hdr).unwrap();
                assert_eq!(hdr[0], 0x15, "{hdr:?}");
            }
            (1, Err(HandshakeError::Io(e))) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
            (i, r) => panic!("case {i}: {:?}", r.map(|_| ())),
        }
    }
    // Nothing before the deadline: a timeout, not a hang.
    let (_a, b) = app_pair();
    let r = rt().block_on(with_deadline(deadline(Duration::from_millis(100)), id.accept(&b)));
    assert!(matches!(r, Err(HandshakeError::Timeout)));
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// app client -- plain -- [pump: client TLS] == TLS == [pump: server TLS] -- plain -- app server
struct Chain {
    app_client: StdStream,
    app_server: StdStream,
    pumps: Vec<tokio::task::JoinHandle<End>>,
    bytes: Arc<[AtomicU64; 4]>,
}

fn chain(client: &MeshTls, server: &MeshTls) -> Chain {
    let (c, s, tls_a, tls_b) = connect(client, server, PeerIdentity::TrustDomain("cluster.local".into()));
    let (c, s) = (c.unwrap(), s.unwrap());
    let (app_client, plain_a) = app_pair();
    let (app_server, plain_b) = app_pair();
    let bytes: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let bufs = Arc::new(BufPool::default());
    let run = |mut conn: Connection, tls: TcpStream, plain: TcpStream, k: usize, bytes: Arc<[AtomicU64; 4]>| {
        let bufs = bufs.clone();
        rt().spawn(async move {
            let st = ConnState::new(monotonic_ms());
            let sides = Sides { tls: &tls, plain: &plain, to_tls: &bytes[k], from_tls: &bytes[k + 1] };
            pump(&mut conn, &sides, &bufs, &st, None).await
        })
    };
    let pumps = vec![run(c, tls_a, plain_a, 0, bytes.clone()), run(s, tls_b, plain_b, 2, bytes.clone())];
    Chain { app_client, app_server, pumps, bytes }
}

fn join(pumps: Vec<tokio::task::JoinHandle<End>>) -> Vec<End> {
    pumps.into_iter().map(|p| rt().block_on(p).unwrap()).collect()
}

#[test]
fn pump_moves_large_streams_both_ways_with_half_close() {
    let (client, server) = (mesh(CLIENT, ROOT_A), mesh(PRODUCT, ROOT_A));
    let Chain { mut app_client, mut app_server, pumps, bytes } = chain(&client, &server);
    let size = 24usize << 20;
    let data: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let want = checksum(&data);
    // The server echoes everything, then, after the client's FIN arrived
    // (half-close passed through as close_notify), sends a trailer and closes.
    let srv = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        loop {
            let k = app_server.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            app_server.write_all(&buf[..k]).unwrap();
            n += k;
        }
        app_server.write_all(format!("got {n}").as_bytes()).unwrap();
        app_server.shutdown(Shutdown::Write).unwrap();
        n
    });
    let mut reader = app_client.try_clone().unwrap();
    let rd = std::thread::spawn(move || {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        got
    });
    app_client.write_all(&data).unwrap();
    app_client.shutdown(Shutdown::Write).unwrap();
    let got = rd.join().unwrap();
    assert_eq!(srv.join().unwrap(), size);
    let trailer = format!("got {size}");
    assert_eq!(got.len(), size + trailer.len());
    assert_eq!(checksum(&got[..size]), want);
    assert_eq!(&got[size..], trailer.as_bytes());
    for end in join(pumps) {
        assert_eq!(end, End::Eof);
    }
    let b: Vec<u64> = bytes.iter().map(|a| a.load(std::sync::atomic::Ordering::Relaxed)).collect();
    // client side: plain -> TLS = size; server side: TLS -> plain = size.
    assert_eq!(b[0], size as u64);
    assert_eq!(b[3], size as u64);
    assert_eq!(b[1], (size + trailer.len()) as u64);
}

#[test]
fn rotation_keeps_open_connections_and_new_ones_use_the_new_certificate() {
    let (client, server) = (mesh(CLIENT, ROOT_A), mesh(PRODUCT, ROOT_A));
    let Chain { mut app_client, mut app_server, pumps, .. } = chain(&client, &server);
    let ping = |c: &mut StdStream, s: &mut StdStream, msg: &[u8]| {
        c.write_all(msg).unwrap();
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg);
    };
    ping(&mut app_client, &mut app_server, b"before");
    // Two rotations on both sides (another identity, then back).
    server.set_identity(REVIEWS_RSA.0, REVIEWS_RSA.1, ROOT_A, None).unwrap();
    client.set_identity(CLIENT.0, CLIENT_SEC1, ROOT_A, None).unwrap();
    ping(&mut app_client, &mut app_server, b"after one");
    ping(&mut app_server, &mut app_client, b"and back");
    // A new connection sees the new server identity.
    let (c, _, _a, _b) = connect(&client, &server, PeerIdentity::TrustDomain("cluster.local".into()));
    let c = c.unwrap();
    let leaf = &c.peer_certificates().unwrap()[0];
    assert_eq!(spiffe_ids(leaf.as_ref()), vec!["spiffe://cluster.local/ns/default/sa/reviews".to_owned()]);
    server.set_identity(PRODUCT.0, PRODUCT.1, ROOT_A, None).unwrap();
    ping(&mut app_client, &mut app_server, b"after two");
    drop(app_client);
    drop(app_server);
    for end in join(pumps) {
        assert_ne!(end, End::Idle);
    }
}

#[test]
fn a_peer_that_resets_ends_the_pump_with_an_error() {
    let (client, server) = (mesh(CLIENT, ROOT_A), mesh(PRODUCT, ROOT_A));
    let Chain { app_client, app_server, pumps, .. } = chain(&client, &server);
    socket2::SockRef::from(&app_server).set_linger(Some(Duration::ZERO)).unwrap();
    drop(app_server);
    // The client keeps writing into a path whose far end is gone.
    let mut w = app_client;
    let chunk = vec![1u8; 1 << 16];
    for _ in 0..256 {
        if w.write_all(&chunk).is_err() {
            break;
        }
    }
    let ends = join(pumps);
    assert!(ends.contains(&End::Error), "{ends:?}");
}

#[test]
fn sessions_resume_per_expected_identity_and_the_identity_is_checked_again() {
    let (client, server) = (mesh(CLIENT, ROOT_A), mesh(PRODUCT, ROOT_A));
    let want = PeerIdentity::AnyOf(vec![SA_PRODUCT.into()]);
    let (c, s, a, _b) = connect(&client, &server, want.clone());
    let (mut c, _s) = (c.unwrap(), s.unwrap());
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full));
    // The server's tickets arrive after the handshake: read them.
    c.set_buffer_limit(None);
    struct Reader<'a>(&'a TcpStream);
    impl Read for Reader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.try_read(buf)
        }
    }
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while match &c {
        Connection::Client(cc) => cc.tls13_tickets_received() == 0,
        Connection::Server(_) => false,
    } {
        assert!(std::time::Instant::now() < until, "no session ticket");
        rt().block_on(async { tokio::time::timeout(Duration::from_millis(100), a.readable()).await }).ok();
        if c.read_tls(&mut Reader(&a)).is_ok() {
            c.process_new_packets().unwrap();
        }
    }
    let (c, s, _a, _b) = connect(&client, &server, want.clone());
    let (c, s) = (c.unwrap(), s.unwrap());
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    // A resumed session skipped the verifiers; the peer's chain came along.
    assert!(peer_matches(&c, &want));
    assert!(!peer_matches(&c, &PeerIdentity::AnyOf(vec!["spiffe://cluster.local/ns/default/sa/reviews".into()])));
    assert!(peer_matches(&s, &PeerIdentity::AnyOf(vec![SA_CLIENT.into()])));
    assert!(!peer_matches(&s, &PeerIdentity::TrustDomain("other.domain".into())));
    // Resumption off (Envoy's max_session_keys: 0): a full handshake.
    let (c, _, _a, _b) = connect_with(&client, &server, want, false);
    assert_eq!(c.unwrap().handshake_kind(), Some(rustls::HandshakeKind::Full));
}

#[test]
fn an_idle_tls_connection_ends_with_close_notify_and_gives_its_buffers_back() {
    let (client, server) = (mesh(CLIENT, ROOT_A), mesh(PRODUCT, ROOT_A));
    let (c, s, tls_a, tls_b) = connect(&client, &server, PeerIdentity::TrustDomain("cluster.local".into()));
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    let (mut app, plain) = app_pair();
    let bufs = BufPool::default();
    let (to, from) = (AtomicU64::new(0), AtomicU64::new(0));
    let st = ConnState::new(monotonic_ms());
    app.write_all(b"one").unwrap();
    let idle = rt().block_on(async {
        let sides = Sides { tls: &tls_a, plain: &plain, to_tls: &to, from_tls: &from };
        // What the relay does: the pump until nothing moved for the idle
        // timeout, then close_notify.
        let pumping = pump(&mut c, &sides, &bufs, &st, None);
        let idle = tokio::time::timeout(Duration::from_millis(300), pumping).await.is_err();
        close_notify(&mut c, &tls_a);
        idle
    });
    assert!(idle, "the pump ran until the timeout");
    assert_eq!(to.load(std::sync::atomic::Ordering::Relaxed), 3);
    // The buffers went back to the pool while the connection waited.
    assert!(!bufs.is_empty_for_test());
    // The peer reads our byte, then the close_notify: end of stream.
    let got = rt().block_on(async {
        let mut out = Vec::new();
        loop {
            s.process_new_packets().unwrap();
            let mut buf = [0u8; 16];
            match s.reader().read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tls_b.readable().await.unwrap();
                    struct R<'a>(&'a TcpStream);
                    impl Read for R<'_> {
                        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                            self.0.try_read(buf)
                        }
                    }
                    let _ = s.read_tls(&mut R(&tls_b));
                }
                Err(e) => panic!("{e}"),
            }
        }
    });
    assert_eq!(got, b"one");
}

#[test]
fn a_connection_waiting_for_an_identity_gets_the_first_one_published_or_times_out() {
    let m = Arc::new(MeshTls::default());
    rt().block_on(async {
        // None arrives: the wait is bounded by its caller, never plaintext.
        let r = tokio::time::timeout(Duration::from_millis(100), m.wait_identity()).await;
        assert!(r.is_err());
        // Several waiters, then a publication: all get it.
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move { m.wait_identity().await.uri().to_owned() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        m.set_identity(CLIENT.0, CLIENT.1, ROOT_A, None).unwrap();
        for w in waiters {
            let uri = tokio::time::timeout(Duration::from_secs(5), w).await.unwrap().unwrap();
            assert_eq!(uri, SA_CLIENT);
        }
        // Held already: no wait at all.
        assert_eq!(m.wait_identity().await.uri(), SA_CLIENT);
    });
}

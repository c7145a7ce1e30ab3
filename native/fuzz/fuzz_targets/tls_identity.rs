//! Arbitrary bytes as the inputs the relay's mTLS layer parses: a peer's
//! DER certificate (its URI SANs, read with x509-parser by `uri_sans`, and
//! the SPIFFE IDs among them) and PEM identity material given to
//! `MeshTls::set_identity`. Either gives a value or an error naming the
//! input, never a panic; a rejected identity leaves none published. The
//! SPIFFE IDs are exactly the `spiffe://` URIs, each a valid SPIFFE ID
//! when it parses as one of Istio's form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pymesh_core::mesh;
use pymesh_core::relay::tls::{spiffe_ids, uri_sans, MeshTls};

fuzz_target!(|data: &[u8]| {
    let uris = uri_sans(data);
    let ids = spiffe_ids(data);
    let want: Vec<&String> = uris.iter().filter(|u| u.starts_with(mesh::SPIFFE_PREFIX)).collect();
    assert_eq!(ids.iter().collect::<Vec<_>>(), want);
    for id in &ids {
        if let Some(p) = mesh::parse_spiffe(id) {
            assert_eq!(p.to_string(), *id, "a parsed SPIFFE ID formats back to itself");
        }
    }
    // PEM-ish text in three parts: chain | key | roots.
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '|');
    let (chain, key, roots) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let tls = MeshTls::default();
    if let Err(e) = tls.set_identity(chain, key, roots, None) {
        assert!(e.to_string().contains("tls identity"), "{e}");
        assert!(tls.identity().is_none());
    }
});

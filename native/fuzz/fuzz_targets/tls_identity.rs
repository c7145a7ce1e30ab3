//! Arbitrary bytes as the inputs the relay's mTLS layer parses: a peer's
//! DER certificate (its URI SANs, read by our own small DER walker) and
//! PEM identity material given to `MeshTls::set_identity`. Either gives a
//! value or an error naming the input, never a panic; a rejected identity
//! leaves none published.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pymesh_core::relay::tls::{spiffe_ids, uri_sans, MeshTls};

fuzz_target!(|data: &[u8]| {
    let uris = uri_sans(data);
    assert!(spiffe_ids(data).len() <= uris.len());
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

//! Arbitrary bytes into the HTTP path's route compiler and matcher, as an
//! RDS push (Envoy RouteConfiguration in proto3 JSON) and a request reach
//! them. The input is a JSON document, then a 0xff byte, then a request:
//! `authority\npath-and-query\n` and `name: value` lines.
//!
//! Checks: a document is compiled or refused with a configuration error
//! naming something, never a panic; the protocol detection of the request
//! bytes never panics; for a compiled table, host lookup, route matching
//! (every route, any draw), weighted picks and path rewrites never panic,
//! and a weighted pick is one of the route's own clusters.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pymesh_core::error::ErrorKind;
use pymesh_core::relay::http::route::{Action, HttpRoutes, RequestView};

fuzz_target!(|data: &[u8]| {
    let (doc, req) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let _ = pymesh_core::relay::http::classify(req);
    let Ok(doc) = std::str::from_utf8(doc) else { return };
    let routes = match HttpRoutes::build(&[(80, doc)], &[]) {
        Ok(r) => r,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e:?}");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let text = String::from_utf8_lossy(req);
    let mut lines = text.lines();
    let authority = lines.next().unwrap_or_default();
    let pq = lines.next().unwrap_or("/");
    let mut headers = http::HeaderMap::new();
    for l in lines {
        let Some((n, v)) = l.split_once(':') else { continue };
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(n.trim().as_bytes()), http::HeaderValue::from_str(v.trim())) {
            headers.append(n, v);
        }
    }
    let Some(port) = routes.for_destination("10.0.0.1:80".parse().unwrap()) else { return };
    let Some(vh) = port.virtual_host(authority) else { return };
    let view = RequestView { method: "GET", authority, scheme: "http", path_and_query: pq, headers: &headers };
    for draw in [0, 499_999, 999_999] {
        for r in &vh.routes {
            let _ = r.matches(&view, draw);
            if let Action::Forward(f) = &r.action {
                for x in [0u64, 1, 89, 90, u64::MAX] {
                    let t = f.target(x);
                    assert!(f.targets.iter().any(|o| o.cluster == t.cluster));
                }
                let _ = r.rewrite_path(f, pq);
            }
        }
    }
});

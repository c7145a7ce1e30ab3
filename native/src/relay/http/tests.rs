use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue};

use super::route::{Action, HttpRoutes, RequestView, RetryOn, MILLION};
use super::{classify, Detected};

fn routes(json: &str) -> HttpRoutes {
    HttpRoutes::build(&[(9080, json)], &[]).expect("valid routes")
}

fn err(json: &str) -> String {
    HttpRoutes::build(&[(9080, json)], &[]).expect_err("invalid routes").to_string()
}

fn view<'a>(authority: &'a str, pq: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView { method: "GET", authority, scheme: "http", path_and_query: pq, headers }
}

/// The route name picked for a request, or None.
fn pick(r: &HttpRoutes, authority: &str, pq: &str, headers: &HeaderMap) -> Option<String> {
    let pr = r.for_destination("10.0.0.1:9080".parse().unwrap())?;
    let vh = pr.virtual_host(authority)?;
    let v = view(authority, pq, headers);
    vh.routes.iter().find(|rt| rt.matches(&v, 0)).map(|rt| format!("{}/{}", vh.name, rt.name))
}

const ISTIOD_LIKE: &str = r#"{
  "name": "9080",
  "virtualHosts": [
    {"name": "reviews.default.svc.cluster.local:9080",
     "domains": ["reviews.default.svc.cluster.local", "reviews", "reviews.default", "10.96.0.5", "reviews.default.svc.cluster.local:9080"],
     "routes": [
       {"name": "canary", "match": {"prefix": "/", "headers": [{"name": "end-user", "stringMatch": {"exact": "jason"}}]},
        "route": {"cluster": "outbound|9080|v2|reviews.default.svc.cluster.local", "timeout": "0s"}},
       {"name": "api", "match": {"pathSeparatedPrefix": "/api"},
        "route": {"weightedClusters": {"clusters": [{"name": "outbound|9080|v1|reviews.default.svc.cluster.local", "weight": 90},
                                                    {"name": "outbound|9080|v2|reviews.default.svc.cluster.local", "weight": 10}]},
                  "timeout": "1.500s",
                  "retryPolicy": {"retryOn": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                                  "numRetries": 2, "retryHostPredicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
                                  "hostSelectionRetryMaxAttempts": "5", "retriableStatusCodes": [503]}}},
       {"name": "exact", "match": {"path": "/Health", "caseSensitive": false}, "directResponse": {"status": 200, "body": {"inlineString": "ok"}}},
       {"name": "re", "match": {"safeRegex": {"regex": "/v[0-9]+/items"}, "queryParameters": [{"name": "debug", "presentMatch": true}]},
        "redirect": {"pathRedirect": "/new", "responseCode": "FOUND"}},
       {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "outbound|9080||reviews.default.svc.cluster.local"}}
     ]},
    {"name": "wild", "domains": ["*.example.com"], "routes": [{"name": "w", "match": {"prefix": "/"}, "route": {"cluster": "w"}}]},
    {"name": "pre", "domains": ["shop.*"], "routes": [{"name": "p", "match": {"prefix": "/"}, "route": {"cluster": "p"}}]},
    {"name": "allow_any", "domains": ["*"], "routes": [{"name": "allow_any", "match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster", "timeout": "0s"}}]}
  ],
  "validateClusters": false,
  "ignorePortInHostMatching": true
}"#;

#[test]
fn virtual_hosts_by_domain_port_ignored_wildcards_then_star() {
    let r = routes(ISTIOD_LIKE);
    let h = HeaderMap::new();
    let svc = "reviews.default.svc.cluster.local:9080";
    assert_eq!(pick(&r, "reviews", "/", &h).as_deref(), Some(&*format!("{svc}/default")));
    assert_eq!(pick(&r, "Reviews.Default:9080", "/", &h).as_deref(), Some(&*format!("{svc}/default")));
    assert_eq!(pick(&r, "10.96.0.5:9080", "/", &h).as_deref(), Some(&*format!("{svc}/default")));
    assert_eq!(pick(&r, "a.example.com", "/", &h).as_deref(), Some("wild/w"));
    // A wildcard stands for at least one character.
    assert_eq!(pick(&r, "example.com", "/", &h).as_deref(), Some("allow_any/allow_any"));
    assert_eq!(pick(&r, "shop.local:80", "/", &h).as_deref(), Some("pre/p"));
    assert_eq!(pick(&r, "elsewhere", "/", &h).as_deref(), Some("allow_any/allow_any"));
    assert_eq!(pick(&r, "", "/", &h).as_deref(), Some("allow_any/allow_any"));
}

#[test]
fn routes_match_in_order_on_path_headers_and_query() {
    let r = routes(ISTIOD_LIKE);
    let mut h = HeaderMap::new();
    let p = |pq: &str, h: &HeaderMap| pick(&r, "reviews", pq, h).map(|s| s.rsplit('/').next().unwrap().to_owned());
    assert_eq!(p("/api", &h).as_deref(), Some("api"));
    assert_eq!(p("/api/x?y=1", &h).as_deref(), Some("api"));
    // path_separated_prefix: /api but not /apix.
    assert_eq!(p("/apix", &h).as_deref(), Some("default"));
    assert_eq!(p("/health", &h).as_deref(), Some("exact"));
    assert_eq!(p("/HEALTH?x", &h).as_deref(), Some("exact"));
    assert_eq!(p("/health/x", &h).as_deref(), Some("default"));
    // The regex matches the whole path; the query parameter must be present.
    assert_eq!(p("/v2/items?debug", &h).as_deref(), Some("re"));
    assert_eq!(p("/v2/items?debug=1&a=b", &h).as_deref(), Some("re"));
    assert_eq!(p("/v2/items", &h).as_deref(), Some("default"));
    assert_eq!(p("/v2/items/x?debug", &h).as_deref(), Some("default"));
    h.insert("end-user", HeaderValue::from_static("jason"));
    assert_eq!(p("/api", &h).as_deref(), Some("canary"));
    h.insert("end-user", HeaderValue::from_static("jasonx"));
    assert_eq!(p("/api", &h).as_deref(), Some("api"));
}

#[test]
fn actions_carry_weights_timeouts_retries_and_responses() {
    let r = routes(ISTIOD_LIKE);
    let pr = r.for_destination("10.0.0.1:9080".parse().unwrap()).unwrap();
    let vh = &pr.vhosts[0];
    let Action::Forward(f) = &vh.routes[1].action else { panic!("api forwards") };
    assert_eq!(f.timeout, Some(std::time::Duration::from_millis(1500)));
    let retry = f.retry.as_ref().unwrap();
    assert_eq!(retry.num_retries, 2);
    assert!(retry.on.has(RetryOn::CONNECT_FAILURE) && retry.on.has(RetryOn::GRPC_UNAVAILABLE));
    assert!(!retry.on.has(RetryOn::FIVE_XX));
    assert_eq!(retry.statuses, vec![503]);
    assert!(retry.previous_hosts);
    // 90/10 over draws 0..100.
    let v2 = (0..100u64).filter(|d| f.target(*d).cluster.contains("|v2|")).count();
    assert_eq!(v2, 10);
    // timeout 0s: none.
    let Action::Forward(f0) = &vh.routes[0].action else { panic!() };
    assert_eq!(f0.timeout, None);
    let Action::Direct { status, body } = &vh.routes[2].action else { panic!() };
    assert_eq!((*status, &body[..]), (200, &b"ok"[..]));
    let Action::Redirect(rd) = &vh.routes[3].action else { panic!() };
    assert_eq!((rd.status, rd.path.as_deref()), (302, Some("/new")));
}

#[test]
fn tcp_destinations_and_other_ports_have_no_http_routes() {
    let tcp: SocketAddr = "10.96.0.9:9080".parse().unwrap();
    let r = HttpRoutes::build(&[(9080, ISTIOD_LIKE)], &[tcp]).unwrap();
    assert!(r.for_destination(tcp).is_none());
    assert!(r.for_destination("10.96.0.5:9080".parse().unwrap()).is_some());
    assert!(r.for_destination("10.96.0.5:9081".parse().unwrap()).is_none());
    assert_eq!(r.ports(), vec![9080]);
}

#[test]
fn header_matchers_follow_envoy() {
    let json = r#"{"name":"80","virtualHosts":[{"name":"h","domains":["*"],"routes":[
      {"name":"absent","match":{"prefix":"/a","headers":[{"name":"x-debug","presentMatch":true,"invertMatch":true}]},"route":{"cluster":"c"}},
      {"name":"regex","match":{"prefix":"/r","headers":[{"name":"x-v","safeRegexMatch":{"regex":"v[12]"}}]},"route":{"cluster":"c"}},
      {"name":"prefix","match":{"prefix":"/p","headers":[{"name":"x-v","stringMatch":{"prefix":"AB","ignoreCase":true}}]},"route":{"cluster":"c"}},
      {"name":"method","match":{"prefix":"/m","headers":[{"name":":method","exactMatch":"GET"}]},"route":{"cluster":"c"}},
      {"name":"inv-missing","match":{"prefix":"/i","headers":[{"name":"x-v","stringMatch":{"exact":"1"},"invertMatch":true}]},"route":{"cluster":"c"}}
    ]}]}"#;
    let r = HttpRoutes::build(&[(80, json)], &[]).unwrap();
    let pr = r.for_destination("1.2.3.4:80".parse().unwrap()).unwrap();
    let vh = pr.virtual_host("x").unwrap();
    let hit = |pq: &str, h: &HeaderMap| {
        vh.routes.iter().find(|rt| rt.matches(&view("x", pq, h), 0)).map(|rt| rt.name.clone())
    };
    let mut h = HeaderMap::new();
    assert_eq!(hit("/a", &h).as_deref(), Some("absent"));
    assert_eq!(hit("/m", &h).as_deref(), Some("method"));
    // A value matcher never matches a missing header, inverted or not.
    assert_eq!(hit("/i", &h), None);
    h.insert("x-debug", HeaderValue::from_static("1"));
    assert_eq!(hit("/a", &h), None);
    h.insert("x-v", HeaderValue::from_static("v2"));
    assert_eq!(hit("/r", &h).as_deref(), Some("regex"));
    assert_eq!(hit("/i", &h).as_deref(), Some("inv-missing"));
    h.insert("x-v", HeaderValue::from_static("v22"));
    assert_eq!(hit("/r", &h), None);
    h.insert("x-v", HeaderValue::from_static("abc"));
    assert_eq!(hit("/p", &h).as_deref(), Some("prefix"));
}

#[test]
fn runtime_fraction_matches_its_share() {
    let json = r#"{"name":"80","virtualHosts":[{"name":"h","domains":["*"],"routes":[
      {"name":"quarter","match":{"prefix":"/","runtimeFraction":{"defaultValue":{"numerator":25}}},"route":{"cluster":"c"}}]}]}"#;
    let r = HttpRoutes::build(&[(80, json)], &[]).unwrap();
    let pr = r.for_destination("1.2.3.4:80".parse().unwrap()).unwrap();
    let rt = &pr.vhosts[0].routes[0];
    let h = HeaderMap::new();
    let v = view("x", "/", &h);
    let hits = (0..100u32).filter(|i| rt.matches(&v, i * (MILLION / 100))).count();
    assert_eq!(hits, 25);
}

#[test]
fn rewrites_replace_the_matched_prefix_or_regex() {
    let json = r#"{"name":"80","virtualHosts":[{"name":"h","domains":["*"],"routes":[
      {"name":"pre","match":{"prefix":"/old/"},"route":{"cluster":"c","prefixRewrite":"/new/"}},
      {"name":"re","match":{"prefix":"/re"},"route":{"cluster":"c","regexRewrite":{"pattern":{"regex":"^/re/(\\w+)$"},"substitution":"/x/\\1"}}}]}]}"#;
    let r = HttpRoutes::build(&[(80, json)], &[]).unwrap();
    let pr = r.for_destination("1.2.3.4:80".parse().unwrap()).unwrap();
    let routes = &pr.vhosts[0].routes;
    let Action::Forward(f) = &routes[0].action else { panic!() };
    assert_eq!(routes[0].rewrite_path(f, "/old/a?b=1").as_deref(), Some("/new/a?b=1"));
    let Action::Forward(f) = &routes[1].action else { panic!() };
    assert_eq!(routes[1].rewrite_path(f, "/re/abc").as_deref(), Some("/x/abc"));
}

#[test]
fn fault_config_is_read_from_typed_per_filter_config() {
    let json = r#"{"name":"80","virtualHosts":[{"name":"h","domains":["*"],"routes":[
      {"name":"f","match":{"prefix":"/"},"route":{"cluster":"c"},
       "typedPerFilterConfig":{"envoy.filters.http.fault":{"@type":"type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
         "delay":{"fixedDelay":"0.200s","percentage":{"numerator":50,"denominator":"HUNDRED"}},
         "abort":{"httpStatus":503,"percentage":{"numerator":2500,"denominator":"TEN_THOUSAND"}}}}}]}]}"#;
    let r = HttpRoutes::build(&[(80, json)], &[]).unwrap();
    let f = r.for_destination("1.2.3.4:80".parse().unwrap()).unwrap().vhosts[0].routes[0].fault.clone().unwrap();
    assert_eq!(f.delay, Some((std::time::Duration::from_millis(200), 500_000)));
    let (abort, share) = f.abort.unwrap();
    assert!(matches!(abort, super::route::Abort::Http(503)));
    assert_eq!(share, 250_000);
}

#[test]
fn invalid_configurations_name_the_field() {
    let bad_regex = r#"{"name":"80","virtualHosts":[{"name":"h","domains":["*"],"routes":[
      {"name":"r","match":{"safeRegex":{"regex":"(unclosed"}},"route":{"cluster":"c"}}]}]}"#;
    let e = err(bad_regex);
    assert!(e.contains("virtual_hosts[0] (\"h\").routes[0] (\"r\").match.safe_regex"), "{e}");
    let zero = r#"{"name":"80","virtualHosts":[{"name":"h","domains":["*"],"routes":[
      {"name":"z","match":{"prefix":"/"},"route":{"weightedClusters":{"clusters":[{"name":"a","weight":0}]}}}]}]}"#;
    assert!(err(zero).contains("weights sum to 0"));
    let retry_on = r#"{"name":"80","virtualHosts":[{"name":"h","domains":["*"],"routes":[
      {"name":"z","match":{"prefix":"/"},"route":{"cluster":"a","retryPolicy":{"retryOn":"5xx,bogus"}}}]}]}"#;
    assert!(err(retry_on).contains("bogus"));
    let dur = r#"{"name":"80","virtualHosts":[{"name":"h","domains":["*"],"routes":[
      {"name":"z","match":{"prefix":"/"},"route":{"cluster":"a","timeout":"-1s"}}]}]}"#;
    assert!(err(dur).contains("timeout"));
    let no_action =
        r#"{"name":"80","virtualHosts":[{"name":"h","domains":["*"],"routes":[{"name":"z","match":{"prefix":"/"}}]}]}"#;
    assert!(err(no_action).contains("exactly one of route, redirect, direct_response"));
    assert!(err("{not json").contains("routes[port 9080]"));
    let header = r#"{"name":"80","virtualHosts":[{"name":"h","domains":["*"],"routes":[
      {"name":"z","match":{"prefix":"/"},"route":{"cluster":"a"},"requestHeadersToAdd":[{"header":{"key":"bad header","value":"v"}}]}]}]}"#;
    assert!(err(header).contains("request_headers_to_add[0]"));
}

#[test]
fn detection_tells_http1_http2_and_the_rest() {
    assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(Detected::Http1));
    assert_eq!(classify(b"POST /x?y HTTP/1.0\r\n\r\n"), Some(Detected::Http1));
    // The head is read to its end: an upgrade stays TCP.
    assert_eq!(classify(b"POST /x?y HTTP/1.0\r\n"), None);
    assert_eq!(
        classify(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUPGRADE: websocket\r\n\r\n"),
        Some(Detected::Upgrade)
    );
    assert_eq!(classify(b"GET / HTTP/1.1\r\nX-Upgrade: no\r\n\r\n"), Some(Detected::Http1));
    assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(Detected::Http2));
    // Not enough yet.
    assert_eq!(classify(b"GET / HT"), None);
    assert_eq!(classify(b"PRI * HTTP/2"), None);
    assert_eq!(classify(b""), None);
    // TLS, binary, and a line that is not a request line.
    assert_eq!(classify(&[0x16, 0x03, 0x01, 0x00, 0x10]), Some(Detected::Other));
    assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Detected::Other));
    assert_eq!(classify(b"hello world\n"), Some(Detected::Other));
    assert_eq!(classify(&vec![b'A'; 4096]), Some(Detected::Other));
}

#[test]
fn random_json_never_panics_the_compiler() {
    // Values of the wrong type, out of range, or missing, in every place.
    let mut rng = crate::lb::Rng::new(7);
    let pieces = [
        r#"{"name":"x"}"#,
        r#"{"virtualHosts":[{"domains":["*"],"routes":[{"match":{},"route":{"cluster":"c","timeout":"99999999999s"}}]}]}"#,
        r#"{"virtualHosts":[{"domains":[1]}]}"#,
        r#"{"virtualHosts":[{"domains":["*"],"routes":[{"match":{"prefix":"/","headers":[{"name":""}]},"route":{"cluster":"c"}}]}]}"#,
        r#"{"virtualHosts":[{"domains":["*"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":"c","retryPolicy":{"retryBackOff":{"baseInterval":"0s"}}}}]}]}"#,
        r#"{"virtualHosts":[{"domains":["*"],"routes":[{"match":{"prefix":"/"},"directResponse":{"status":99}}]}]}"#,
        r#"{"virtualHosts":[{"domains":["*"],"routes":[{"match":{"prefix":"/"},"redirect":{"portRedirect":70000}}]}]}"#,
    ];
    for p in pieces {
        let _ = HttpRoutes::build(&[(80, p)], &[]);
    }
    for _ in 0..2000 {
        let base = ISTIOD_LIKE.as_bytes();
        let mut b = base.to_vec();
        for _ in 0..3 {
            let i = rng.below(b.len() as u64) as usize;
            b[i] = rng.below(128) as u8;
        }
        if let Ok(s) = std::str::from_utf8(&b) {
            let _ = HttpRoutes::build(&[(80, s)], &[]);
        }
    }
}

#[test]
fn http_series_carry_istios_25_labels_and_envoys_buckets() {
    use super::metrics::{labels, render_text, HttpMetrics, Observed, Reporter, HTTP_LABELS};
    use crate::relay::metrics::{Flags, InboundPeer, LocalWorkload, OutboundPeer, Route};
    use crate::relay::mx::PeerInfo;
    let local = LocalWorkload {
        workload: "client-vm".into(),
        namespace: "apps".into(),
        app: "client".into(),
        version: "v1".into(),
        canonical_service: "client".into(),
        canonical_revision: "v1".into(),
        cluster: "vm-net".into(),
        ..Default::default()
    };
    let o = Observed {
        reporter: Reporter::Source {
            route: Route::Cluster("outbound|9080|v2|reviews.default.svc.cluster.local"),
            peer: OutboundPeer {
                workload: "reviews-v2;default;reviews;v2;Kubernetes",
                principal: Some("spiffe://cluster.local/ns/default/sa/reviews"),
                local_principal: Some("spiffe://cluster.local/ns/apps/sa/client"),
                mx: None,
            },
        },
        host: "reviews:9080",
        flags: Flags::NONE,
        grpc: true,
        status: 200,
        grpc_status: Some(14),
    };
    let l = labels(&local, &o);
    let m: std::collections::HashMap<&str, &str> =
        HTTP_LABELS.iter().copied().zip(l.iter().map(String::as_str)).collect();
    assert_eq!(m["reporter"], "source");
    assert_eq!(m["source_workload"], "client-vm");
    assert_eq!(m["source_principal"], "spiffe://cluster.local/ns/apps/sa/client");
    assert_eq!(m["destination_workload"], "reviews-v2");
    assert_eq!(m["destination_principal"], "spiffe://cluster.local/ns/default/sa/reviews");
    assert_eq!(m["destination_service"], "reviews.default.svc.cluster.local");
    assert_eq!(m["destination_service_name"], "reviews");
    assert_eq!(m["destination_canonical_revision"], "v2");
    assert_eq!((m["request_protocol"], m["response_code"], m["grpc_response_status"]), ("grpc", "200", "14"));
    assert_eq!((m["response_flags"], m["connection_security_policy"]), ("-", "unknown"));
    // A passthrough request: the service is the Host header's.
    let pt = Observed {
        reporter: Reporter::Source { route: Route::Passthrough, peer: OutboundPeer::default() },
        grpc: false,
        grpc_status: None,
        status: 503,
        flags: Flags::UPSTREAM_CONNECT_FAILURE.union(Flags::RETRY_LIMIT_EXCEEDED),
        ..o
    };
    let l2 = labels(&local, &pt);
    let m2: std::collections::HashMap<&str, &str> =
        HTTP_LABELS.iter().copied().zip(l2.iter().map(String::as_str)).collect();
    assert_eq!((m2["destination_service"], m2["destination_service_name"]), ("reviews", "PassthroughCluster"));
    assert_eq!((m2["response_code"], m2["grpc_response_status"], m2["response_flags"]), ("503", "", "UF,URX"));

    // The inbound's side: the client from its metadata headers and
    // certificate, this workload as the destination service.
    let client = PeerInfo {
        workload: "web".into(),
        namespace: "front".into(),
        app: "web".into(),
        version: "v7".into(),
        canonical_service: "web".into(),
        canonical_revision: "v7".into(),
        cluster: "east".into(),
        ..PeerInfo::default()
    };
    let d = Observed {
        reporter: Reporter::Destination(InboundPeer {
            principal: Some("spiffe://cluster.local/ns/front/sa/web"),
            local_principal: Some("spiffe://cluster.local/ns/apps/sa/client"),
            mx: Some(&client),
        }),
        ..o
    };
    let l3 = labels(&local, &d);
    let m3: std::collections::HashMap<&str, &str> =
        HTTP_LABELS.iter().copied().zip(l3.iter().map(String::as_str)).collect();
    assert_eq!((m3["reporter"], m3["source_workload"], m3["source_version"]), ("destination", "web", "v7"));
    assert_eq!((m3["source_workload_namespace"], m3["source_cluster"]), ("front", "east"));
    assert_eq!((m3["destination_workload"], m3["destination_service_name"]), ("client-vm", "client"));
    assert_eq!((m3["request_protocol"], m3["connection_security_policy"]), ("grpc", "mutual_tls"));
    let reg = HttpMetrics::new(8);
    reg.record(&local, &o, 1.0, (1, 1), (0, 0));
    reg.record(&local, &d, 1.0, (1, 1), (0, 0));
    let anon = Observed { reporter: Reporter::Destination(InboundPeer { mx: None, ..InboundPeer::default() }), ..o };
    reg.record(&local, &anon, 1.0, (1, 1), (0, 0));
    assert_eq!(reg.snapshot().len(), 3, "each side and peer has its own series");

    let reg = HttpMetrics::new(2);
    reg.record(&local, &o, 3.0, (120, 40), (1, 3));
    reg.record(&local, &o, 700.0, (120, 40), (2, 2));
    reg.record(&local, &pt, 1.0, (10, 0), (5, 5));
    // Cap: a third label set is dropped, counted.
    reg.record(&local, &Observed { status: 404, ..pt }, 1.0, (10, 0), (0, 0));
    assert_eq!(reg.dropped(), 1);
    let mut text = String::new();
    render_text(&[&reg], &mut text);
    assert_eq!(text.matches("# TYPE istio_requests_total counter").count(), 1);
    assert_eq!(text.matches("# TYPE istio_request_duration_milliseconds histogram").count(), 1);
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("grpc_response_status=\"14\""))
        .unwrap();
    assert!(line.ends_with(" 2"), "{line}");
    assert!(line.starts_with("istio_requests_total{reporter=\"source\",source_workload=\"client-vm\","), "{line}");
    // Cumulative buckets: 3 ms is in le=5, 700 ms in le=1000.
    let b = |le: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("istio_request_duration_milliseconds_bucket{")
                    && l.contains("grpc_response_status=\"14\"")
                    && l.contains(&format!("le=\"{le}\""))
            })
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        (b("1").as_str(), b("5").as_str(), b("500").as_str(), b("1000").as_str(), b("+Inf").as_str()),
        ("0", "1", "1", "2", "2")
    );
    assert!(text.contains("istio_request_duration_milliseconds_sum{") && text.contains("} 703\n"));
    // gRPC messages: the gRPC series only (the passthrough one is HTTP).
    let msgs: Vec<&str> = text.lines().filter(|l| l.starts_with("istio_request_messages_total{")).collect();
    assert_eq!(msgs.len(), 1, "{text}");
    assert!(msgs[0].contains("request_protocol=\"grpc\"") && msgs[0].ends_with(" 3"), "{}", msgs[0]);
    let resp = text.lines().find(|l| l.starts_with("istio_response_messages_total{")).unwrap();
    assert!(resp.ends_with(" 5"), "{resp}");
    assert_eq!(text.matches("# TYPE istio_response_messages_total counter").count(), 1);

    // Threads count into one series through their own caches; two
    // registries never share one through a thread's cache.
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let reg = Arc::new(HttpMetrics::new(8));
    let other = Arc::new(HttpMetrics::new(8));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (reg, other, local) = (reg.clone(), other.clone(), local.clone());
            let anon = Observed { reporter: Reporter::Destination(InboundPeer::default()), ..o };
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    reg.record(&local, &anon, 1.0, (1, 1), (0, 0));
                }
                other.record(&local, &anon, 1.0, (1, 1), (0, 0));
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let count =
        |r: &HttpMetrics| r.snapshot().iter().map(|(_, s)| s.requests.load(Ordering::Relaxed)).collect::<Vec<_>>();
    assert_eq!((count(&reg), count(&other)), (vec![4000], vec![4]));
}

#[test]
fn grpc_messages_are_counted_across_any_frame_boundaries() {
    use super::body::GrpcMessages;
    // Three messages: 3 bytes, empty, 300 bytes (a length over one byte).
    let mut wire = Vec::new();
    for len in [3u32, 0, 300] {
        wire.push(0u8);
        wire.extend_from_slice(&len.to_be_bytes());
        wire.extend(std::iter::repeat(7u8).take(len as usize));
    }
    for split in [1, 2, 4, 5, 6, 7, 64, wire.len()] {
        let mut m = GrpcMessages::default();
        for chunk in wire.chunks(split) {
            m.feed(chunk);
        }
        assert_eq!(m.count, 3, "chunks of {split}");
    }
    // A prefix alone counts its message; a truncated stream never panics.
    let mut m = GrpcMessages::default();
    m.feed(&[0, 0xff, 0xff, 0xff, 0xff, 1, 2]);
    assert_eq!(m.count, 1);
}

#[test]
fn the_inbound_route_takes_every_host_and_path_to_the_app_with_no_timeout() {
    let pr = super::route::PortRoutes::inbound();
    let h = HeaderMap::new();
    for (host, pq) in [("product", "/"), ("10.0.0.3:8080", "/a/b?c=d"), ("", "/x")] {
        let vh = pr.virtual_host(host).expect("the inbound virtual host");
        let v = view(host, pq, &h);
        let rt = vh.routes.iter().find(|rt| rt.matches(&v, 0)).expect("the inbound route");
        let Action::Forward(fwd) = &rt.action else { panic!("forwarded") };
        assert_eq!(fwd.target(0).cluster, "PassthroughCluster");
        assert!(fwd.timeout.is_none() && fwd.retry.is_none());
    }
}

//! Behaviour of the lbtable core: distributions against weights (chi-square
//! with fixed seeds), consistent-hash disruption, priorities and panic
//! through real cluster input, outlier ejection with advancing time, state
//! carried across snapshots, and input validation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;

/// Wilson-Hilferty approximation of the chi-square critical value at
/// p ~ 1e-6 (z = 4.75): with fixed seeds the statistic is deterministic, and
/// this bound is far enough out that a correct sampler never trips it while
/// a biased one (e.g. weights ignored) exceeds it by orders of magnitude.
pub(crate) fn chi2_critical(df: usize) -> f64 {
    let k = df as f64;
    let z = 4.75;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

pub(crate) fn chi2(observed: &[u64], expected_share: &[f64]) -> f64 {
    let n: u64 = observed.iter().sum();
    let total: f64 = expected_share.iter().sum();
    observed
        .iter()
        .zip(expected_share)
        .map(|(&o, &e)| {
            let e = n as f64 * e / total;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

fn ep(addr: &str, weight: u32) -> Value {
    let (ip, port) = addr.rsplit_once(':').unwrap();
    json!({"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port.parse::<u16>().unwrap()}}},
           "load_balancing_weight": weight})
}

fn ep_h(addr: &str, health: &str) -> Value {
    let mut e = ep(addr, 1);
    e["health_status"] = json!(health);
    e
}

fn cluster(name: &str, policy: &str, groups: Vec<Value>) -> Value {
    json!({"name": name, "type": "STATIC", "lb_policy": policy,
           "load_assignment": {"cluster_name": name, "endpoints": groups}})
}

fn group(priority: u32, eps: Vec<Value>) -> Value {
    json!({"priority": priority, "lb_endpoints": eps})
}

fn table(clusters: Value, seed: u64) -> LbTable {
    let specs = clusters_from_value(&clusters, "test").expect("valid clusters");
    let t = LbTable::new(Some(seed), None);
    t.set_clusters(specs, 0);
    t
}

fn counts(
    t: &LbTable,
    name: &str,
    n: usize,
    hash: impl Fn(usize) -> Option<u64>,
    seed: u64,
) -> HashMap<SocketAddr, u64> {
    let mut rng = Rng::new(seed);
    let mut out = HashMap::new();
    for i in 0..n {
        if let Some(a) = t.pick(name, hash(i), &mut rng).expect("cluster exists") {
            *out.entry(a).or_default() += 1;
        }
    }
    out
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn weighted_eps() -> (Vec<Value>, Vec<(SocketAddr, f64)>) {
    let ws = [1u32, 2, 3, 4, 10];
    let eps = ws.iter().enumerate().map(|(i, &w)| ep(&format!("10.0.0.{}:80", i + 1), w)).collect();
    let exp = ws.iter().enumerate().map(|(i, &w)| (addr(&format!("10.0.0.{}:80", i + 1)), f64::from(w))).collect();
    (eps, exp)
}

fn assert_fits(c: &HashMap<SocketAddr, u64>, exp: &[(SocketAddr, f64)]) {
    assert_fits_named(c, exp, "")
}

fn assert_fits_named(c: &HashMap<SocketAddr, u64>, exp: &[(SocketAddr, f64)], what: &str) {
    let obs: Vec<u64> = exp.iter().map(|(a, _)| c.get(a).copied().unwrap_or(0)).collect();
    let shares: Vec<f64> = exp.iter().map(|(_, w)| *w).collect();
    let x = chi2(&obs, &shares);
    assert!(
        x < chi2_critical(exp.len() - 1),
        "{what}: chi2 {x} over {} for {obs:?} vs {shares:?}",
        chi2_critical(exp.len() - 1)
    );
    assert_eq!(c.len(), exp.len(), "picks outside the cluster: {c:?}");
}

#[test]
fn round_robin_weighted_is_exact_over_a_cycle() {
    let (eps, exp) = weighted_eps();
    let t = table(json!([cluster("c", "ROUND_ROBIN", vec![group(0, eps)])]), 1);
    let c = counts(&t, "c", 20 * 100, |_| None, 2);
    for (a, w) in &exp {
        assert_eq!(c[a], (*w as u64) * 100, "{a}");
    }
}

#[test]
fn round_robin_equal_weights_cycles_every_host_in_turn() {
    let eps = (1..=7).map(|i| ep(&format!("10.0.0.{i}:80"), 1)).collect();
    let t = table(json!([cluster("c", "ROUND_ROBIN", vec![group(0, eps)])]), 3);
    let mut rng = Rng::new(1);
    let first: Vec<SocketAddr> = (0..7).map(|_| t.pick("c", None, &mut rng).unwrap().unwrap()).collect();
    let mut uniq = first.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 7, "one full turn visits each host once: {first:?}");
    let again: Vec<SocketAddr> = (0..7).map(|_| t.pick("c", None, &mut rng).unwrap().unwrap()).collect();
    assert_eq!(first, again);
}

#[test]
fn round_robin_start_is_randomised_per_table_seed() {
    let eps: Vec<Value> = (1..=50).map(|i| ep(&format!("10.0.0.{i}:80"), 1)).collect();
    let firsts: std::collections::HashSet<SocketAddr> = (0..20)
        .map(|seed| {
            let t = table(json!([cluster("c", "ROUND_ROBIN", vec![group(0, eps.clone())])]), seed);
            t.pick("c", None, &mut Rng::new(0)).unwrap().unwrap()
        })
        .collect();
    assert!(firsts.len() > 5, "20 tables started at only {} hosts", firsts.len());
}

#[test]
fn random_ignores_weights() {
    let (eps, exp) = weighted_eps();
    let t = table(json!([cluster("c", "RANDOM", vec![group(0, eps)])]), 1);
    let c = counts(&t, "c", 50_000, |_| None, 9);
    let uniform: Vec<(SocketAddr, f64)> = exp.iter().map(|(a, _)| (*a, 1.0)).collect();
    assert_fits(&c, &uniform);
}

#[test]
fn least_request_and_hash_policies_follow_weights() {
    for policy in ["LEAST_REQUEST", "RING_HASH", "MAGLEV"] {
        let (eps, exp) = weighted_eps();
        let mut c = cluster("c", policy, vec![group(0, eps)]);
        if policy == "RING_HASH" {
            // A ring's arcs vary around their nominal share (about
            // 1/sqrt(entries per host)); with Envoy's default 1024 entries
            // for 5 hosts that is a few percent, which 50k picks resolve. A
            // large ring makes the arcs match the weights to within 0.3%.
            c["ring_hash_lb_config"] = json!({"minimum_ring_size": 1 << 20});
        }
        let t = table(json!([c]), 1);
        let mut key_rng = Rng::new(77);
        let keys: Vec<u64> = (0..50_000).map(|_| key_rng.next_u64()).collect();
        let c = counts(&t, "c", 50_000, |i| Some(keys[i]), 5);
        assert_fits_named(&c, &exp, policy);
    }
}

#[test]
fn least_request_prefers_the_idle_host() {
    let eps = (1..=2).map(|i| ep(&format!("10.0.0.{i}:80"), 1)).collect();
    let t = table(json!([cluster("c", "LEAST_REQUEST", vec![group(0, eps)])]), 1);
    let c = t.cluster("c").unwrap();
    let busy = c.endpoint_index(&addr("10.0.0.1:80")).unwrap();
    for _ in 0..10 {
        c.state(busy).request_started();
    }
    let got = counts(&t, "c", 10_000, |_| None, 4);
    // Two draws with replacement: the busy host wins only when both draws
    // land on it, 25% of the time (Envoy's documented P2C figure).
    let share = got.get(&addr("10.0.0.1:80")).copied().unwrap_or(0) as f64 / 10_000.0;
    assert!((0.22..0.28).contains(&share), "busy host share {share}");
}

#[test]
fn hash_policies_same_key_same_endpoint_across_rebuilds() {
    for policy in ["RING_HASH", "MAGLEV"] {
        let eps: Vec<Value> = (1..=30).map(|i| ep(&format!("10.1.0.{i}:8080"), 1)).collect();
        let mut rev = eps.clone();
        rev.reverse();
        let t1 = table(json!([cluster("c", policy, vec![group(0, eps)])]), 1);
        let t2 = table(json!([cluster("c", policy, vec![group(0, rev)])]), 999);
        for k in 0..2000u32 {
            let h = hash_key(format!("user-{k}").as_bytes());
            let a = t1.pick("c", Some(h), &mut Rng::new(1)).unwrap();
            let b = t2.pick("c", Some(h), &mut Rng::new(2)).unwrap();
            assert_eq!(a, b, "{policy} key {k}");
        }
    }
}

#[test]
fn priority_spill_matches_envoy_docs_example() {
    // P0: 1 of 7 healthy (health 20), P1: 3 of 14 (health 30) -> 40 / 60.
    let p0: Vec<Value> =
        (0..7).map(|i| ep_h(&format!("10.0.0.{}:80", i + 1), if i < 1 { "HEALTHY" } else { "UNHEALTHY" })).collect();
    let p1: Vec<Value> =
        (0..14).map(|i| ep_h(&format!("10.0.1.{}:80", i + 1), if i < 3 { "HEALTHY" } else { "UNHEALTHY" })).collect();
    let mut c = cluster("c", "ROUND_ROBIN", vec![group(0, p0), group(1, p1)]);
    c["common_lb_config"] = json!({"healthy_panic_threshold": {"value": 0.0}});
    let t = table(json!([c]), 1);
    let snap = t.cluster("c").unwrap().snapshot();
    assert_eq!(snap.priority_load().healthy, vec![40, 60]);
    let got = counts(&t, "c", 50_000, |_| None, 3);
    let p0_share = got.iter().filter(|(a, _)| a.to_string().starts_with("10.0.0.")).map(|(_, n)| n).sum::<u64>();
    let x = chi2(&[p0_share, 50_000 - p0_share], &[40.0, 60.0]);
    assert!(x < chi2_critical(1), "P0 got {p0_share} of 50000");
    // Only healthy hosts are picked.
    assert_eq!(got.len(), 4, "{got:?}");
}

#[test]
fn panic_uses_all_hosts_and_disabled_panic_fails_picks() {
    let eps = vec![ep_h("10.0.0.1:80", "HEALTHY"), ep_h("10.0.0.2:80", "UNHEALTHY"), ep_h("10.0.0.3:80", "DRAINING")];
    let t = table(json!([cluster("c", "ROUND_ROBIN", vec![group(0, eps.clone())])]), 1);
    // 1 of 3 healthy = 33% < 50%: panic, all three hosts get picks.
    assert_eq!(t.cluster("c").unwrap().snapshot().priority_load().panic, vec![true]);
    assert_eq!(counts(&t, "c", 300, |_| None, 1).len(), 3);
    let all_down = vec![ep_h("10.0.0.1:80", "UNHEALTHY"), ep_h("10.0.0.2:80", "TIMEOUT")];
    let mut c = cluster("c", "ROUND_ROBIN", vec![group(0, all_down)]);
    c["common_lb_config"] = json!({"healthy_panic_threshold": {"value": 0}});
    let t = table(json!([c]), 1);
    assert_eq!(t.pick("c", None, &mut Rng::new(1)), Ok(None));
    assert_eq!(t.pick("nope", None, &mut Rng::new(1)), Err(UnknownCluster));
}

#[test]
fn degraded_hosts_take_load_only_when_healthy_ones_cannot() {
    let eps = vec![ep_h("10.0.0.1:80", "HEALTHY"), ep_h("10.0.0.2:80", "DEGRADED"), ep_h("10.0.0.3:80", "DEGRADED")];
    let t = table(json!([cluster("c", "ROUND_ROBIN", vec![group(0, eps)])]), 1);
    let l = t.cluster("c").unwrap().snapshot().priority_load().clone();
    // health 140 * 1/3 = 46, degraded 140 * 2/3 = 93 -> NTA 100: 46 healthy, 54 degraded.
    assert_eq!((l.healthy.clone(), l.degraded.clone()), (vec![46], vec![54]));
    let got = counts(&t, "c", 10_000, |_| None, 2);
    let x = chi2(&[got[&addr("10.0.0.1:80")], got[&addr("10.0.0.2:80")] + got[&addr("10.0.0.3:80")]], &[46.0, 54.0]);
    assert!(x < chi2_critical(1), "{got:?}");
}

#[test]
fn locality_weighted_balancing_follows_envoy_docs() {
    // X weight 1, Y weight 2; X 50% healthy: effective 1 * min(1, 1.4 * 0.5) = 0.7 vs 2 -> 26/74.
    let x: Vec<Value> =
        (0..4).map(|i| ep_h(&format!("10.0.0.{}:80", i + 1), if i < 2 { "HEALTHY" } else { "UNHEALTHY" })).collect();
    let y: Vec<Value> = (0..4).map(|i| ep_h(&format!("10.0.1.{}:80", i + 1), "HEALTHY")).collect();
    let mut c = cluster(
        "c",
        "ROUND_ROBIN",
        vec![
            json!({"locality": {"zone": "x"}, "load_balancing_weight": 1, "lb_endpoints": x}),
            json!({"locality": {"zone": "y"}, "load_balancing_weight": 2, "lb_endpoints": y}),
        ],
    );
    c["common_lb_config"] = json!({"locality_weighted_lb_config": {}, "healthy_panic_threshold": {"value": 0}});
    let t = table(json!([c]), 1);
    let got = counts(&t, "c", 27_000, |_| None, 2);
    let xs: u64 = got.iter().filter(|(a, _)| a.to_string().starts_with("10.0.0.")).map(|(_, n)| n).sum();
    let share = xs as f64 / 27_000.0;
    assert!((share - 0.7 / 2.7).abs() < 0.005, "locality X share {share}");
}

#[test]
fn istio_locality_failover_ranks_by_closeness() {
    let mk = |zone: &str, sub: &str, region: &str, ip: &str| json!({"locality": {"region": region, "zone": zone, "sub_zone": sub}, "lb_endpoints": [ep(ip, 1)]});
    let mut c = cluster(
        "c",
        "ROUND_ROBIN",
        vec![
            mk("z2", "s1", "r2", "10.0.0.4:80"),
            mk("z1", "s2", "r1", "10.0.0.2:80"),
            mk("z1", "s1", "r1", "10.0.0.1:80"),
            mk("z9", "s1", "r1", "10.0.0.3:80"),
        ],
    );
    c["outlier_detection"] = json!({});
    let specs = clusters_from_value(&json!([c.clone()]), "t").unwrap();
    let f = LocalityFailover {
        local: Locality { region: "r1".into(), zone: "z1".into(), sub_zone: "s1".into() },
        failover: vec![],
    };
    let t = LbTable::new(Some(1), Some(f.clone()));
    t.set_clusters(specs, 0);
    let snap = t.cluster("c").unwrap().snapshot();
    let prio: HashMap<String, u32> = snap.endpoints().iter().map(|e| (e.address.to_string(), e.priority)).collect();
    assert_eq!(prio["10.0.0.1:80"], 0);
    assert_eq!(prio["10.0.0.2:80"], 1);
    assert_eq!(prio["10.0.0.3:80"], 2);
    assert_eq!(prio["10.0.0.4:80"], 3);
    // All traffic stays in the proxy's own sub-zone while it is healthy.
    assert_eq!(counts(&t, "c", 100, |_| None, 1).keys().collect::<Vec<_>>(), vec![&addr("10.0.0.1:80")]);
    // Without outlier detection Istio does not fail over: priorities stay.
    c.as_object_mut().unwrap().remove("outlier_detection");
    let t = LbTable::new(Some(1), Some(f));
    t.set_clusters(clusters_from_value(&json!([c]), "t").unwrap(), 0);
    assert!(t.cluster("c").unwrap().snapshot().endpoints().iter().all(|e| e.priority == 0));
}

fn outlier_cluster(n: usize, od: Value) -> Value {
    let eps = (0..n).map(|i| ep(&format!("10.9.0.{}:80", i + 1), 1)).collect();
    let mut c = cluster("c", "ROUND_ROBIN", vec![group(0, eps)]);
    c["outlier_detection"] = od;
    c
}

#[test]
fn outlier_ejects_after_consecutive_5xx_and_returns_after_base_time() {
    let t = table(json!([outlier_cluster(10, json!({}))]), 1);
    let c = t.cluster("c").unwrap();
    let bad = c.endpoint_index(&addr("10.9.0.3:80")).unwrap();
    for i in 0..4 {
        assert!(!c.report(bad, Outcome::Http(503), false, 1000 + i));
    }
    assert!(c.report(bad, Outcome::Http(500), false, 1005), "5th consecutive 5xx ejects");
    assert!(c.state(bad).is_ejected());
    let got = counts(&t, "c", 900, |_| None, 1);
    assert!(!got.contains_key(&addr("10.9.0.3:80")), "ejected host picked: {got:?}");
    assert_eq!(got.len(), 9);
    // Default base time 30 s, checked at 10 s interval sweeps (first at 10 s).
    assert!(!c.tick(20_000));
    assert!(!c.tick(30_999));
    assert!(c.tick(40_000), "returns at the first sweep 30 s after ejection");
    assert!(!c.state(bad).is_ejected());
    assert_eq!(counts(&t, "c", 1000, |_| None, 1).len(), 10);
    // Second ejection lasts twice as long (backoff).
    for i in 0..5 {
        c.report(bad, Outcome::Http(500), false, 41_000 + i);
    }
    assert!(c.state(bad).is_ejected());
    assert!(!c.tick(90_000));
    assert!(c.tick(110_000));
    assert_eq!(c.state(bad).ejection().total, 2);
}

#[test]
fn outlier_max_ejection_percent_default_ejects_nothing_under_10_hosts() {
    let t = table(json!([outlier_cluster(9, json!({}))]), 1);
    let c = t.cluster("c").unwrap();
    for i in 0..20 {
        c.report(0, Outcome::Http(500), false, i);
    }
    assert!(!c.state(0).is_ejected(), "100 * 1 / 9 = 11% > 10%: no ejection (Envoy since 2023)");
    let t = table(json!([outlier_cluster(9, json!({"always_eject_one_host": true}))]), 1);
    let c = t.cluster("c").unwrap();
    for i in 0..5 {
        c.report(0, Outcome::Http(500), false, i);
    }
    assert!(c.state(0).is_ejected());
    for i in 0..5 {
        c.report(1, Outcome::Http(500), false, i);
    }
    assert!(!c.state(1).is_ejected(), "only the first ejection ignores the cap");
}

#[test]
fn outlier_gateway_and_local_origin_errors() {
    // Gateway errors are off by default (enforcing 0) but still count as 5xx;
    // connect failures map to 503 without split mode.
    let t = table(
        json!([outlier_cluster(
            10,
            json!({"consecutive_5xx": 100, "enforcing_consecutive_gateway_failure": 100, "consecutive_gateway_failure": 3})
        )]),
        1,
    );
    let c = t.cluster("c").unwrap();
    c.report(0, Outcome::ConnectFailure, false, 1);
    c.report(0, Outcome::Http(502), false, 2);
    assert!(!c.state(0).is_ejected());
    c.report(0, Outcome::Timeout, false, 3);
    assert!(c.state(0).is_ejected(), "3 gateway failures (503, 502, 504)");
    // A success resets the run.
    c.report(1, Outcome::Http(503), false, 1);
    c.report(1, Outcome::Http(503), false, 2);
    c.report(1, Outcome::Http(200), false, 3);
    c.report(1, Outcome::Http(503), false, 4);
    assert!(!c.state(1).is_ejected());
}

#[test]
fn outlier_success_rate_ejects_the_statistical_outlier() {
    let t = table(
        json!([outlier_cluster(10, json!({"interval": "1s", "max_ejection_percent": 50, "consecutive_5xx": 1000}))]),
        1,
    );
    let c = t.cluster("c").unwrap();
    for h in 0..10 {
        for r in 0..200u64 {
            let fail = if h == 4 { r % 2 == 0 } else { r % 100 == 0 };
            c.report(h, if fail { Outcome::Http(500) } else { Outcome::Http(200) }, false, 10 + r);
        }
    }
    assert!(c.tick(1000));
    assert!(c.state(4).is_ejected());
    assert_eq!((0..10).filter(|&h| c.state(h).is_ejected()).count(), 1);
}

#[test]
fn health_check_and_state_carry_over_across_updates() {
    let t = table(json!([outlier_cluster(10, json!({}))]), 1);
    let c = t.cluster("c").unwrap();
    c.state(2).request_started();
    for i in 0..5 {
        c.report(0, Outcome::Http(500), false, i);
    }
    assert!(c.state(0).is_ejected());
    c.set_health_check(5, false, 10);
    assert_eq!(c.snapshot().health(5), Health::Unhealthy);
    // New table: endpoints 1..=10 minus .10, plus a new one.
    let mut eps: Vec<Value> = (0..9).map(|i| ep(&format!("10.9.0.{}:80", i + 1), 1)).collect();
    eps.push(ep("10.9.0.77:80", 1));
    let mut nc = cluster("c", "ROUND_ROBIN", vec![group(0, eps)]);
    nc["outlier_detection"] = json!({});
    t.set_clusters(clusters_from_value(&json!([nc]), "t").unwrap(), 20);
    let c2 = t.cluster("c").unwrap();
    let i = |a: &str| c2.endpoint_index(&addr(a)).unwrap();
    assert!(c2.state(i("10.9.0.1:80")).is_ejected(), "ejection carried over");
    assert_eq!(c2.state(i("10.9.0.3:80")).active_requests(), 1, "active requests carried over");
    assert_eq!(c2.snapshot().health(i("10.9.0.6:80")), Health::Unhealthy, "failed health check carried over");
    assert_eq!(c2.snapshot().health(i("10.9.0.77:80")), Health::Healthy);
    // A passing check returns the ejected host early.
    c2.set_health_check(i("10.9.0.1:80"), true, 30);
    assert!(!c2.state(i("10.9.0.1:80")).is_ejected());
}

#[test]
fn invalid_input_names_cluster_and_field() {
    let cases: Vec<(Value, &str)> = vec![
        (json!([{"name": "a", "lb_policy": "CLUSTER_PROVIDED"}]), r#"cluster "a": lb_policy"#),
        (
            json!([{"name": "a", "lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 65536}}]),
            "maglev_lb_config.table_size: 65536 is not a prime",
        ),
        (
            json!([{"name": "a", "lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 100, "maximum_ring_size": 10}}]),
            "minimum_ring_size",
        ),
        (
            json!([{"name": "a", "lb_subset_config": {"fallback_policy": "ANY_ENDPOINT"}}]),
            "lb_subset_config: not supported",
        ),
        (json!([{"name": "a", "lbPolicy": "RANDOM", "bogus": 1}]), r#"cluster "a": bogus: unknown field"#),
        (
            json!([{"name": "a", "load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "db.example", "port_value": 1}}}}]}]}}]),
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
        ),
        (
            json!([{"name": "a", "load_assignment": {"endpoints": [{"priority": 129}]}}]),
            "endpoints[0].priority: 129 is out of range",
        ),
        (
            json!([cluster("a", "ROUND_ROBIN", vec![group(0, vec![ep("10.0.0.1:80", 1), ep("10.0.0.1:80", 2)])])]),
            "duplicate endpoint 10.0.0.1:80",
        ),
        (
            json!([{"name": "a", "outlier_detection": {"base_ejection_time": "60s", "max_ejection_time": "10s"}}]),
            "max_ejection_time",
        ),
        (json!([{"name": "a"}, {"name": "a"}]), "defined twice"),
        (json!([{"name": "a", "type": "STRICT_DNS"}]), "STRICT_DNS is not supported"),
        (
            json!([{"name": "a", "lb_policy": "ROUND_ROBIN", "maglev_lb_config": {}}]),
            "maglev_lb_config: set, but lb_policy is ROUND_ROBIN",
        ),
    ];
    for (v, want) in cases {
        let e = clusters_from_value(&v, "t").expect_err(want).to_string();
        assert!(e.contains(want), "{e:?} does not contain {want:?}");
    }
}

#[test]
fn failed_parse_leaves_the_serving_table_alone() {
    let t = table(json!([cluster("c", "ROUND_ROBIN", vec![group(0, vec![ep("10.0.0.1:80", 1)])])]), 1);
    let g = t.generation();
    let bad = parse_clusters(r#"[{"name": "c", "lb_policy": "NOPE"}]"#, false, "x");
    assert!(bad.is_err());
    assert_eq!(t.generation(), g);
    assert_eq!(t.pick("c", None, &mut Rng::new(1)), Ok(Some(addr("10.0.0.1:80"))));
}

#[test]
fn bootstrap_yaml_and_istio_metadata() {
    let y = r#"
static_resources:
  clusters:
  - name: "outbound|9080||reviews.default.svc.cluster.local"
    type: EDS
    connect_timeout: 1s
    lbPolicy: LEAST_REQUEST
    leastRequestLbConfig: {choiceCount: 3, activeRequestBias: {defaultValue: 0.5}}
    load_assignment:
      cluster_name: reviews
      policy: {overprovisioning_factor: 200}
      endpoints:
      - locality: {region: us-east1, zone: b}
        lb_endpoints:
        - endpoint: {address: {socket_address: {address: "fd00::5", port_value: 9080}}}
          metadata:
            filter_metadata:
              istio: {workload: "reviews-v1;default;reviews;v1;Kubernetes", network: net1}
              envoy.transport_socket_match: {tlsMode: istio}
              envoy.lb: {version: v1}
"#;
    let specs = parse_clusters(y, true, "b.yaml").unwrap();
    let s = &specs[0];
    assert_eq!(s.config.policy, Policy::LeastRequest);
    assert_eq!(s.config.least_request.choice_count, 3);
    assert_eq!(s.config.least_request.active_request_bias, 0.5);
    assert_eq!(s.config.overprovisioning_factor, 200);
    let e = &s.endpoints[0];
    assert_eq!(e.hash_key, "[fd00::5]:9080");
    assert_eq!(e.meta.tls_mode, "istio");
    assert_eq!(e.meta.network, "net1");
    assert_eq!(e.meta.labels, vec![("version".to_string(), "v1".to_string())]);
    assert_eq!(s.groups[0].locality.region, "us-east1");
}

#[test]
fn redirection_classifies_like_istio_iptables() {
    let t = RedirectTable::parse(
        r#"{"services": [{"address": "10.96.0.20", "port": 9080, "cluster": "outbound|9080||reviews"},
                         {"address": "fd00:96::20", "port": 80, "cluster": "outbound|80||web"}],
            "include_ip_ranges": "10.0.0.0/8,fd00::/16",
            "exclude_ip_ranges": ["10.96.5.0/24", "10.96.0.21"],
            "exclude_ports": [22]}"#,
        false,
    )
    .unwrap();
    let v = |ip: &str, port| {
        let v = t.classify(ip.parse().unwrap(), port);
        t.cluster_name(v).map(str::to_owned).unwrap_or_else(|| format!("{v:?}"))
    };
    assert_eq!(v("10.96.0.20", 9080), "outbound|9080||reviews");
    assert_eq!(v("::ffff:10.96.0.20", 9080), "outbound|9080||reviews");
    assert_eq!(v("fd00:96::20", 80), "outbound|80||web");
    assert_eq!(v("10.96.0.20", 9081), "Passthrough");
    assert_eq!(v("10.96.0.20", 22), "Bypass");
    assert_eq!(v("10.96.5.9", 9080), "Bypass");
    assert_eq!(v("10.96.0.21", 9080), "Bypass");
    assert_eq!(v("192.168.1.1", 80), "Bypass");
    assert_eq!(v("127.0.0.1", 9080), "Bypass");
    assert_eq!(v("fd01::1", 80), "Bypass");
    // Default include is everything.
    let t = RedirectTable::parse(r#"{"services": []}"#, false).unwrap();
    assert_eq!(t.classify("8.8.8.8".parse().unwrap(), 53), Verdict::Passthrough);
    for bad in [
        r#"{"exclude_ip_ranges": ["10.0.0.1/8"]}"#,
        r#"{"include_ip_ranges": ["1.2.3.4/33"]}"#,
        r#"{"services": [{"address": "x", "port": 1, "cluster": "c"}]}"#,
    ] {
        assert!(RedirectTable::parse(bad, false).is_err(), "{bad}");
    }
}

#[test]
fn redirection_follows_port_listeners_and_the_catch_all() {
    // istiod's 0.0.0.0_9090 TCP listener takes the whole port; virtualOutbound's catch-all
    // to BlackHoleCluster (REGISTRY_ONLY) takes the rest; a VIP still wins over both.
    let t = RedirectTable::parse(
        r#"{"services": [{"address": "10.96.0.20", "port": 9090, "cluster": "outbound|9090||vip"}],
            "port_clusters": [{"port": 9090, "cluster": "outbound|9090||db"}],
            "default_cluster": "BlackHoleCluster", "exclude_ports": [22]}"#,
        false,
    )
    .unwrap();
    let v = |ip: &str, port| {
        let v = t.classify(ip.parse().unwrap(), port);
        t.cluster_name(v).map(str::to_owned).unwrap_or_else(|| format!("{v:?}"))
    };
    assert_eq!(v("10.96.0.20", 9090), "outbound|9090||vip");
    assert_eq!(v("10.1.2.3", 9090), "outbound|9090||db");
    assert_eq!(v("10.1.2.3", 9091), "BlackHoleCluster");
    assert_eq!(v("10.1.2.3", 22), "Bypass");
    assert_eq!(v("127.0.0.1", 9091), "Bypass");
    for bad in [
        r#"{"port_clusters": [{"port": 0, "cluster": "c"}]}"#,
        r#"{"port_clusters": [{"port": 1, "cluster": "a"}, {"port": 1, "cluster": "b"}]}"#,
        r#"{"default_cluster": 3}"#,
        r#"{"port_clusters": [{"port": 1, "cluster": "a", "x": 1}]}"#,
    ] {
        assert!(RedirectTable::parse(bad, false).is_err(), "{bad}");
    }
}

/// By-name picks go through a per-thread cache of the last table's map: it
/// must follow map swaps at once, tell tables apart when a thread alternates
/// between them, and follow a snapshot rebuilt by a health change.
#[test]
fn pick_by_name_follows_map_swaps_tables_and_health() {
    let one = |name: &str, addr: &str| {
        clusters_from_value(&json!([cluster(name, "ROUND_ROBIN", vec![group(0, vec![ep(addr, 1)])])]), "test")
            .expect("valid cluster")
    };
    let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
    let mut rng = Rng::new(1);
    let t1 = LbTable::new(Some(1), None);
    let t2 = LbTable::new(Some(2), None);
    t1.set_clusters(one("c", "10.0.0.1:80"), 0);
    t2.set_clusters(one("c", "10.0.0.2:80"), 0);
    for _ in 0..3 {
        assert_eq!(t1.pick("c", None, &mut rng), Ok(Some(a)));
        assert_eq!(t2.pick("c", None, &mut rng), Ok(Some(b)));
    }
    // A new map replaces "c" with "d": the next pick sees it.
    t1.set_clusters(one("d", "10.0.0.2:80"), 0);
    assert_eq!(t1.pick("c", None, &mut rng), Err(UnknownCluster));
    assert_eq!(t1.pick("d", None, &mut rng), Ok(Some(b)));
    t1.upsert_clusters(one("c", "10.0.0.1:80"), 0);
    assert_eq!(t1.pick("c", None, &mut rng), Ok(Some(a)));
    assert_eq!(t1.remove_clusters(&["c"]), 1);
    assert_eq!(t1.pick("c", None, &mut rng), Err(UnknownCluster));
    // A failed active health check rebuilds the snapshot (not the map): of
    // two hosts (50% healthy, not in panic) only the other one is picked.
    let two = vec![group(0, vec![ep("10.0.0.1:80", 1), ep("10.0.0.2:80", 1)])];
    t2.set_clusters(clusters_from_value(&json!([cluster("c", "ROUND_ROBIN", two)]), "test").expect("valid"), 0);
    let c = t2.cluster("c").expect("cluster");
    let picks = |rng: &mut Rng| (0..4).map(|_| t2.pick("c", None, rng).unwrap().unwrap()).collect::<Vec<_>>();
    assert!(picks(&mut rng).contains(&a));
    c.set_health_check(0, false, 0);
    assert_eq!(picks(&mut rng), vec![b; 4]);
    c.set_health_check(0, true, 0);
    assert!(picks(&mut rng).contains(&a));
    // A table made after the cached one is dropped is not mistaken for it.
    drop(t1);
    let t3 = LbTable::new(Some(3), None);
    t3.set_clusters(one("d", "10.0.0.1:80"), 0);
    assert_eq!(t3.pick("d", None, &mut rng), Ok(Some(a)));
    // Other threads see the same tables.
    std::thread::scope(|s| {
        s.spawn(|| assert!(matches!(t2.pick("c", None, &mut Rng::new(5)), Ok(Some(x)) if x == a || x == b)));
        s.spawn(|| assert_eq!(t3.pick("d", None, &mut Rng::new(6)), Ok(Some(a))));
    });
}

/// The per-thread snapshot cache across threads: a worker that picked
/// (and so cached) before a swap on another thread must see the new
/// table on its first pick after the swap, whether the swap replaced the
/// map, rebuilt a snapshot (health) or only touched another cluster.
#[test]
fn cached_by_name_picks_see_swaps_made_by_other_threads() {
    use std::sync::mpsc;
    let spec = |addr: &str| {
        let mut c = cluster("c", "ROUND_ROBIN", vec![group(0, vec![ep(addr, 1)])]);
        c["common_lb_config"] = json!({"healthy_panic_threshold": {"value": 0}});
        let other = cluster("other", "ROUND_ROBIN", vec![group(0, vec![ep("10.9.9.9:80", 1)])]);
        clusters_from_value(&json!([c, other]), "test").expect("valid")
    };
    let t = LbTable::new(Some(4), None);
    t.set_clusters(spec("10.0.0.1:80"), 0);
    let (ask, asked) = mpsc::channel::<()>();
    let (tell, told) = mpsc::channel::<Result<Option<SocketAddr>, UnknownCluster>>();
    std::thread::scope(|s| {
        let t = &t;
        s.spawn(move || {
            let mut rng = Rng::new(9);
            // Each request: two picks (the second one reads the cache).
            while asked.recv().is_ok() {
                let _ = t.pick("c", None, &mut rng);
                tell.send(t.pick("c", None, &mut rng)).expect("main waits");
            }
        });
        let pick = || {
            ask.send(()).expect("worker runs");
            told.recv().expect("worker answers")
        };
        assert_eq!(pick(), Ok(Some(addr("10.0.0.1:80"))));
        t.set_clusters(spec("10.0.0.2:80"), 0);
        assert_eq!(pick(), Ok(Some(addr("10.0.0.2:80"))), "map swap");
        t.cluster("c").expect("c").set_health_check(0, false, 0);
        assert_eq!(pick(), Ok(None), "snapshot rebuilt: its only host failed (panic disabled)");
        t.cluster("c").expect("c").set_health_check(0, true, 0);
        assert_eq!(pick(), Ok(Some(addr("10.0.0.2:80"))), "and back");
        t.remove_clusters(&["c"]);
        assert_eq!(pick(), Err(UnknownCluster), "removed");
        drop(ask);
    });
}

/// What one removal moved: all keys that changed endpoint, and those of
/// them that were on an endpoint that stayed, each over the optimum (the
/// removed endpoints' nominal share, `removed / n`: Envoy's
/// `host_loss_over_N_optimal`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Moved {
    pub(crate) ratio: f64,
    pub(crate) from_staying: f64,
}

/// Envoy's HostLoss measurement (`ring_hash_lb_benchmark.cc`,
/// `maglev_lb_benchmark.cc`): `n` hosts named like Envoy's
/// (`10.0.x.y:6379`), the endpoint of every key in `hashes` before and
/// after removing each set in `removals`. `extra` is merged into the
/// cluster (ring or table size).
pub(crate) fn host_loss(policy: &str, n: usize, extra: &Value, removals: &[Vec<usize>], hashes: &[u64]) -> Vec<Moved> {
    let eps: Vec<Value> = (0..n).map(|i| ep(&format!("10.0.{}.{}:6379", i / 256, i % 256), 1)).collect();
    let mk = |eps: Vec<Value>| {
        let mut c = cluster("c", policy, vec![group(0, eps)]);
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        table(json!([c]), 1)
    };
    let full = mk(eps.clone());
    let mut rng = Rng::new(0);
    let before: Vec<SocketAddr> = hashes.iter().map(|&h| full.pick("c", Some(h), &mut rng).unwrap().unwrap()).collect();
    removals
        .iter()
        .map(|gone| {
            let kept: Vec<Value> =
                eps.iter().enumerate().filter(|(i, _)| !gone.contains(i)).map(|(_, e)| e.clone()).collect();
            let gone_addrs: Vec<SocketAddr> =
                gone.iter().map(|&i| addr(&format!("10.0.{}.{}:6379", i / 256, i % 256))).collect();
            let t = mk(kept);
            let (mut moved, mut from_staying) = (0usize, 0usize);
            for (&h, b) in hashes.iter().zip(&before) {
                if t.pick("c", Some(h), &mut rng).unwrap().unwrap() != *b {
                    moved += 1;
                    from_staying += usize::from(!gone_addrs.contains(b));
                }
            }
            let optimum = hashes.len() as f64 * gone.len() as f64 / n as f64;
            Moved { ratio: moved as f64 / optimum, from_staying: from_staying as f64 / optimum }
        })
        .collect()
}

fn key_hashes(n: usize) -> Vec<u64> {
    (0..n).map(|k| hash_key(format!("key-{k}").as_bytes())).collect()
}

/// Ring hash in the configuration Envoy's HostLoss benchmark measures: 500
/// hosts, minimum ring 65,536 (132 entries per host with 500 hosts and
/// with 499, so the hosts that stay keep their arcs). Envoy removes the
/// last 1, 2 and 3 hosts: each within 1.2x of the optimum. Removing any
/// other host moves only that host's keys as well (keys from hosts that
/// stayed: at most 2% of the optimum, from Envoy's floating-point running
/// totals); how many that is depends on the removed host's arcs, whose
/// share varies about 1/sqrt(132) = 8.7% around 1/500 -- measured over
/// every 25th host: 0.87x to 1.29x (host #400), mean 1.01x.
#[test]
fn ring_hash_disruption_in_envoys_host_loss_configuration() {
    let cfg = json!({"ring_hash_lb_config": {"minimum_ring_size": 65536}});
    let hashes = key_hashes(400_000);
    let envoy = host_loss("RING_HASH", 500, &cfg, &[vec![499], vec![498, 499], vec![497, 498, 499]], &hashes);
    for (lost, m) in envoy.iter().enumerate() {
        assert!(m.ratio <= 1.2, "losing the last {} of 500 moved {:.3}x the optimum", lost + 1, m.ratio);
    }
    let spread: Vec<Vec<usize>> = (0..500).step_by(25).map(|i| vec![i]).collect();
    let all = host_loss("RING_HASH", 500, &cfg, &spread, &hashes);
    for (r, m) in spread.iter().zip(&all) {
        assert!(m.from_staying <= 0.02, "removing #{}: {:.3}x moved from hosts that stayed", r[0], m.from_staying);
        assert!(m.ratio <= 1.35, "removing #{}: {:.3}x", r[0], m.ratio);
    }
    let mean = all.iter().map(|m| m.ratio).sum::<f64>() / all.len() as f64;
    assert!((0.9..=1.1).contains(&mean), "mean {mean:.3}x over {} removals", all.len());
}

/// Envoy's default ring (1,024 entries) for 100 hosts: 11 entries per host
/// with 100 or 99 hosts, so again only the removed host's keys move, but
/// 11 arcs vary a lot (1/sqrt(11) = 30%): the figure per removal spreads
/// from 0.62x to 2.30x (mean 1.28x over every 5th host). Above 9,900
/// entries a 100-host ring gives every host more entries when one goes
/// (65,536: 656 -> 662 each), and the new entries move ~0.9% of all keys
/// on top: ~1.9x, in Envoy as here. So the 1.2x target for losing 1 host
/// of 100 (see `report_disruption` in `benches/lb.rs`) is met by ring hash
/// where Envoy measures it (500 hosts, 64K), not at 100 hosts.
#[test]
fn ring_hash_default_ring_moves_only_the_removed_hosts_keys() {
    let removals: Vec<Vec<usize>> = (0..100).step_by(5).map(|i| vec![i]).collect();
    let hashes = key_hashes(200_000);
    let moved = host_loss("RING_HASH", 100, &json!({}), &removals, &hashes);
    for (r, m) in removals.iter().zip(&moved) {
        // One entry of the ~1,089 changes hands besides: Envoy's
        // floating-point running totals (11.000...02 per host) give a
        // boundary entry to the next host (0.19x the optimum, measured).
        assert!(m.from_staying <= 0.25, "removing #{}: {:.3}x moved from hosts that stayed", r[0], m.from_staying);
        assert!(m.ratio <= 2.5, "removing #{}: {:.3}x", r[0], m.ratio);
    }
    let mean = moved.iter().map(|m| m.ratio).sum::<f64>() / moved.len() as f64;
    assert!((0.8..=1.5).contains(&mean), "mean {mean:.3}x");
}

/// Maglev moves more than the removed host's keys by design: every host's
/// permutation fills the removed host's slots, and the fill order shifts
/// (Envoy's docs: about twice as many keys as ring hash; "a larger
/// table_size reduces this"). Keys are every slot of the table (hash =
/// slot), so the figures are exact. Our tables are Envoy's (same keys,
/// order and fill, `maglev::tests::table_equals_envoys_literal_loop`, also
/// at 655,373), so a mixed Envoy/pymesh mesh sends a key to the same host
/// and these figures are Envoy's too:
/// - default M = 65,537, 100 hosts: 1.5-1.7x per removal (asserted <= 2x);
/// - M = 655,373 (a prime; 6,554 slots per host): 1.12-1.16x, within the
///   1.2x target for every removal;
/// - Envoy's benchmark (500 hosts at 65,537: 131 slots per host): ~5.4x;
///   at 655,373 ~2.2x. Maglev needs M >> 100 x hosts for 1.2x.
#[test]
fn maglev_disruption_per_removal_default_and_larger_table() {
    let removals: Vec<Vec<usize>> = (0..100).step_by(10).map(|i| vec![i]).chain([vec![99]]).collect();
    for (m, bound) in [(65_537u64, 2.0), (655_373, 1.2)] {
        assert!(is_prime(m));
        let slots: Vec<u64> = (0..m).collect();
        let cfg = json!({"maglev_lb_config": {"table_size": m}});
        for (r, x) in removals.iter().zip(host_loss("MAGLEV", 100, &cfg, &removals, &slots)) {
            assert!(x.ratio <= bound, "M = {m}, removing #{}: {:.3}x the optimum", r[0], x.ratio);
            assert!(x.ratio >= 1.0, "M = {m}: every key of the removed host must move ({:.3}x)", x.ratio);
        }
    }
}

fn assignment(name: &str, groups: Vec<Value>) -> Value {
    json!({"cluster_name": name, "endpoints": groups})
}

/// EDS: an assignment replaces one cluster's endpoints; the cluster's
/// settings, the other clusters and the live state of endpoints that stay
/// are kept; the overprovisioning factor comes with each assignment.
#[test]
fn eds_assignment_swaps_endpoints_and_keeps_state_and_settings() {
    let other = cluster("other", "MAGLEV", vec![group(0, vec![ep("10.8.0.1:80", 1)])]);
    let t = table(json!([outlier_cluster(10, json!({})), other]), 1);
    let other_before = t.cluster("other").expect("other");
    let c = t.cluster("c").expect("c");
    for i in 0..5 {
        c.report(0, Outcome::Http(500), false, i);
    }
    assert!(c.state(0).is_ejected());
    c.state(2).request_started();
    let g = t.generation();
    // .10 goes, .77 comes; the policy sets the overprovisioning factor.
    let mut eps: Vec<Value> = (0..9).map(|i| ep(&format!("10.9.0.{}:80", i + 1), 1)).collect();
    eps.push(ep("10.9.0.77:80", 1));
    let mut a = assignment("c", vec![group(0, eps)]);
    a["policy"] = json!({"overprovisioning_factor": 200});
    let gen = t.set_assignments(assignments_from_value(&json!([a]), "eds").expect("valid"), 20).expect("known cluster");
    assert_eq!(gen, g + 1);
    assert_eq!(t.generation(), gen);
    let c2 = t.cluster("c").expect("c");
    let i = |a: &str| c2.endpoint_index(&addr(a));
    assert_eq!(c2.spec().endpoints.len(), 10);
    assert_eq!(i("10.9.0.10:80"), None);
    assert!(c2.state(i("10.9.0.1:80").unwrap()).is_ejected(), "ejection carried over");
    assert_eq!(c2.state(i("10.9.0.3:80").unwrap()).active_requests(), 1, "active requests carried over");
    assert_eq!(c2.spec().config.overprovisioning_factor, 200);
    assert_eq!(c2.spec().config.policy, Policy::RoundRobin);
    assert!(c2.spec().config.outlier.is_some(), "the cluster's settings stay");
    assert!(Arc::ptr_eq(&other_before, &t.cluster("other").expect("other")), "other clusters untouched");
    let got = counts(&t, "c", 900, |_| None, 1);
    assert_eq!(got.len(), 9, "9 healthy (one ejected), .77 among them: {got:?}");
    assert!(got.contains_key(&addr("10.9.0.77:80")) && !got.contains_key(&addr("10.9.0.1:80")));
    // The ejection runs its course on the new cluster.
    assert!(t.cluster("c").expect("c").tick(40_000));
    // Without a policy the factor is Envoy's default again, not the last one.
    let a = assignment("c", vec![group(0, vec![ep("10.9.0.1:80", 1)])]);
    t.set_assignments(assignments_from_value(&a, "eds").expect("valid"), 50_000).expect("known");
    assert_eq!(t.cluster("c").expect("c").spec().config.overprovisioning_factor, 140);
    assert_eq!(t.pick("c", None, &mut Rng::new(1)), Ok(Some(addr("10.9.0.1:80"))));
}

#[test]
fn eds_rejects_unknown_clusters_and_bad_fields_and_keeps_the_table() {
    let t = table(json!([cluster("c", "ROUND_ROBIN", vec![group(0, vec![ep("10.0.0.1:80", 1)])])]), 1);
    let g = t.generation();
    let good = assignment("c", vec![group(0, vec![ep("10.0.0.2:80", 1)])]);
    let unknown = assignment("nope", vec![group(0, vec![ep("10.0.0.3:80", 1)])]);
    // One unknown cluster in an update: nothing of it applies.
    let e = t.set_assignments(assignments_from_value(&json!([good, unknown]), "eds").unwrap(), 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"cluster "nope": cluster_name: no such cluster in the table (load the Cluster before its endpoints)"#
    );
    assert_eq!(t.generation(), g);
    assert_eq!(t.pick("c", None, &mut Rng::new(1)), Ok(Some(addr("10.0.0.1:80"))));
    let cases: Vec<(Value, &str)> = vec![
        (
            json!([{"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "10.0.0.1"}}}}]}]}]),
            r#"cluster "c": endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: missing"#,
        ),
        (json!([{"endpoints": []}]), r##"cluster "#0": cluster_name: missing"##),
        (
            json!([{"cluster_name": "c", "policy": {"overprovisioning_factor": 0}}]),
            "policy.overprovisioning_factor: must be positive",
        ),
        (
            json!([{"cluster_name": "c", "endpoints": [{"priority": 200}]}]),
            "endpoints[0].priority: 200 is out of range",
        ),
        (json!([{"cluster_name": "c", "bogus": 1}]), r#"cluster "c": bogus: unknown field"#),
        (json!([{"cluster_name": "c"}, {"cluster_name": "c"}]), "assigned twice"),
        (
            json!({"resources": [{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "c"}]}),
            "is not an envoy.config.endpoint.v3.ClusterLoadAssignment",
        ),
        (
            json!([assignment("c", vec![group(0, vec![ep("10.0.0.1:80", 1), ep("10.0.0.1:80", 1)])])]),
            "duplicate endpoint 10.0.0.1:80",
        ),
    ];
    for (v, want) in cases {
        let e = assignments_from_value(&v, "eds").expect_err(want).to_string();
        assert!(e.contains(want), "{e:?} does not contain {want:?}");
    }
    assert_eq!(t.generation(), g);
}

/// The document forms (xDS response, camelCase, YAML) and the cluster's
/// own hashing settings: an EDS-fed ring-hash cluster hashes like the same
/// cluster loaded with its endpoints inline.
#[test]
fn eds_documents_and_hashing_match_an_inline_load_assignment() {
    let eps: Vec<Value> = (1..=20)
        .map(|i| {
            let mut e = ep(&format!("10.1.0.{i}:8080"), 1);
            e["endpoint"]["hostname"] = json!(format!("pod-{i}.example"));
            e
        })
        .collect();
    let mut inline = cluster("c", "RING_HASH", vec![group(0, eps.clone())]);
    inline["common_lb_config"] = json!({"consistent_hashing_lb_config": {"use_hostname_for_hashing": true}});
    let mut bare = inline.clone();
    bare.as_object_mut().unwrap().remove("load_assignment");
    let t_inline = table(json!([inline]), 1);
    let t_eds = table(json!([bare]), 1);
    assert_eq!(t_eds.pick("c", Some(1), &mut Rng::new(1)), Ok(None), "no endpoints before EDS");
    let resp = json!({"resources": [{"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                                     "clusterName": "c", "endpoints": [{"lbEndpoints": eps}]}]});
    t_eds.set_assignments(assignments_from_value(&resp, "eds").unwrap(), 0).unwrap();
    assert_eq!(t_eds.cluster("c").unwrap().spec().endpoints[0].hash_key, "pod-1.example");
    for k in 0..500u32 {
        let h = hash_key(format!("user-{k}").as_bytes());
        assert_eq!(t_eds.pick("c", Some(h), &mut Rng::new(1)), t_inline.pick("c", Some(h), &mut Rng::new(2)));
    }
    let y = "cluster_name: c\nendpoints:\n- lb_endpoints:\n  - endpoint: {address: {socket_address: {address: 10.1.0.99, port_value: 80}}}\n";
    t_eds.set_assignments(parse_assignments(y, true, "eds.yaml").unwrap(), 0).unwrap();
    assert_eq!(t_eds.pick("c", Some(7), &mut Rng::new(1)), Ok(Some(addr("10.1.0.99:80"))));
}

#[test]
fn eds_assignments_are_reranked_by_locality_failover() {
    let mk = |zone: &str, ip: &str| json!({"locality": {"region": "r1", "zone": zone}, "lb_endpoints": [ep(ip, 1)]});
    let mut c = cluster("c", "ROUND_ROBIN", vec![]);
    c["outlier_detection"] = json!({});
    let f = LocalityFailover {
        local: Locality { region: "r1".into(), zone: "z1".into(), ..Locality::default() },
        failover: vec![],
    };
    let t = LbTable::new(Some(1), Some(f));
    t.set_clusters(clusters_from_value(&json!([c]), "t").unwrap(), 0);
    let a = assignment("c", vec![mk("z2", "10.0.0.2:80"), mk("z1", "10.0.0.1:80")]);
    t.set_assignments(assignments_from_value(&a, "eds").unwrap(), 0).unwrap();
    let snap = t.cluster("c").unwrap().snapshot();
    let prio: HashMap<String, u32> = snap.endpoints().iter().map(|e| (e.address.to_string(), e.priority)).collect();
    assert_eq!((prio["10.0.0.1:80"], prio["10.0.0.2:80"]), (0, 1), "same zone first");
    assert_eq!(counts(&t, "c", 100, |_| None, 1).keys().collect::<Vec<_>>(), vec![&addr("10.0.0.1:80")]);
}

#[test]
fn camel_case_names_without_an_upper_case_letter_are_read() {
    // proto3 JSON names `consecutive_5xx` `consecutive5xx`: no capital letter, one underscore less.
    let od = json!({"interval": "1s", "consecutive5xx": 3, "maxEjectionPercent": 50});
    let specs = clusters_from_value(&json!([outlier_cluster(10, od)]), "t");
    assert!(specs.is_ok(), "{:?}", specs.err());
}

#[test]
fn upstream_http_protocol_from_the_clusters_protocol_options() {
    const OPTS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let with = |opts: Value| json!({"name": "c", "typedExtensionProtocolOptions": {OPTS: opts}});
    let cases = [
        // istiod's CDS for an http2/grpc port (and h2UpgradePolicy UPGRADE).
        (
            with(
                json!({"@type": format!("type.googleapis.com/{OPTS}"), "explicitHttpConfig": {"http2ProtocolOptions": {}}}),
            ),
            Some(true),
        ),
        (with(json!({"explicit_http_config": {"http_protocol_options": {}}})), Some(false)),
        // istiod's CDS for a port of unknown protocol on a sidecar, and Envoy's ALPN choice.
        (with(json!({"useDownstreamProtocolConfig": {"httpProtocolOptions": {}, "http2ProtocolOptions": {}}})), None),
        (with(json!({"auto_config": {}})), None),
        (json!({"name": "c", "http2_protocol_options": {}}), Some(true)),
        // Nothing said: HTTP/1.1 as Envoy (istiod's CDS for an http port).
        (json!({"name": "c"}), Some(false)),
        (with(json!({"commonHttpProtocolOptions": {"idleTimeout": "1s"}})), Some(false)),
        // Other extensions or odd shapes decide nothing and refuse nothing.
        (json!({"name": "c", "typedExtensionProtocolOptions": {"x": {}}}), Some(false)),
        (json!({"name": "c", "typedExtensionProtocolOptions": {OPTS: "?"}}), Some(false)),
    ];
    for (c, want) in cases {
        let specs = clusters_from_value(&json!([c.clone()]), "t").expect("valid cluster");
        assert_eq!(specs[0].config.upstream_h2, want, "{c}");
    }
}

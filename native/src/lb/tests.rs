//! Behaviour of the lbtable core: distributions against weights (chi-square
//! with fixed seeds), consistent-hash disruption, priorities and panic
//! through real cluster input, outlier ejection with advancing time, state
//! carried across snapshots, and input validation.

use std::collections::HashMap;
use std::net::SocketAddr;

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

/// Share of keys that move when one of 100 endpoints is removed, over the
/// optimum (1/100), averaged over removing each of 10 different endpoints
/// (which endpoint goes changes the figure: ring hash moves exactly the
/// removed endpoint's keys, whose share varies with its arcs). Envoy measures
/// the same; Maglev moves more than ring hash by design (about twice as many
/// keys, its docs say). Envoy's default ring (1024 entries) keeps 11 entries
/// per host for both 100 and 99 hosts, so the other hosts' arcs stay put;
/// a 64k ring would add entries to every host (656 -> 662) and move ~0.9%
/// more keys, as it does in Envoy.
pub(crate) fn disruption(policy: &str, keys: usize) -> f64 {
    let eps: Vec<Value> = (0..100).map(|i| ep(&format!("10.2.{}.{}:80", i / 200, i % 200 + 1), 1)).collect();
    let t1 = table(json!([cluster("c", policy, vec![group(0, eps.clone())])]), 1);
    let hashes: Vec<u64> = (0..keys).map(|k| hash_key(format!("key-{k}").as_bytes())).collect();
    let before: Vec<_> = hashes.iter().map(|&h| t1.pick("c", Some(h), &mut Rng::new(0)).unwrap()).collect();
    let mut total = 0.0;
    for removed in (0..100).step_by(10) {
        let fewer: Vec<Value> = eps.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, e)| e.clone()).collect();
        let t2 = table(json!([cluster("c", policy, vec![group(0, fewer)])]), 1);
        let moved = hashes
            .iter()
            .zip(&before)
            .filter(|(&h, b)| t2.pick("c", Some(h), &mut Rng::new(0)).unwrap() != **b)
            .count();
        total += (moved as f64 / keys as f64) / (1.0 / 100.0);
    }
    total / 10.0
}

#[test]
fn consistent_hash_disruption_within_1_2x_of_optimum() {
    let ring = disruption("RING_HASH", 100_000);
    assert!((0.8..=1.2).contains(&ring), "ring hash moved {ring}x the optimum");
}

#[test]
fn maglev_disruption_is_bounded_as_envoy_documents() {
    // Maglev trades disruption for lookup speed: Envoy's docs say it moves
    // about twice as many keys as ring hash when hosts are removed. Our
    // tables are Envoy's (same keys, order and fill), so the figure is
    // Envoy's too: about 1.5x the optimum for 1 of 100 hosts at M = 65537.
    let maglev = disruption("MAGLEV", 100_000);
    assert!((0.8..=2.0).contains(&maglev), "maglev moved {maglev}x the optimum");
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

/// `cargo test --release -p pymesh-core parse_min_time -- --ignored --nocapture`.
#[test]
#[ignore]
fn parse_min_time() {
    let eps: Vec<Value> =
        (0..10_000).map(|i| ep(&format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255), 1)).collect();
    let text = serde_json::to_string(&json!([cluster("c", "ROUND_ROBIN", vec![group(0, eps)])])).unwrap();
    let (mut p, mut v, mut w) = (std::time::Duration::MAX, std::time::Duration::MAX, std::time::Duration::MAX);
    for _ in 0..10 {
        let t = std::time::Instant::now();
        let val: Value = serde_json::from_str(&text).unwrap();
        v = v.min(t.elapsed());
        let t = std::time::Instant::now();
        let specs = clusters_from_value(&val, "t").unwrap();
        w = w.min(t.elapsed());
        let t = std::time::Instant::now();
        std::hint::black_box(parse_clusters(&text, false, "t").unwrap());
        p = p.min(t.elapsed());
        drop(specs);
    }
    eprintln!("10k endpoints: serde_json {v:?}, walk {w:?}, both {p:?}");
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

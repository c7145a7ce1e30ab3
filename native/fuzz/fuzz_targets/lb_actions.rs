//! Stateful fuzzing of the lbtable (after Envoy's `load_balancer_fuzz.proto`):
//! the input is a sequence of actions on one cluster table, and the
//! invariants are checked after every step.
//!
//! Bytes are read as a stream of actions (opcode byte, then arguments):
//! - set endpoints: a policy, flags (locality weighting, panic threshold,
//!   outlier detection) and up to 24 endpoints with weight, priority,
//!   locality and EDS health, built as an Envoy Cluster in JSON and loaded
//!   through the same parser users feed (so it also fuzzes the parser);
//! - change health (the caller's active health check) of one endpoint;
//! - pick (with or without a hash key);
//! - report an outcome (HTTP status, connect failure, timeout) for one endpoint;
//! - start a request; advance time;
//! - EDS: new endpoints for the cluster as a `ClusterLoadAssignment` (the
//!   same generator's endpoints, with or without an overprovisioning
//!   factor), or one for a cluster the table does not have.
//!
//! Invariants after every step:
//! - a picked endpoint belongs to the cluster, and it is healthy or
//!   degraded (never EDS-unhealthy, ejected or failing its health check)
//!   unless its priority is in panic;
//! - priority loads add up to exactly 100;
//! - a hashing policy answers the same key the same way twice;
//! - an ejected endpoint's state agrees with the snapshot's health;
//! - loads equal a recomputation from the snapshot's own health counts;
//! - a by-name pick (the per-thread snapshot cache) answers a hash key as
//!   the snapshot serving now does, whatever swapped since the last step;
//! - an EDS update keeps the live state of endpoints that stay and the
//!   cluster's settings; a rejected one changes nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pymesh_core::lb::{assignments_from_value, clusters_from_value, hash_key, priority, Health, LbTable, Outcome, Rng};
use serde_json::{json, Value};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

const POLICIES: [&str; 5] = ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV"];
const HEALTH: [&str; 6] = ["UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED"];

fn cluster(inp: &mut Input<'_>) -> Option<Value> {
    let policy = POLICIES[usize::from(inp.byte()?) % POLICIES.len()];
    let flags = inp.byte()?;
    let n = usize::from(inp.byte()? % 25);
    let mut groups: Vec<Vec<Value>> = vec![Vec::new(); 6];
    for i in 0..n {
        let w = u32::from(inp.byte()? % 8) + 1;
        let pl = inp.byte()?;
        let h = HEALTH[usize::from(inp.byte()?) % HEALTH.len()];
        // Addresses collide on purpose (i % 20): duplicates must be rejected.
        let ip = format!("10.0.{}.{}", pl % 3, (i * 7 + usize::from(pl)) % 20);
        groups[usize::from(pl % 6)].push(json!({
            "endpoint": {"address": {"socket_address": {"address": ip, "port_value": 80}}},
            "load_balancing_weight": w, "health_status": h}));
    }
    let endpoints: Vec<Value> = groups
        .into_iter()
        .enumerate()
        .filter(|(_, eps)| !eps.is_empty())
        .map(|(g, eps)| {
            json!({"priority": g / 2, "locality": {"zone": format!("z{}", g % 2)},
                   "load_balancing_weight": (g % 3), "lb_endpoints": eps})
        })
        .collect();
    let mut c = json!({"name": "c", "lb_policy": policy, "load_assignment": {"endpoints": endpoints}});
    if flags & 1 != 0 {
        c["common_lb_config"] = json!({"locality_weighted_lb_config": {}});
    }
    if flags & 2 != 0 {
        c["common_lb_config"]["healthy_panic_threshold"] = json!({"value": f64::from(flags >> 4) * 7.0});
    }
    if flags & 4 != 0 {
        c["outlier_detection"] =
            json!({"consecutive_5xx": 2, "interval": "1s", "base_ejection_time": "2s", "max_ejection_percent": 50});
    }
    if policy == "MAGLEV" {
        c["maglev_lb_config"] = json!({"table_size": 251});
    }
    Some(c)
}

fn check(t: &LbTable, now: u64, rng: &mut Rng) {
    let Some(c) = t.cluster("c") else { return };
    let snap = c.snapshot();
    let l = snap.priority_load();
    assert_eq!(l.healthy.iter().sum::<u32>() + l.degraded.iter().sum::<u32>(), 100, "{l:?}");
    let cfg = &snap.spec().config;
    let recomputed = priority::compute(snap.priority_counts(), cfg.overprovisioning_factor, cfg.panic_threshold);
    assert_eq!(&recomputed, l);
    for (i, _) in snap.endpoints().iter().enumerate() {
        if c.state(i).is_ejected() {
            assert_eq!(snap.health(i), Health::Unhealthy, "ejected endpoint {i} healthy in the snapshot at {now}");
        }
    }
    for k in 0..4u8 {
        let h = hash_key(&[k]);
        if let Some(i) = snap.pick(Some(h), rng) {
            let e = &snap.endpoints()[i];
            assert!(
                snap.health(i) != Health::Unhealthy || l.panic[e.priority as usize],
                "unhealthy endpoint {} picked outside panic",
                e.address
            );
            if snap.policy().is_hashing() {
                assert_eq!(snap.pick(Some(h), rng), Some(i), "hash key answered differently");
                assert_eq!(t.pick("c", Some(h), rng), Ok(Some(e.address)), "by-name pick read a stale snapshot");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let t = LbTable::new(Some(1), None);
    let mut rng = Rng::new(2);
    let mut now = 0u64;
    let mut steps = 0;
    while let Some(op) = inp.byte() {
        steps += 1;
        if steps > 200 {
            break;
        }
        match op % 7 {
            0 => {
                let Some(c) = cluster(&mut inp) else { break };
                // Invalid input (duplicates) is rejected; the table stays.
                let before = t.generation();
                match clusters_from_value(&json!([c]), "fuzz") {
                    Ok(specs) => {
                        t.set_clusters(specs, now);
                    }
                    Err(_) => assert_eq!(t.generation(), before),
                }
            }
            1 => {
                let (Some(i), Some(ok)) = (inp.byte(), inp.byte()) else { break };
                if let Some(c) = t.cluster("c") {
                    let n = c.spec().endpoints.len();
                    if n > 0 {
                        c.set_health_check(usize::from(i) % n, ok & 1 == 0, now);
                    }
                }
            }
            2 => {
                let Some(k) = inp.byte() else { break };
                let hash = (k & 1 == 0).then(|| hash_key(&[k]));
                let _ = t.pick("c", hash, &mut rng);
            }
            3 => {
                let (Some(i), Some(o)) = (inp.byte(), inp.byte()) else { break };
                if let Some(c) = t.cluster("c") {
                    let n = c.spec().endpoints.len();
                    if n > 0 {
                        let outcome = match o % 5 {
                            0 => Outcome::Http(200),
                            1 => Outcome::Http(500),
                            2 => Outcome::Http(503),
                            3 => Outcome::ConnectFailure,
                            _ => Outcome::Timeout,
                        };
                        c.report(usize::from(i) % n, outcome, o & 0x80 != 0, now);
                    }
                }
            }
            4 => {
                let Some(i) = inp.byte() else { break };
                if let Some(c) = t.cluster("c") {
                    let n = c.spec().endpoints.len();
                    if n > 0 {
                        c.state(usize::from(i) % n).request_started();
                    }
                }
            }
            5 => {
                let (Some(flags), Some(c)) = (inp.byte(), cluster(&mut inp)) else { break };
                let Some(old) = t.cluster("c") else { continue };
                let mut a = c["load_assignment"].clone();
                a["cluster_name"] = json!(if flags & 1 == 0 { "c" } else { "other" });
                if flags & 2 != 0 {
                    a["policy"] = json!({"overprovisioning_factor": 100 + u32::from(flags >> 2)});
                }
                let before = t.generation();
                match assignments_from_value(&a, "fuzz").map(|a| t.set_assignments(a, now)) {
                    Ok(Ok(_)) => {
                        let new = t.cluster("c").expect("still there");
                        assert_eq!(new.spec().config.policy, old.spec().config.policy);
                        assert_eq!(new.spec().config.outlier, old.spec().config.outlier);
                        for (j, e) in old.spec().endpoints.iter().enumerate() {
                            if let Some(k) = new.endpoint_index(&e.address) {
                                assert!(std::sync::Arc::ptr_eq(old.state(j), new.state(k)), "state of {}", e.address);
                            }
                        }
                    }
                    _ => {
                        assert_eq!(t.generation(), before, "a rejected update changed the table");
                        assert!(std::sync::Arc::ptr_eq(&old, &t.cluster("c").expect("still there")));
                    }
                }
            }
            _ => {
                let Some(dt) = inp.byte() else { break };
                now += u64::from(dt) * 100;
                t.tick(now);
            }
        }
        check(&t, now, &mut rng);
    }
});

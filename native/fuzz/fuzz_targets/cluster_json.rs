//! Arbitrary bytes through `serde_json` into the xDS parsers, as a
//! control plane's CDS/EDS push reaches them (ztunnel fuzzes its xDS
//! conversion the same way, `fuzz/fuzz_targets/protobuf.rs`): any JSON
//! document into the `Cluster` parser (`clusters_from_value`) and the EDS
//! parser (`assignments_from_value`).
//!
//! Checks: a document is accepted or refused with an error that is an
//! invalid entry or a parse error, never a panic; parsing is deterministic;
//! an accepted document has named, distinct clusters whose endpoints point
//! at their own locality groups, with distinct addresses, priorities within
//! Envoy's limit and weights of at least 1; loaded into a table, every
//! cluster's priority loads add up to 100 and a pick lands on one of its
//! own endpoints; an accepted EDS document names distinct clusters.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pymesh_core::error::ErrorKind;
use pymesh_core::lb::{assignments_from_value, clusters_from_value, LbTable, Policy, Rng, MAX_PRIORITY};
use serde_json::Value;

/// Table sizes above these are valid but slow to build; such inputs are
/// only parsed, so the fuzzer keeps its pace.
const MAX_MAGLEV: u64 = 65_537;
const MAX_RING: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<Value>(data) else { return };
    let specs = match clusters_from_value(&doc, "fuzz") {
        Ok(specs) => specs,
        Err(e) => {
            assert!(matches!(e.kind(), ErrorKind::InvalidEntry | ErrorKind::Parse), "{e:?}");
            assert!(!e.to_string().is_empty());
            check_assignments(&doc);
            return;
        }
    };
    assert_eq!(clusters_from_value(&doc, "fuzz").ok().as_ref(), Some(&specs), "parsing is deterministic");
    let mut names = std::collections::HashSet::new();
    for s in &specs {
        assert!(!s.name.is_empty());
        assert!(names.insert(s.name.as_str()), "cluster {} twice", s.name);
        let mut addrs = std::collections::HashSet::new();
        for e in &s.endpoints {
            assert!((e.group as usize) < s.groups.len(), "{e:?}");
            assert_eq!(e.priority, s.groups[e.group as usize].priority);
            assert!(e.priority <= MAX_PRIORITY && e.weight >= 1 && e.address.port() != 0, "{e:?}");
            assert!(addrs.insert(e.address), "endpoint {} twice", e.address);
        }
    }
    let cheap = specs.iter().all(|s| {
        let c = &s.config;
        !(c.policy == Policy::Maglev && c.maglev_table_size > MAX_MAGLEV)
            && !(c.policy == Policy::RingHash && c.ring_hash.minimum_ring_size > MAX_RING)
    });
    if cheap {
        let table = LbTable::new(Some(7), None);
        table.set_clusters(specs.clone(), 0);
        let mut rng = Rng::new(1);
        for s in &specs {
            let c = table.cluster(&s.name).expect("a loaded cluster is in the table");
            let snap = c.snapshot();
            if !snap.endpoints().is_empty() {
                let l = snap.priority_load();
                assert_eq!(l.healthy.iter().sum::<u32>() + l.degraded.iter().sum::<u32>(), 100, "{l:?}");
            }
            for hash in [None, Some(0x9e37_79b9_7f4a_7c15)] {
                if let Some(i) = snap.pick(hash, &mut rng) {
                    assert!(i < snap.endpoints().len());
                }
            }
        }
    }
    check_assignments(&doc);
});

/// The same document as EDS: refused with an entry or parse error, or
/// assignments for distinct, named clusters.
fn check_assignments(doc: &Value) {
    match assignments_from_value(doc, "fuzz") {
        Ok(list) => {
            let mut names = std::collections::HashSet::new();
            for a in &list {
                assert!(!a.cluster.is_empty() && names.insert(a.cluster.as_str()), "{}", a.cluster);
                for e in &a.endpoints {
                    assert!((e.group as usize) < a.groups.len(), "{e:?}");
                }
            }
        }
        Err(e) => assert!(matches!(e.kind(), ErrorKind::InvalidEntry | ErrorKind::Parse), "{e:?}"),
    }
}

//! Unit tests of the name table internals; the rules themselves are covered
//! by the shared conformance cases (`tests/cases/names.cases`).

use std::sync::Arc;

use super::*;

fn cfg(ns: &str, search: &[&str]) -> NameConfig {
    NameConfig { namespace: ns.into(), search: search.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn canonical(t: &NameTable, q: &str) -> Option<String> {
    t.lookup_with(q.as_bytes(), |h| h.map(|h| h.canonical.to_string()))
}

#[test]
fn many_services_all_forms_resolve() {
    let entries: Vec<NameEntry> = (0..5000)
        .map(|i| {
            let ns = format!("ns-{}", i % 7);
            NameEntry::kubernetes(
                format!("svc-{i}.{ns}.svc.cluster.local"),
                format!("svc-{i}"),
                ns,
                [format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)],
            )
        })
        .collect();
    let t = NameTable::build(&entries, &cfg("ns-3", &["ns-3.svc.cluster.local"])).unwrap();
    assert_eq!(t.len(), 5000);
    for i in 0..5000 {
        let ns = i % 7;
        let fqdn = format!("svc-{i}.ns-{ns}.svc.cluster.local");
        assert_eq!(canonical(&t, &fqdn).as_deref(), Some(fqdn.as_str()));
        assert_eq!(canonical(&t, &format!("svc-{i}.ns-{ns}")).as_deref(), Some(fqdn.as_str()));
        assert_eq!(canonical(&t, &format!("svc-{i}.ns-{ns}.svc")).as_deref(), Some(fqdn.as_str()));
        let bare = canonical(&t, &format!("svc-{i}"));
        assert_eq!(bare.is_some(), ns == 3, "bare svc-{i}");
        assert_eq!(canonical(&t, &format!("svc-{i}.ns-{ns}.ns-3.svc.cluster.local")).as_deref(), Some(fqdn.as_str()));
    }
    assert_eq!(canonical(&t, "svc-5000.ns-1"), None);
}

#[test]
fn entry_views_round_trip_the_input() {
    let mut e = NameEntry::kubernetes("a.b.svc.cluster.local", "a", "b", ["10.0.0.1", "fd00::1"]);
    e.alt_hosts.push("z.example".into());
    let odd = NameEntry {
        shortname: "odd".into(),
        namespace: "x".into(),
        registry: "External".into(),
        ..NameEntry::new("odd.example", ["10.0.0.2"])
    };
    let t = NameTable::build(&[e, odd], &NameConfig::default()).unwrap();
    let views: Vec<_> = t.entries().collect();
    assert_eq!(views[0].hostname, "a.b.svc.cluster.local");
    assert_eq!((views[0].shortname, views[0].namespace, views[0].registry), ("a", "b", "Kubernetes"));
    assert_eq!(views[0].ipv6.len(), 1);
    assert_eq!((views[1].shortname, views[1].namespace, views[1].registry), ("odd", "x", "External"));
}

#[test]
fn duplicate_identical_hostnames_are_rejected() {
    let e = NameEntry::new("x.example", ["10.0.0.1"]);
    let err = NameTable::build(&[e.clone(), e], &NameConfig::default()).unwrap_err();
    assert!(err.to_string().contains("duplicate"), "{err}");
}

#[test]
fn live_table_swaps_without_blocking_readers() {
    let live = Arc::new(LiveNameTable::new());
    assert!(live.load().is_none());
    let build = |n: usize, ip: &str| {
        let entries: Vec<NameEntry> = (0..n).map(|i| NameEntry::new(format!("h{i}.example"), [ip])).collect();
        Arc::new(NameTable::build(&entries, &NameConfig::default()).unwrap())
    };
    live.store(build(100, "10.0.0.1"));
    let reader = {
        let live = live.clone();
        std::thread::spawn(move || {
            // Every answer comes from one whole table: h0 and h99 always agree.
            for _ in 0..20_000 {
                let snap = live.load();
                let t = snap.as_ref().unwrap();
                let a = t.lookup_with(b"h0.example", |h| h.unwrap().ipv4[0]);
                let b = t.lookup_with(b"h99.example", |h| h.unwrap().ipv4[0]);
                assert_eq!(a, b);
            }
        })
    };
    for g in 0..50 {
        live.store(build(100, &format!("10.0.1.{g}")));
    }
    reader.join().unwrap();
    assert_eq!(live.generation(), 51);
}

#[test]
fn memory_per_entry_is_small() {
    let entries: Vec<NameEntry> = (0..10_000)
        .map(|i| {
            NameEntry::kubernetes(
                format!("svc-{i}.ns-{}.svc.cluster.local", i % 100),
                format!("svc-{i}"),
                format!("ns-{}", i % 100),
                ["10.0.0.1"],
            )
        })
        .collect();
    let t = NameTable::build(&entries, &cfg("ns-0", &[])).unwrap();
    let (total, names) = t.heap_bytes();
    let per_entry = (total - names) / t.len();
    // Slots for ~3 keys at <= 2/3 load, a 24-byte record and one IPv4 address.
    assert!(per_entry < 100, "{per_entry} bytes per entry beyond names");
}

#[test]
fn lookup_batch_answers_as_single_lookups_in_order() {
    // More names than one batch, every kind of query: each form, a search
    // expansion, a wildcard, a miss, and entries with 0, 1 and 2 addresses
    // of a family (one address lives in the record, several in the arrays).
    let mut entries: Vec<NameEntry> = (0..100)
        .map(|i| {
            let ns = format!("ns-{}", i % 3);
            let mut ips = vec![format!("10.0.0.{i}")];
            if i % 4 == 0 {
                ips.push(format!("fd00::{i:x}"));
            }
            if i % 5 == 0 {
                ips.push(format!("10.0.1.{i}"));
                ips.push(format!("fd00::1:{i:x}"));
            }
            NameEntry::kubernetes(format!("svc-{i}.{ns}.svc.cluster.local"), format!("svc-{i}"), ns, ips)
        })
        .collect();
    entries.push(NameEntry { hostname: "*.wild.example".into(), ips: vec!["fd00::99".into()], ..NameEntry::default() });
    let t = NameTable::build(&entries, &cfg("ns-1", &["ns-1.svc.cluster.local", "svc.cluster.local"])).unwrap();
    let mut names = Vec::new();
    for i in 0..110 {
        let ns = i % 3;
        for q in [
            format!("svc-{i}.ns-{ns}.svc.cluster.local"),
            format!("SVC-{i}.ns-{ns}."),
            format!("svc-{i}"),
            format!("svc-{i}.ns-{ns}.ns-1.svc.cluster.local"),
            format!("a{i}.wild.example"),
        ] {
            names.push(QueryName::new(q.as_bytes()).unwrap());
        }
    }
    let mut seen = 0;
    let mut hits = 0;
    t.lookup_batch(&names, |i, hit| {
        assert_eq!(i, seen);
        seen += 1;
        let one = t.lookup(&names[i]);
        let view =
            |h: &Hit<'_>| (h.canonical.to_string(), h.form, h.search_index, h.entry, h.ipv4.to_vec(), h.ipv6.to_vec());
        assert_eq!(hit.as_ref().map(view), one.as_ref().map(view), "{:?}", names[i]);
        hits += usize::from(hit.is_some());
    });
    assert_eq!(seen, names.len());
    // 100 services: 4 forms each except the bare name outside ns-1, and 110
    // wildcard names; the 10 services past the table miss everywhere.
    assert_eq!(hits, 100 * 3 + 33 + 110);
    let multi = t.lookup_with(b"svc-20.ns-2.svc.cluster.local", |h| h.map(|h| (h.ipv4.len(), h.ipv6.len())));
    assert_eq!(multi, Some((2, 2)));
}

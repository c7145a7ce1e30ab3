//! The shared lbtable conformance cases (`tests/cases/lb.cases`) through the
//! Rust core. The Python (`tests/conformance/test_lb_conformance.py`) and C
//! (`tests/c/lb_conformance.c`) drivers run the same list.

use pymesh_core::lb::{assignments_from_value, clusters_from_value, LbTable, RedirectTable, Rng, Verdict};
use serde_json::Value;

struct Case {
    name: String,
    line: usize,
    clusters: Option<Value>,
    redirect: Option<Value>,
    checks: Vec<(usize, String)>,
}

fn cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/cases/lb.cases");
    let text = std::fs::read_to_string(path).expect("tests/cases/lb.cases");
    let mut out: Vec<Case> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "case" => out.push(Case { name: rest.into(), line: n, clusters: None, redirect: None, checks: vec![] }),
            "clusters" => out.last_mut().unwrap().clusters = Some(serde_json::from_str(rest).expect("clusters JSON")),
            "redirect" => out.last_mut().unwrap().redirect = Some(serde_json::from_str(rest).expect("redirect JSON")),
            "load" | "pick" | "error" | "classify" | "assign" => {
                out.last_mut().unwrap().checks.push((n, line.to_owned()))
            }
            other => panic!("lb.cases:{n}: unknown directive {other:?}"),
        }
    }
    out
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').map(|x| x.parse().ok().expect("number")).collect()
}

#[test]
fn lb_cases() {
    let all = cases();
    assert!(all.len() >= 20, "only {} cases", all.len());
    for case in all {
        let ctx = format!("case {:?} (lb.cases:{})", case.name, case.line);
        if let Some((_, e)) = case.checks.iter().find(|(_, l)| l.starts_with("error ")) {
            let want = &e["error ".len()..];
            let err = match (&case.clusters, &case.redirect) {
                (Some(c), _) => clusters_from_value(c, "cases").err(),
                (None, Some(r)) => RedirectTable::from_value(r).err(),
                _ => panic!("{ctx}: nothing to load"),
            };
            let msg = err.unwrap_or_else(|| panic!("{ctx}: expected an error")).to_string();
            assert!(msg.contains(want), "{ctx}: {msg:?} lacks {want:?}");
            continue;
        }
        let table = case.clusters.as_ref().map(|c| {
            let t = LbTable::new(Some(1), None);
            t.set_clusters(clusters_from_value(c, "cases").unwrap_or_else(|e| panic!("{ctx}: {e}")), 0);
            t
        });
        let redirect =
            case.redirect.as_ref().map(|r| RedirectTable::from_value(r).unwrap_or_else(|e| panic!("{ctx}: {e}")));
        for (n, line) in &case.checks {
            if let Some(json) = line.strip_prefix("assign ") {
                let v: Value = serde_json::from_str(json).expect("assign JSON");
                let a = assignments_from_value(&v, "cases").unwrap_or_else(|e| panic!("lb.cases:{n}: {e}"));
                table.as_ref().unwrap().set_assignments(a, 0).unwrap_or_else(|e| panic!("lb.cases:{n}: {e}"));
                continue;
            }
            let (lhs, rhs) = line.split_once(" -> ").unwrap_or_else(|| panic!("lb.cases:{n}: no ->"));
            let words: Vec<&str> = lhs.split_whitespace().collect();
            match words[0] {
                "load" => {
                    let snap = table.as_ref().unwrap().cluster(words[1]).unwrap().snapshot();
                    let l = snap.priority_load();
                    let parts: Vec<&str> = rhs.split_whitespace().collect();
                    assert_eq!(l.healthy, list::<u32>(parts[1]), "lb.cases:{n}");
                    assert_eq!(l.degraded, list::<u32>(parts[3]), "lb.cases:{n}");
                    let panic: Vec<bool> = parts[5].split(',').map(|x| x == "yes").collect();
                    assert_eq!(l.panic, panic, "lb.cases:{n}");
                }
                "pick" => {
                    let h = words.get(2).map(|k| pymesh_core::lb::hash_key(k.as_bytes()));
                    let got = table.as_ref().unwrap().pick(words[1], h, &mut Rng::new(1)).expect("cluster");
                    assert_eq!(got.map_or("none".to_string(), |a| a.to_string()), rhs, "lb.cases:{n}");
                }
                "classify" => {
                    let r = redirect.as_ref().unwrap();
                    let v = r.classify(words[1].parse().unwrap(), words[2].parse().unwrap());
                    let got = match v {
                        Verdict::Cluster(_) => format!("cluster {}", r.cluster_name(v).unwrap()),
                        Verdict::Passthrough => "passthrough".into(),
                        Verdict::Bypass => "bypass".into(),
                    };
                    assert_eq!(got, rhs, "lb.cases:{n}");
                }
                other => panic!("lb.cases:{n}: {other}"),
            }
        }
    }
}

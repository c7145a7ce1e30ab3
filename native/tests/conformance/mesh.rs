//! Rust driver of the shared Istio-convention cases (`tests/cases/mesh.cases`,
//! format in its header; the Python driver,
//! `tests/conformance/test_mesh_conformance.py`, reads the same file) over
//! `pymesh_core::mesh`.

use pymesh_core::mesh::{self, alpn, metadata, ClusterName, Direction};

/// `-` stands for an empty subset.
fn subset(token: &str) -> &str {
    if token == "-" {
        ""
    } else {
        token
    }
}

fn show_subset(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn show_cluster(c: Option<ClusterName<'_>>) -> String {
    match c {
        None => "invalid".into(),
        Some(c) => format!("{} {} {} {}", c.direction, c.port, show_subset(c.subset), c.host),
    }
}

/// DIRECTION PORT SUBSET HOST as typed arguments.
fn parts<'a>(args: &[&'a str]) -> Result<(Direction, u16, &'a str, &'a str), String> {
    let [d, p, s, h] = args else { return Err(format!("expected DIRECTION PORT SUBSET HOST, got {args:?}")) };
    let d = Direction::from_name(d).ok_or_else(|| format!("bad direction {d:?}"))?;
    let p: u16 = p.parse().map_err(|_| format!("bad port {p:?}"))?;
    Ok((d, p, subset(s), h))
}

fn one<'a>(args: &[&'a str]) -> Result<&'a str, String> {
    match args {
        [a] => Ok(a),
        _ => Err(format!("expected one argument, got {args:?}")),
    }
}

/// What the core gives for the left-hand side of a case, as the
/// right-hand side's tokens joined by single spaces.
fn run(directive: &str, args: &[&str]) -> Result<String, String> {
    Ok(match directive {
        "cluster" => show_cluster(mesh::parse_cluster_name(one(args)?)),
        "parse-sni" => show_cluster(mesh::parse_sni(one(args)?)),
        "build-cluster" => {
            let (d, p, s, h) = parts(args)?;
            mesh::cluster_name(d, p, s, h)
        }
        "sni" => {
            let (d, p, s, h) = parts(args)?;
            mesh::sni(d, p, s, h)
        }
        "spiffe" => {
            let [td, ns, sa] = args else { return Err(format!("expected TD NS SA, got {args:?}")) };
            mesh::spiffe_uri(td, ns, sa)
        }
        "parse-spiffe" => match mesh::parse_spiffe(one(args)?) {
            None => "invalid".into(),
            Some(id) => format!("{} {} {}", id.trust_domain, id.namespace, id.service_account),
        },
        "alpn" => {
            let list: &[&str] = match one(args)? {
                "outbound-tcp" => &alpn::OUTBOUND_TCP,
                "inbound" => &alpn::INBOUND,
                "http-h2" => &alpn::HTTP_H2,
                "http-1.1" => &alpn::HTTP_11,
                "http-1.0" => &alpn::HTTP_10,
                other => return Err(format!("unknown ALPN list {other:?}")),
            };
            list.join(" ")
        }
        "metadata" => {
            let k = match one(args)? {
                "service-account" => metadata::SERVICE_ACCOUNT,
                "workload" => metadata::WORKLOAD,
                "tls-mode" => metadata::TLS_MODE,
                other => return Err(format!("unknown metadata key {other:?}")),
            };
            format!("{} {}", k.filter, k.key)
        }
        other => return Err(format!("unknown directive {other:?}")),
    })
}

#[test]
fn mesh_conformance() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/cases/mesh.cases");
    let text = std::fs::read_to_string(path).expect("tests/cases/mesh.cases");
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut checked = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((lhs, want)) = line.split_once(" -> ") else {
            failures.push(format!("mesh.cases:{n}: no \" -> \" in {line:?}"));
            continue;
        };
        let mut tokens = lhs.split(' ');
        let directive = tokens.next().unwrap_or_default();
        let args: Vec<&str> = tokens.collect();
        *seen.entry(directive.to_owned()).or_default() += 1;
        checked += 1;
        match run(directive, &args) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!("mesh.cases:{n}: {lhs}: want {want:?}, got {got:?}")),
            Err(e) => failures.push(format!("mesh.cases:{n}: {e}")),
        }
    }
    assert!(checked >= 40, "cases file looks truncated: {checked} cases");
    for d in ["cluster", "build-cluster", "sni", "parse-sni", "spiffe", "parse-spiffe", "alpn", "metadata"] {
        assert!(seen.contains_key(d), "no {d} case");
    }
    assert!(failures.is_empty(), "{} of {checked} cases failed:\n{}", failures.len(), failures.join("\n"));
}

//! Rust driver of the shared name table conformance cases
//! (`tests/cases/names.cases`; the Python and C drivers read the same file).

use pymesh_core::names::{parse_document, Format, NameConfig, NameTable};

struct Case {
    title: String,
    config: NameConfig,
    table: String,
    expects: Vec<String>,
    error: Option<String>,
}

fn parse_cases(text: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (directive, rest) = line.split_once(' ').unwrap_or((line, ""));
        if directive == "case" {
            cases.push(Case {
                title: rest.to_string(),
                config: NameConfig::default(),
                table: String::new(),
                expects: Vec::new(),
                error: None,
            });
            continue;
        }
        let case = cases.last_mut().expect("directive before the first case");
        match directive {
            "config" => {
                for kv in rest.split_whitespace() {
                    let (k, v) = kv.split_once('=').expect("config KEY=VALUE");
                    match k {
                        "namespace" => case.config.namespace = v.to_string(),
                        "domain" => case.config.domain = v.to_string(),
                        "search" => case.config.search = v.split(',').map(str::to_string).collect(),
                        _ => panic!("unknown config key {k}"),
                    }
                }
            }
            "table" => case.table = rest.to_string(),
            "expect" => case.expects.push(rest.to_string()),
            "error" => case.error = Some(rest.to_string()),
            _ => panic!("unknown directive {directive}"),
        }
    }
    cases
}

fn check_expect(table: &NameTable, expect: &str) -> Result<(), String> {
    let (lhs, rhs) = expect.split_once(" -> ").ok_or("expect needs ' -> '")?;
    let (query, qtype) = lhs.split_once(' ').ok_or("expect QUERY TYPE")?;
    let want: Vec<&str> = rhs.split_whitespace().collect();
    table.lookup_with(query.as_bytes(), |hit| {
        let got: Vec<String> = match hit {
            None => vec!["unknown".into()],
            Some(h) => {
                let mut form = h.form.as_str().to_string();
                if let Some(i) = h.search_index {
                    form = format!("{form}@{i}");
                }
                let mut v = vec![h.canonical.to_string(), form];
                match qtype {
                    "A" => v.extend(h.ipv4.iter().map(|a| a.to_string())),
                    "AAAA" => v.extend(h.ipv6.iter().map(|a| a.to_string())),
                    t => return Err(format!("unknown type {t}")),
                }
                v
            }
        };
        if got == want {
            Ok(())
        } else {
            Err(format!("{query} {qtype}: want {want:?}, got {got:?}"))
        }
    })
}

#[test]
fn name_table_conformance() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/cases/names.cases");
    let cases = parse_cases(&std::fs::read_to_string(path).unwrap());
    assert!(cases.len() > 20, "cases file looks truncated");
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases {
        let built =
            parse_document(&case.table, Format::Json, "<case>").and_then(|e| NameTable::build(&e, &case.config));
        match (&case.error, built) {
            (Some(want), Err(e)) => {
                checked += 1;
                if !e.to_string().contains(want.as_str()) {
                    failures.push(format!("[{}] error {:?} lacks {:?}", case.title, e.to_string(), want));
                }
            }
            (Some(_), Ok(_)) => failures.push(format!("[{}] built, expected an error", case.title)),
            (None, Err(e)) => failures.push(format!("[{}] build failed: {e}", case.title)),
            (None, Ok(table)) => {
                for x in &case.expects {
                    checked += 1;
                    if let Err(msg) = check_expect(&table, x) {
                        failures.push(format!("[{}] {msg}", case.title));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} checks failed:\n{}", failures.len(), failures.join("\n"));
}

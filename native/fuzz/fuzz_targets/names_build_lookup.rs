//! Builds a small name table from the fuzz input, then looks up names derived
//! from it and checks what every answer must satisfy.
//!
//! Input (decoded lossily as UTF-8, so any bytes are accepted and invalid
//! ones become U+FFFD, exercising the non-ASCII checks):
//!
//! ```text
//! NAMESPACE [SEARCH,SEARCH,...] [DOMAIN]
//! HOSTNAME|IP,IP,...|REGISTRY|SHORTNAME|NAMESPACE|ALT,ALT,...   (an entry; `k` = Kubernetes)
//! ?QUERY                                                         (an extra query)
//! ```
//!
//! Empty lines are skipped; `|10.0.0.1` is an entry with an empty hostname.
//!
//! A build error is fine (invalid input must be rejected, never panic). After
//! a successful build, for every query:
//! - a hit's canonical name never contains `*` and is a normalised name; for
//!   exact (non-wildcard) hits it is a valid table hostname, the entry's own;
//! - looking the canonical name of a non-wildcard hit up again finds the
//!   same entry;
//! - a hit's addresses are exactly the entry's input addresses of each
//!   family, deduplicated, in input order, and there is at least one;
//! - a search index names a search domain the query really ends with;
//! - a second build of the same input (another hash seed) answers alike.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use pymesh_core::names::{normalize_table_name, Form, Hit, NameConfig, NameEntry, NameTable, QueryName};

const MAX_ENTRIES: usize = 32;
const MAX_QUERIES: usize = 4096;

fn list(field: Option<&str>) -> Vec<String> {
    field.filter(|f| !f.is_empty()).map(|f| f.split(',').map(str::to_string).collect()).unwrap_or_default()
}

fn parse(text: &str) -> (NameConfig, Vec<NameEntry>, Vec<String>) {
    let mut lines = text.split('\n');
    let mut config = NameConfig::default();
    let mut head = lines.next().unwrap_or_default().split(' ');
    config.namespace = head.next().unwrap_or_default().to_string();
    config.search = list(head.next());
    if let Some(domain) = head.next() {
        config.domain = domain.to_string();
    }
    let (mut entries, mut queries) = (Vec::new(), Vec::new());
    for line in lines {
        if let Some(q) = line.strip_prefix('?') {
            queries.push(q.to_string());
            continue;
        }
        if line.is_empty() || entries.len() == MAX_ENTRIES {
            continue;
        }
        let mut f = line.split('|');
        let hostname = f.next().unwrap_or_default().to_string();
        let ips = list(f.next());
        let registry = match f.next().unwrap_or_default() {
            "k" => "Kubernetes".to_string(),
            other => other.to_string(),
        };
        let shortname = f.next().unwrap_or_default().to_string();
        let namespace = f.next().unwrap_or_default().to_string();
        let alt_hosts = list(f.next());
        entries.push(NameEntry { hostname, ips, registry, shortname, namespace, alt_hosts });
    }
    (config, entries, queries)
}

/// Names worth asking for: every name and form an entry could answer to,
/// one label below it (wildcards), and each of those under each search domain.
fn derive_queries(entries: &[NameEntry], search: &[String], extra: Vec<String>) -> Vec<String> {
    let mut base = extra;
    for e in entries {
        let host = e.hostname.strip_prefix("*.").unwrap_or(&e.hostname);
        base.push(host.to_string());
        base.push(format!("x.{host}"));
        base.push(format!("{}.", host.to_ascii_uppercase()));
        for a in &e.alt_hosts {
            base.push(a.strip_prefix("*.").unwrap_or(a).to_string());
            base.push(format!("y.{}", a.strip_prefix("*.").unwrap_or(a)));
        }
        if !e.shortname.is_empty() {
            base.push(e.shortname.clone());
            base.push(format!("{}.{}", e.shortname, e.namespace));
            base.push(format!("{}.{}.svc", e.shortname, e.namespace));
        }
    }
    let mut out = base.clone();
    for b in &base {
        for s in search {
            out.push(format!("{b}.{s}"));
        }
    }
    out.truncate(MAX_QUERIES);
    out
}

/// The addresses an entry must answer with: each family in input order,
/// duplicates dropped (the build succeeded, so every address parses).
fn expected_addrs(e: &NameEntry) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for ip in &e.ips {
        match ip.trim().parse::<IpAddr>().expect("built table had an unparsable address") {
            IpAddr::V4(a) if !v4.contains(&a) => v4.push(a),
            IpAddr::V6(a) if !v6.contains(&a) => v6.push(a),
            _ => {}
        }
    }
    (v4, v6)
}

/// An answer without the borrowed parts, to compare two tables' answers.
fn key(h: &Hit<'_>) -> (String, Form, Option<usize>, usize) {
    (h.canonical.to_string(), h.form, h.search_index, h.entry)
}

fn check(table: &NameTable, again: &NameTable, included: &[&NameEntry], query: &str) {
    let Some(q) = QueryName::new(query.as_bytes()) else { return };
    let hit = table.lookup(&q);
    let other = again.lookup(&q);
    assert_eq!(hit.as_ref().map(key), other.as_ref().map(key), "{query:?}: two builds of one input disagree");
    let Some(h) = hit else { return };
    let canonical = h.canonical;
    assert!(!canonical.contains('*'), "{query:?}: canonical {canonical:?} has a '*'");
    let renormalised = QueryName::new(canonical.as_bytes()).map(|n| n.as_str().to_string());
    assert_eq!(renormalised.as_deref(), Some(canonical), "{query:?}: canonical {canonical:?} is not a normalised name");

    let e = included.get(h.entry).unwrap_or_else(|| panic!("{query:?}: entry {} out of range", h.entry));
    let (v4, v6) = expected_addrs(e);
    assert!(!v4.is_empty() || !v6.is_empty(), "{query:?}: answered from an entry without addresses");
    assert_eq!((h.ipv4, h.ipv6), (&v4[..], &v6[..]), "{query:?}: addresses differ from the entry's input");

    if let Some(i) = h.search_index {
        let domain = table.search().get(i).unwrap_or_else(|| panic!("{query:?}: search index {i} out of range"));
        assert!(q.as_str().ends_with(&format!(".{domain}")), "{query:?}: search index {i} ({domain}) does not match");
    }

    let stripped = match h.search_index {
        None => q.as_str().to_string(),
        Some(i) => q.as_str().strip_suffix(&format!(".{}", table.search()[i])).unwrap_or_default().to_string(),
    };
    if h.form == Form::Wildcard || e.hostname.trim_start().starts_with("*.") {
        // Wildcards, and alt hosts of wildcard entries, answer with the
        // (search-stripped) query name itself: never a literal '*'.
        assert_eq!(canonical, stripped, "{query:?}: wildcard canonical is not the query");
        return;
    }
    let own = normalize_table_name(&e.hostname, true).expect("built table had an invalid hostname");
    assert_eq!(canonical, own, "{query:?}: canonical is not the entry's hostname");
    assert_eq!(normalize_table_name(canonical, false).as_deref(), Ok(canonical), "{query:?}: invalid canonical");
    let back = QueryName::new(canonical.as_bytes()).expect("canonical normalises");
    let again_hit = table.lookup(&back).map(|b| (b.entry, b.canonical.to_string(), b.form));
    assert_eq!(
        again_hit.as_ref().map(|b| b.0),
        Some(h.entry),
        "{query:?} -> {canonical:?} (entry {}, {:?}), but {canonical:?} -> {again_hit:?}",
        h.entry,
        h.form
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (config, entries, extra) = parse(&text);
    let Ok(table) = NameTable::build(&entries, &config) else { return };
    let again = NameTable::build(&entries, &config).expect("second build of a valid input failed");
    // Entries without addresses are left out, and so is every entry but the
    // best (Kubernetes first, then hostname as given) of those spelling one
    // hostname; entry indices count the rest, in input order.
    let with_addrs: Vec<&NameEntry> =
        entries.iter().filter(|e| e.ips.iter().any(|ip| ip.trim().parse::<IpAddr>().is_ok())).collect();
    let host = |e: &NameEntry| normalize_table_name(&e.hostname, true).expect("built table had an invalid hostname");
    let rank = |e: &NameEntry| (u8::from(e.registry != "Kubernetes"), e.hostname.clone());
    let included: Vec<&NameEntry> = with_addrs
        .iter()
        .filter(|e| with_addrs.iter().filter(|o| host(o) == host(e)).all(|o| rank(e) <= rank(o)))
        .copied()
        .collect();
    assert_eq!(table.len(), included.len());
    assert_eq!(table.skipped(), entries.len() - included.len());
    let queries = derive_queries(&entries, table.search(), extra);
    for query in &queries {
        check(&table, &again, &included, query);
    }
    // The batched lookup answers exactly as one lookup per name, in order.
    let names: Vec<QueryName> = queries.iter().filter_map(|q| QueryName::new(q.as_bytes())).collect();
    let mut next = 0;
    table.lookup_batch(&names, |i, hit| {
        assert_eq!(i, next, "lookup_batch out of order");
        next += 1;
        let one = table.lookup(&names[i]);
        let addrs = |h: &Hit<'_>| (h.ipv4.to_vec(), h.ipv6.to_vec());
        assert_eq!(hit.as_ref().map(key), one.as_ref().map(key), "{:?}: batch and single lookup differ", names[i]);
        assert_eq!(hit.as_ref().map(addrs), one.as_ref().map(addrs), "{:?}: batch addresses differ", names[i]);
    });
    assert_eq!(next, names.len(), "lookup_batch skipped names");
});

//! The immutable name table: built once from entries, then only read.
//!
//! Lookup rules (see ARCHITECTURE.md, "Name table"):
//! - forms of an entry: its hostname and `alt_hosts`; for a Kubernetes
//!   service of the cluster domain also `name.namespace.svc`, `name.namespace`,
//!   and the bare `name` when the service is in the proxy's own namespace;
//! - wildcard hosts `*.d` match any name below `d`, the most specific wins;
//! - a query `X.s`, with `s` any search-list domain, answers as `X` does
//!   (Istio handles only the first search domain, via CNAMEs to names other
//!   resolvers cannot resolve: istio/istio#35421, #57276);
//! - order: exact forms of the full name, then of each search-stripped name
//!   in search-list order, then wildcards likewise. An exact name always
//!   beats a wildcard;
//! - one entry per hostname: of entries spelling the same name (letter case,
//!   trailing dot), the Kubernetes one, else the smallest as given, is kept
//!   and the others are left out whole (istiod: a Service beats a
//!   ServiceEntry decorating its host);
//! - collisions (two entries claiming one name) go to the best of: stronger
//!   form (hostname > alt host > `name.ns.svc` > `name.ns` > `name`),
//!   Kubernetes registry before others, smaller canonical hostname, smaller
//!   hostname as given. Istio's result depends on Go map order; this never does;
//! - an alt host of a wildcard entry answers under the queried name, like a
//!   wildcard match: no answer ever carries a literal `*`.
//!
//! Layout (ARCHITECTURE.md, "Tables"): names in one arena, a 32-byte record
//! per entry with its single address of each family inline (see `Rec`),
//! address arrays for entries with several, and the hash indexes of
//! `index.rs`. A hit reads an index slot, then the key's bytes and the
//! record side by side: two cache misses in series on a cold table.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::entry::{label, registry_rank, NameConfig, NameEntry, ValidConfig};
use super::hostname::{normalize_table_name, QueryName};
use super::index::{prefetch, Index};
use crate::error::{Error, Result};

/// The form of a name under which a query matched its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Form {
    /// The entry's own hostname.
    Hostname = 0,
    /// One of the entry's `alt_hosts`.
    AltHost = 1,
    /// `name.namespace.svc` of a Kubernetes service.
    NameNamespaceSvc = 2,
    /// `name.namespace` of a Kubernetes service.
    NameNamespace = 3,
    /// Bare `name` of a Kubernetes service in the proxy's namespace.
    ShortName = 4,
    /// Below a wildcard host `*.domain`.
    Wildcard = 5,
}

impl Form {
    pub(crate) fn from_bits(b: u32) -> Form {
        match b {
            0 => Form::Hostname,
            1 => Form::AltHost,
            2 => Form::NameNamespaceSvc,
            3 => Form::NameNamespace,
            4 => Form::ShortName,
            _ => Form::Wildcard,
        }
    }

    /// Collision strength: lower wins.
    fn strength(self) -> u8 {
        match self {
            Form::Hostname | Form::Wildcard => 0,
            Form::AltHost => 1,
            Form::NameNamespaceSvc => 2,
            Form::NameNamespace => 3,
            Form::ShortName => 4,
        }
    }

    /// A stable lower-case name, shared by every interface.
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Hostname => "hostname",
            Form::AltHost => "alt_host",
            Form::NameNamespaceSvc => "name.namespace.svc",
            Form::NameNamespace => "name.namespace",
            Form::ShortName => "name",
            Form::Wildcard => "wildcard",
        }
    }
}

/// Queries [`NameTable::lookup_batch`] has in flight at once: enough to
/// keep the CPU's outstanding-miss slots busy, few enough that the lines
/// prefetched for the first are still cached when it is finished.
const BATCH: usize = 16;

/// One entry in the snapshot: 32 bytes aligned to 32, so a lookup reads it
/// from one cache line. Strings live in the arena.
///
/// An entry with one address of a family (nearly all of them) holds it
/// inline: a hit then reads no address array, whose line would be one more
/// cache miss after the record's (the record is found in parallel with the
/// key's bytes, both from the index slot). An entry with several holds in
/// that field the start of its run in the table's address array instead.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
struct Rec {
    /// The IPv6 address if `n6 == 1`, else the start of the run in `v6`.
    v6: Ipv6Addr,
    /// The IPv4 address if `n4 == 1`, else the start of the run in `v4`.
    v4: Ipv4Addr,
    name_off: u32,
    n4: u16,
    n6: u16,
    name_len: u8,
    registry: u8,
    short_len: u8,
    ns_len: u8,
}

impl Rec {
    /// The field holding the IPv4 address or run start for `n` addresses.
    fn v4_field(addrs: &[Ipv4Addr], run_start: usize) -> Ipv4Addr {
        match addrs {
            [a] => *a,
            _ => Ipv4Addr::from(run_start as u32),
        }
    }

    fn v6_field(addrs: &[Ipv6Addr], run_start: usize) -> Ipv6Addr {
        match addrs {
            [a] => *a,
            _ => Ipv6Addr::from(run_start as u128),
        }
    }
}

/// A successful lookup: the entry's canonical name and addresses, borrowed
/// from the table (and, for wildcard matches, from the query).
#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    /// The canonical hostname: the entry's hostname, or for a wildcard match
    /// the (search-stripped) query name itself, never a literal `*`.
    pub canonical: &'a str,
    /// The form that matched.
    pub form: Form,
    /// Index into the search list of the domain stripped from the query, if any.
    pub search_index: Option<usize>,
    pub ipv4: &'a [Ipv4Addr],
    pub ipv6: &'a [Ipv6Addr],
    /// Position of the entry in iteration order.
    pub entry: usize,
}

/// One entry as seen by iteration.
#[derive(Debug, Clone, Copy)]
pub struct EntryView<'a> {
    pub hostname: &'a str,
    pub registry: &'a str,
    pub shortname: &'a str,
    pub namespace: &'a str,
    pub ipv4: &'a [Ipv4Addr],
    pub ipv6: &'a [Ipv6Addr],
}

/// An immutable name table snapshot. Build with [`NameTable::build`]; share
/// with `Arc` and publish with [`super::LiveNameTable`].
pub struct NameTable {
    config: ValidConfig,
    arena: Box<str>,
    recs: Box<[Rec]>,
    /// Per entry, where `shortname` then `.namespace` start in the arena:
    /// read only by iteration, so kept out of the records.
    meta_offs: Box<[u32]>,
    v4: Box<[Ipv4Addr]>,
    v6: Box<[Ipv6Addr]>,
    registries: Box<[Box<str>]>,
    exact: Index,
    wild: Index,
    skipped: usize,
}

impl std::fmt::Debug for NameTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameTable").field("entries", &self.recs.len()).field("config", &self.config).finish()
    }
}

/// An entry after validation, before it is laid out.
struct Prepared<'e> {
    src: &'e NameEntry,
    hostname: String,
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    shortname: String,
    namespace: String,
    /// Whether the Kubernetes short forms apply.
    k8s_forms: bool,
    alt_hosts: Vec<String>,
}

fn prepare<'e>(i: usize, e: &'e NameEntry, cfg: &ValidConfig) -> Result<Prepared<'e>> {
    let who = || if e.hostname.is_empty() { format!("#{i}") } else { e.hostname.clone() };
    let hostname = normalize_table_name(&e.hostname, true).map_err(|r| Error::entry(who(), "hostname", r))?;
    let wildcard = hostname.starts_with("*.");
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (j, ip) in e.ips.iter().enumerate() {
        match ip.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if !v4.contains(&a) => v4.push(a),
            Ok(IpAddr::V6(a)) if !v6.contains(&a) => v6.push(a),
            Ok(_) => {} // duplicate address: answered once
            Err(_) => {
                return Err(Error::entry(who(), format!("ips[{j}]"), format!("{ip:?} is not an IPv4 or IPv6 address")))
            }
        }
    }
    if v4.len() > u16::MAX as usize || v6.len() > u16::MAX as usize {
        return Err(Error::entry(who(), "ips", "more than 65535 addresses of one family"));
    }
    let shortname = if e.shortname.is_empty() {
        String::new()
    } else {
        normalize_table_name(&e.shortname, false).map_err(|r| Error::entry(who(), "shortname", r))?
    };
    let namespace = if e.namespace.is_empty() {
        String::new()
    } else {
        label(&e.namespace).map_err(|r| Error::entry(who(), "namespace", r))?
    };
    let k8s_forms = e.is_kubernetes()
        && !wildcard
        && !shortname.is_empty()
        && !namespace.is_empty()
        && hostname.ends_with(&cfg.svc_suffix);
    if k8s_forms && shortname.len() + namespace.len() + 5 > 255 {
        return Err(Error::entry(who(), "shortname", "name.namespace.svc would exceed 255 characters"));
    }
    let mut alt_hosts = Vec::with_capacity(e.alt_hosts.len());
    for (j, a) in e.alt_hosts.iter().enumerate() {
        alt_hosts.push(normalize_table_name(a, true).map_err(|r| Error::entry(who(), format!("alt_hosts[{j}]"), r))?);
    }
    Ok(Prepared { src: e, hostname, v4, v6, shortname, namespace, k8s_forms, alt_hosts })
}

/// Whether the hostname starts with `shortname.namespace.svc.`, so the short
/// forms can point into it.
fn forms_inside_hostname(p: &Prepared) -> bool {
    let (h, s, n) = (p.hostname.as_str(), p.shortname.as_str(), p.namespace.as_str());
    let form_len = s.len() + 1 + n.len() + 4;
    h.len() > form_len
        && h.as_bytes()[form_len] == b'.'
        && h.starts_with(s)
        && h[s.len()..].starts_with('.')
        && h[s.len() + 1..].starts_with(n)
        && h[s.len() + 1 + n.len()..].starts_with(".svc")
}

/// Arena bytes an entry needs beyond its hostname and alt hosts for
/// `shortname.namespace.svc`: none when that is the start of the hostname.
fn meta_len(p: &Prepared) -> usize {
    if (p.shortname.is_empty() && p.namespace.is_empty()) || forms_inside_hostname(p) {
        return 0;
    }
    let dot = usize::from(!p.shortname.is_empty() && !p.namespace.is_empty());
    p.shortname.len() + dot + p.namespace.len() + if p.k8s_forms { 4 } else { 0 }
}

/// Which of two entries for one hostname is kept: Kubernetes first, then the
/// smaller hostname as given.
fn host_rank<'p>(p: &'p Prepared) -> (u8, &'p str) {
    (registry_rank(p.src.is_kubernetes()), p.src.hostname.as_str())
}

/// Per-entry rank data used to settle collisions.
struct RankKey<'e> {
    registry: u8,
    original: &'e str,
}

impl NameTable {
    /// Builds a snapshot. Entries without any address are left out (their
    /// names are then forwarded upstream, as in Istio); any invalid entry
    /// fails the whole build with an error naming it, so a table already
    /// serving elsewhere is never replaced by a partial one.
    pub fn build(entries: &[NameEntry], config: &NameConfig) -> Result<NameTable> {
        let cfg = config.validate()?;
        let mut prepared = Vec::with_capacity(entries.len());
        let mut skipped = 0usize;
        let mut keys = 0usize;
        let mut wild_keys = 0usize;
        let mut arena_len = 0usize;
        let mut valid = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let p = prepare(i, e, &cfg)?;
            if p.v4.is_empty() && p.v6.is_empty() {
                skipped += 1;
                continue;
            }
            valid.push(p);
        }
        // One entry per hostname: when several spell the same name (case, a
        // trailing dot), the best by (Kubernetes first, name as given) is kept
        // whole and the others are left out whole, so every name an entry
        // answers for leads back to that same entry.
        let mut winner: HashMap<&str, usize> = HashMap::with_capacity(valid.len());
        let mut shadowed = vec![false; valid.len()];
        for (i, p) in valid.iter().enumerate() {
            let Some(&j) = winner.get(p.hostname.as_str()) else {
                winner.insert(&p.hostname, i);
                continue;
            };
            let (a, b) = (&valid[j], p);
            if a.src.hostname == b.src.hostname {
                return Err(Error::entry(&b.src.hostname, "hostname", "duplicate entry for this hostname"));
            }
            if host_rank(b) < host_rank(a) {
                shadowed[j] = true;
                winner.insert(&p.hostname, i);
            } else {
                shadowed[i] = true;
            }
        }
        for (p, shadowed) in valid.iter().zip(shadowed) {
            if shadowed {
                skipped += 1;
                continue;
            }
            for name in std::iter::once(&p.hostname).chain(&p.alt_hosts) {
                if name.starts_with("*.") {
                    wild_keys += 1;
                } else {
                    keys += 1;
                }
                arena_len += name.len();
            }
            if p.k8s_forms {
                keys += 2 + usize::from(p.namespace == cfg.namespace);
            }
            arena_len += meta_len(p);
            prepared.push(p);
        }
        drop(winner);
        if prepared.len() > u32::MAX as usize / 2 || arena_len > u32::MAX as usize {
            return Err(Error::entry("*", "table", "too many entries"));
        }

        let seed = random_seed();
        // Sized exactly: never reallocated (copied) while filled or boxed.
        let mut arena = String::with_capacity(arena_len);
        let mut recs = Vec::with_capacity(prepared.len());
        let mut meta_offs = Vec::with_capacity(prepared.len());
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut registries: Vec<Box<str>> = Vec::new();
        let mut ranks: Vec<RankKey> = Vec::with_capacity(prepared.len());
        let mut exact = Index::with_capacity(keys, seed);
        let mut wild = Index::with_capacity(wild_keys, seed ^ 0x9E37_79B9_7F4A_7C15);

        for p in &prepared {
            let id = recs.len() as u32;
            let registry = match registries.iter().position(|r| **r == *p.src.registry) {
                Some(r) => r,
                None => {
                    if registries.len() == u8::MAX as usize {
                        return Err(Error::entry(&p.src.hostname, "registry", "more than 255 distinct registries"));
                    }
                    registries.push(p.src.registry.as_str().into());
                    registries.len() - 1
                }
            };
            let name_off = arena.len() as u32;
            arena.push_str(&p.hostname);
            // `shortname.namespace.svc` is usually the start of the hostname
            // itself; then the short forms cost no bytes at all.
            let meta_off = if meta_len(p) == 0 {
                name_off
            } else {
                let off = arena.len() as u32;
                arena.push_str(&p.shortname);
                if !p.shortname.is_empty() && !p.namespace.is_empty() {
                    arena.push('.');
                }
                arena.push_str(&p.namespace);
                if p.k8s_forms {
                    arena.push_str(".svc");
                }
                off
            };
            recs.push(Rec {
                v6: Rec::v6_field(&p.v6, v6.len()),
                v4: Rec::v4_field(&p.v4, v4.len()),
                name_off,
                n4: p.v4.len() as u16,
                n6: p.v6.len() as u16,
                name_len: p.hostname.len() as u8,
                registry: registry as u8,
                short_len: p.shortname.len() as u8,
                ns_len: p.namespace.len() as u8,
            });
            meta_offs.push(meta_off);
            // Single addresses live in the record (see `Rec`).
            if p.v4.len() > 1 {
                v4.extend_from_slice(&p.v4);
            }
            if p.v6.len() > 1 {
                v6.extend_from_slice(&p.v6);
            }
            ranks.push(RankKey { registry: registry_rank(p.src.is_kubernetes()), original: &p.src.hostname });

            // The keys of this entry: (arena offset, length, form).
            let mut add = |off: u32, len: usize, form: Form, arena: &str| -> Result<()> {
                let key = &arena.as_bytes()[off as usize..off as usize + len];
                let (index, key, off) =
                    if key.starts_with(b"*.") { (&mut wild, &key[2..], off + 2) } else { (&mut exact, key, off) };
                let recs = &recs;
                let ranks = &ranks;
                index.insert(key, off, id, form, arena.as_bytes(), |old, old_form| {
                    prefer_new(recs, ranks, arena, (id, form), (old, old_form))
                })
            };
            add(name_off, p.hostname.len(), Form::Hostname, &arena)?;
            for a in &p.alt_hosts {
                let off = arena.len() as u32;
                arena.push_str(a);
                add(off, a.len(), Form::AltHost, &arena)?;
            }
            if p.k8s_forms {
                let sn = p.shortname.len() + 1 + p.namespace.len();
                add(meta_off, sn + 4, Form::NameNamespaceSvc, &arena)?;
                add(meta_off, sn, Form::NameNamespace, &arena)?;
                if p.namespace == cfg.namespace {
                    add(meta_off, p.shortname.len(), Form::ShortName, &arena)?;
                }
            }
        }
        debug_assert_eq!(arena.len(), arena_len, "arena sized exactly");
        Ok(NameTable {
            config: cfg,
            arena: arena.into_boxed_str(),
            recs: recs.into_boxed_slice(),
            meta_offs: meta_offs.into_boxed_slice(),
            v4: v4.into_boxed_slice(),
            v6: v6.into_boxed_slice(),
            registries: registries.into_boxed_slice(),
            exact,
            wild,
            skipped,
        })
    }

    /// Looks a normalised query name up (see the module docs for the rules).
    #[inline]
    pub fn lookup<'a>(&'a self, q: &'a QueryName) -> Option<Hit<'a>> {
        // Exact keys are matched as bytes: the query is ASCII, and a hit's
        // name comes from the table, so no UTF-8 check on the common path.
        let bytes = q.as_bytes();
        if let Some(h) = self.exact_hit(q, bytes, None) {
            return Some(h);
        }
        self.lookup_past_exact(q)
    }

    /// Looks up many names: the result for each is the one [`lookup`]
    /// (Self::lookup) gives, handed to `f` with the query's position, in
    /// order. On tables larger than the CPU caches this is several times
    /// faster than one by one: the index slots, then the records and names,
    /// of a group of queries are requested from memory together, so their
    /// cache misses overlap instead of following one another.
    pub fn lookup_batch<'a>(&'a self, queries: &'a [QueryName], mut f: impl FnMut(usize, Option<Hit<'a>>)) {
        for (c, chunk) in queries.chunks(BATCH).enumerate() {
            let mut hashes = [0u64; BATCH];
            for (h, q) in hashes.iter_mut().zip(chunk) {
                *h = self.exact.hash(q.as_bytes());
                self.exact.prefetch_home(*h);
            }
            for (&h, q) in hashes.iter().zip(chunk) {
                if let Some((entry, key_off)) = self.exact.peek(h, q.as_bytes().len()) {
                    if let Some(r) = self.recs.get(entry as usize) {
                        prefetch(r);
                    }
                    if let Some(b) = self.arena.as_bytes().get(key_off as usize) {
                        prefetch(b);
                    }
                }
            }
            for (i, (&h, q)) in hashes.iter().zip(chunk).enumerate() {
                let hit = match self.exact_hit_hashed(q, q.as_bytes(), h, None) {
                    Some(hit) => Some(hit),
                    None => self.lookup_past_exact(q),
                };
                f(c * BATCH + i, hit);
            }
        }
    }

    /// The rest of a lookup once the query itself is no exact key.
    fn lookup_past_exact<'a>(&'a self, q: &'a QueryName) -> Option<Hit<'a>> {
        let bytes = q.as_bytes();
        for (i, s) in self.config.search.iter().enumerate() {
            if let Some(x) = strip_suffix_domain(bytes, s.as_bytes()) {
                if let Some(h) = self.exact_hit(q, x, Some(i)) {
                    return Some(h);
                }
            }
        }
        if self.wild.capacity() == 0 {
            return None;
        }
        let name = q.as_str();
        if let Some(h) = self.wildcard_hit(name, None) {
            return Some(h);
        }
        for (i, s) in self.config.search.iter().enumerate() {
            if let Some(x) = strip_suffix_domain(bytes, s.as_bytes()) {
                // `x` is a prefix of the query: ASCII, so a char boundary.
                if let Some(h) = self.wildcard_hit(&name[..x.len()], Some(i)) {
                    return Some(h);
                }
            }
        }
        None
    }

    /// Looks up a name given as text or wire bytes in any case, with or
    /// without the trailing dot, and hands the hit to `f`.
    pub fn lookup_with<R>(&self, name: &[u8], f: impl FnOnce(Option<Hit<'_>>) -> R) -> R {
        match QueryName::new(name) {
            Some(q) => f(self.lookup(&q)),
            None => f(None),
        }
    }

    /// `key` is the query `q` or a prefix of it (a search domain stripped).
    #[inline]
    fn exact_hit<'a>(&'a self, q: &'a QueryName, key: &[u8], search_index: Option<usize>) -> Option<Hit<'a>> {
        self.exact_hit_hashed(q, key, self.exact.hash(key), search_index)
    }

    #[inline]
    fn exact_hit_hashed<'a>(
        &'a self,
        q: &'a QueryName,
        key: &[u8],
        h: u64,
        search_index: Option<usize>,
    ) -> Option<Hit<'a>> {
        let found = self.exact.get_hashed(h, key, self.arena.as_bytes())?;
        let r = &self.recs[found.entry as usize];
        let name = self.name_of(r);
        // An alt host of a wildcard entry answers under its own name: a
        // literal `*` never reaches an answer (istio/istio#47264, #61732).
        let canonical = if name.starts_with("*.") { &q.as_str()[..key.len()] } else { name };
        Some(self.hit(found.entry, r, canonical, found.form, search_index))
    }

    /// Tries the wildcard keys for `name`, most specific (longest suffix) first.
    fn wildcard_hit<'a>(&'a self, name: &'a str, search_index: Option<usize>) -> Option<Hit<'a>> {
        for (i, b) in name.bytes().enumerate() {
            if b != b'.' {
                continue;
            }
            if let Some(found) = self.wild.get(&name.as_bytes()[i + 1..], self.arena.as_bytes()) {
                let r = &self.recs[found.entry as usize];
                return Some(self.hit(found.entry, r, name, Form::Wildcard, search_index));
            }
        }
        None
    }

    #[inline]
    fn hit<'a>(
        &'a self,
        entry: u32,
        r: &'a Rec,
        canonical: &'a str,
        form: Form,
        search_index: Option<usize>,
    ) -> Hit<'a> {
        Hit { canonical, form, search_index, ipv4: self.ipv4_of(r), ipv6: self.ipv6_of(r), entry: entry as usize }
    }

    #[inline]
    fn ipv4_of<'a>(&'a self, r: &'a Rec) -> &'a [Ipv4Addr] {
        match r.n4 {
            0 => &[],
            1 => std::slice::from_ref(&r.v4),
            n => {
                let start = u32::from(r.v4) as usize;
                &self.v4[start..start + n as usize]
            }
        }
    }

    #[inline]
    fn ipv6_of<'a>(&'a self, r: &'a Rec) -> &'a [Ipv6Addr] {
        match r.n6 {
            0 => &[],
            1 => std::slice::from_ref(&r.v6),
            n => {
                let start = u128::from(r.v6) as usize;
                &self.v6[start..start + n as usize]
            }
        }
    }

    fn name_of(&self, r: &Rec) -> &str {
        &self.arena[r.name_off as usize..r.name_off as usize + r.name_len as usize]
    }

    fn view<'a>(&'a self, r: &'a Rec, meta_off: u32) -> EntryView<'a> {
        let s = meta_off as usize;
        let shortname = &self.arena[s..s + r.short_len as usize];
        let ns_start = s + r.short_len as usize + usize::from(r.short_len > 0 && r.ns_len > 0);
        EntryView {
            hostname: self.name_of(r),
            registry: &self.registries[r.registry as usize],
            shortname,
            namespace: &self.arena[ns_start..ns_start + r.ns_len as usize],
            ipv4: self.ipv4_of(r),
            ipv6: self.ipv6_of(r),
        }
    }

    /// The entry at position `i` in iteration order.
    pub fn entry(&self, i: usize) -> Option<EntryView<'_>> {
        Some(self.view(self.recs.get(i)?, self.meta_offs[i]))
    }

    /// All entries, in input order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = EntryView<'_>> + '_ {
        self.recs.iter().zip(self.meta_offs.iter()).map(|(r, &m)| self.view(r, m))
    }

    /// Number of entries (hostnames with at least one address).
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Entries left out because they had no address.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The proxy namespace, domain and search list the table was built for.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    pub fn domain(&self) -> &str {
        &self.config.domain
    }

    pub fn search(&self) -> &[String] {
        &self.config.search
    }

    /// Heap bytes held by the snapshot, and of those the bytes of the names
    /// themselves (the arena).
    pub fn heap_bytes(&self) -> (usize, usize) {
        let names = self.arena.len();
        let total = names
            + self.recs.len() * std::mem::size_of::<Rec>()
            + self.meta_offs.len() * 4
            + self.v4.len() * 4
            + self.v6.len() * 16
            + self.exact.heap_bytes()
            + self.wild.heap_bytes()
            + self.registries.iter().map(|r| r.len() + 16).sum::<usize>();
        (total, names)
    }
}

/// Settles a collision between the entry being inserted and the one holding
/// the key. Lower (strength, registry rank, canonical name, name as given) wins.
fn prefer_new(recs: &[Rec], ranks: &[RankKey], arena: &str, new: (u32, Form), old: (u32, Form)) -> Result<bool> {
    let name = |id: u32| {
        let r = &recs[id as usize];
        &arena[r.name_off as usize..r.name_off as usize + r.name_len as usize]
    };
    let key = |(id, form): (u32, Form)| {
        let rk = &ranks[id as usize];
        (form.strength(), rk.registry, name(id), rk.original)
    };
    Ok(key(new) < key(old))
}

/// `name` minus `.domain` at its end, if it ends so and something is left.
#[inline]
fn strip_suffix_domain<'n>(name: &'n [u8], domain: &[u8]) -> Option<&'n [u8]> {
    let rest = name.strip_suffix(domain)?;
    let rest = rest.strip_suffix(b".")?;
    (!rest.is_empty()).then_some(rest)
}

/// A per-table seed for the index hash, from the OS-randomised std hasher
/// state, so probe sequences differ per process and per table.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

//! What the DNS proxy answers from: a name table snapshot plus the indexes
//! only DNS needs (reverse lookups, which entries we are authoritative for),
//! built once per table off the hot path and swapped atomically.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::names::{NameTable, REGISTRY_KUBERNETES};

use super::wire::NameBuf;

/// A name table with its DNS indexes. Immutable.
#[derive(Debug)]
pub struct DnsTable {
    names: Arc<NameTable>,
    /// Address → first entry (in table order) holding it, for PTR.
    ptr: HashMap<IpAddr, u32>,
    /// Per entry: a Kubernetes service of the cluster domain, for which we
    /// answer every query type (NODATA for the ones we do not hold).
    authoritative: Box<[bool]>,
    /// The cluster domain in wire form (SOA owner for its names).
    domain: NameBuf,
    generation: u64,
}

impl DnsTable {
    /// Builds the indexes for `names`. Cost: one pass over the entries.
    pub fn new(names: Arc<NameTable>, generation: u64) -> DnsTable {
        let mut ptr = HashMap::with_capacity(names.len());
        let svc_suffix = format!(".svc.{}", names.domain());
        let mut authoritative = Vec::with_capacity(names.len());
        for (i, e) in names.entries().enumerate() {
            // A wildcard host has no name a PTR could point to without a `*`.
            let addrs = if e.hostname.starts_with("*.") { None } else { Some(e) };
            for a in addrs
                .iter()
                .flat_map(|e| e.ipv4.iter().map(|a| IpAddr::V4(*a)).chain(e.ipv6.iter().map(|a| IpAddr::V6(*a))))
            {
                ptr.entry(a).or_insert(i as u32);
            }
            authoritative.push(e.registry == REGISTRY_KUBERNETES && e.hostname.ends_with(&svc_suffix));
        }
        let domain = NameBuf::from_text(names.domain()).unwrap_or_default();
        DnsTable { names, ptr, authoritative: authoritative.into_boxed_slice(), domain, generation }
    }

    pub fn names(&self) -> &NameTable {
        &self.names
    }

    pub fn names_arc(&self) -> &Arc<NameTable> {
        &self.names
    }

    /// The hostname of the entry holding `addr`.
    pub fn ptr(&self, addr: &IpAddr) -> Option<&str> {
        let i = *self.ptr.get(addr)?;
        self.names.entry(i as usize).map(|e| e.hostname)
    }

    pub fn is_authoritative(&self, entry: usize) -> bool {
        self.authoritative.get(entry).copied().unwrap_or(false)
    }

    pub fn domain(&self) -> &NameBuf {
        &self.domain
    }

    /// The SOA serial: the table's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// What local answers read: implemented by [`DnsTable`] (indexed) and by a
/// bare [`NameTable`] (reverse lookups by a scan; for the C ABI, which answers
/// one packet from a table the caller owns).
pub trait AnswerSource {
    fn names(&self) -> &NameTable;
    /// The hostname of the first entry holding `addr`, never a wildcard.
    fn ptr(&self, addr: &IpAddr) -> Option<&str>;
    /// Whether entry `i` is a Kubernetes service of the cluster domain.
    fn is_authoritative(&self, entry: usize) -> bool;
    /// The cluster domain in wire form.
    fn domain(&self) -> NameBuf;
    /// The SOA serial.
    fn serial(&self) -> u32;
}

impl AnswerSource for DnsTable {
    fn names(&self) -> &NameTable {
        &self.names
    }
    fn ptr(&self, addr: &IpAddr) -> Option<&str> {
        DnsTable::ptr(self, addr)
    }
    fn is_authoritative(&self, entry: usize) -> bool {
        DnsTable::is_authoritative(self, entry)
    }
    fn domain(&self) -> NameBuf {
        self.domain.clone()
    }
    fn serial(&self) -> u32 {
        self.generation as u32
    }
}

impl AnswerSource for NameTable {
    fn names(&self) -> &NameTable {
        self
    }
    fn ptr(&self, addr: &IpAddr) -> Option<&str> {
        self.entries()
            .find(|e| {
                !e.hostname.starts_with("*.")
                    && match addr {
                        IpAddr::V4(a) => e.ipv4.contains(a),
                        IpAddr::V6(a) => e.ipv6.contains(a),
                    }
            })
            .map(|e| e.hostname)
    }
    fn is_authoritative(&self, entry: usize) -> bool {
        self.entry(entry).is_some_and(|e| {
            e.registry == REGISTRY_KUBERNETES && e.hostname.ends_with(&format!(".svc.{}", NameTable::domain(self)))
        })
    }
    fn domain(&self) -> NameBuf {
        NameBuf::from_text(NameTable::domain(self)).unwrap_or_default()
    }
    fn serial(&self) -> u32 {
        1
    }
}

/// The table serving now; none before the first one (then every query is
/// forwarded: Istio answers SERVFAIL and breaks boot-time lookups; istio
/// `pkg/dns/client/dns.go`, `LocalDNSServer.ServeDNS` without
/// `respondBeforeSync`).
#[derive(Debug, Default)]
pub struct LiveDnsTable {
    current: ArcSwapOption<DnsTable>,
    generation: AtomicU64,
}

pub type DnsSnapshot = arc_swap::Guard<Option<Arc<DnsTable>>>;

impl LiveDnsTable {
    pub fn new() -> LiveDnsTable {
        LiveDnsTable::default()
    }

    #[inline]
    pub fn load(&self) -> DnsSnapshot {
        self.current.load()
    }

    /// Builds the DNS indexes for `names` and publishes the result in one
    /// atomic store; readers see the old or the new table, never a mix.
    pub fn publish(&self, names: Arc<NameTable>) -> u64 {
        let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.current.store(Some(Arc::new(DnsTable::new(names, g))));
        g
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

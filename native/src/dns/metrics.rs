//! Counters of the DNS proxy, rendered as Prometheus text.
//!
//! Istio's four metrics keep their exported names and meaning (istio
//! `pkg/dns/client/monitoring.go`) so existing dashboards keep working:
//! `istio_agent_dns_requests_total` (every query reaching the handler),
//! `istio_agent_dns_upstream_requests_total` (once per query sent upstream),
//! `istio_agent_dns_upstream_failures_total` (once per query when every
//! upstream attempt failed) and `istio_agent_dns_upstream_request_duration_seconds`
//! (the whole upstream phase, same buckets). What Istio lacks
//! (<https://github.com/istio/istio/issues/33222> asked for query types and
//! rcodes, <https://github.com/istio/istio/issues/58806> for cache hits) is
//! added under `pymesh_dns_*`: outcome, query type, rcode, spoofed
//! answers dropped, cache size, and what the server's limits did:
//! forwards shed at the pending limits, TCP connections turned away or
//! evicted, UDP replies truncated to the size cap).
//!
//! Plain relaxed atomics: the counters are independent, a scrape may see
//! one a query ahead of another, which Prometheus tolerates.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::answer::Outcome;
use super::wire::{RType, Rcode};

/// The labels of counted codes (each has a name), then `other`.
fn label<'a>(names: &'a [Option<&'static str>]) -> impl Iterator<Item = &'static str> + 'a {
    names.iter().map(|n| n.unwrap_or("other")).chain(["other"])
}

/// Query types counted separately (labelled by their mnemonic,
/// [`RType::name`]); the rest is `other`.
const QTYPES: [RType; 12] = [
    RType::A,
    RType::AAAA,
    RType::PTR,
    RType::SRV,
    RType::TXT,
    RType::MX,
    RType::CNAME,
    RType::SOA,
    RType::NS,
    RType::SVCB,
    RType::HTTPS,
    RType::ANY,
];
/// Response codes counted separately, in slot order (the RFC 1035 and
/// RFC 2136 codes are their own slot numbers); the rest is `other`.
const RCODES: [Rcode; 12] = [
    Rcode::NOERROR,
    Rcode::FORMERR,
    Rcode::SERVFAIL,
    Rcode::NXDOMAIN,
    Rcode::NOTIMP,
    Rcode::REFUSED,
    Rcode::YXDOMAIN,
    Rcode::YXRRSET,
    Rcode::NXRRSET,
    Rcode::NOTAUTH,
    Rcode::NOTZONE,
    Rcode::BADVERS,
];
/// Istio's histogram buckets, in seconds.
const BUCKETS: [f64; 6] = [0.001, 0.005, 0.01, 0.1, 1.0, 5.0];

/// Which pending-forward limit turned a query away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ForwardLimit {
    /// The server's total.
    Total = 0,
    /// The client's share.
    Client = 1,
}

impl ForwardLimit {
    pub const ALL: [ForwardLimit; 2] = [ForwardLimit::Total, ForwardLimit::Client];

    pub fn as_str(self) -> &'static str {
        match self {
            ForwardLimit::Total => "total",
            ForwardLimit::Client => "client",
        }
    }
}

/// Why a TCP connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TcpReject {
    /// The client is outside the allow-list of a non-loopback listener.
    NotAllowed = 0,
    /// The client holds its share of connections, none of them idle.
    ClientLimit = 1,
    /// The server holds its total, none of them idle.
    Limit = 2,
}

impl TcpReject {
    pub const ALL: [TcpReject; 3] = [TcpReject::NotAllowed, TcpReject::ClientLimit, TcpReject::Limit];

    pub fn as_str(self) -> &'static str {
        match self {
            TcpReject::NotAllowed => "not_allowed",
            TcpReject::ClientLimit => "client_limit",
            TcpReject::Limit => "limit",
        }
    }
}

/// Point-in-time values reported as Prometheus gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub cache_entries: usize,
    /// Forwarded queries waiting for an upstream, and how many may.
    pub forwards_pending: usize,
    pub forwards_limit: usize,
    pub tcp_connections: usize,
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    upstream_requests: AtomicU64,
    upstream_failures: AtomicU64,
    outcomes: [AtomicU64; Outcome::ALL.len()],
    qtypes: [AtomicU64; QTYPES.len() + 1],
    rcodes: [AtomicU64; RCODES.len() + 1],
    buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_ns: AtomicU64,
    upstream_attempts: AtomicU64,
    tcp_retries: AtomicU64,
    hedged: AtomicU64,
    coalesced: AtomicU64,
    forwards_rejected: [AtomicU64; ForwardLimit::ALL.len()],
    tcp_rejected: [AtomicU64; TcpReject::ALL.len()],
    tcp_evicted: AtomicU64,
    udp_truncated: AtomicU64,
}

fn qtype_slot(qtype: RType) -> usize {
    QTYPES.iter().position(|&t| t == qtype).unwrap_or(QTYPES.len())
}

fn rcode_slot(rcode: Rcode) -> usize {
    match rcode.0 {
        0..=10 => rcode.0 as usize,
        16 => RCODES.len() - 1, // BADVERS
        _ => RCODES.len(),
    }
}

/// Counts kept by one worker for one batch, added to [`Metrics`] with
/// [`Metrics::flush`].
#[derive(Debug, Default, Clone)]
pub struct LocalCounts {
    requests: u64,
    outcomes: [u64; Outcome::ALL.len()],
    qtypes: [u64; QTYPES.len() + 1],
    rcodes: [u64; RCODES.len() + 1],
    forwards_rejected: [u64; ForwardLimit::ALL.len()],
    udp_truncated: u64,
}

impl LocalCounts {
    /// As [`Metrics::query`], into this batch.
    #[inline]
    pub fn query(&mut self, outcome: Outcome, qtype: RType, rcode: Rcode) {
        self.requests += 1;
        self.outcomes[outcome as usize] += 1;
        self.qtypes[qtype_slot(qtype)] += 1;
        if !matches!(outcome, Outcome::Dropped) {
            self.rcodes[rcode_slot(rcode)] += 1;
        }
    }

    /// As [`Metrics::dropped`], into this batch.
    #[inline]
    pub fn dropped(&mut self) {
        self.outcomes[Outcome::Dropped as usize] += 1;
    }

    /// As [`Metrics::forward_rejected`], into this batch.
    #[inline]
    pub fn forward_rejected(&mut self, limit: ForwardLimit) {
        self.forwards_rejected[limit as usize] += 1;
    }

    /// As [`Metrics::udp_truncated`], into this batch.
    #[inline]
    pub fn udp_truncated(&mut self) {
        self.udp_truncated += 1;
    }
}

/// A copy of the counters, for `stats()`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub upstream_requests: u64,
    pub upstream_failures: u64,
    pub upstream_attempts: u64,
    pub tcp_retries: u64,
    pub hedged: u64,
    pub coalesced: u64,
    pub tcp_evicted: u64,
    pub udp_truncated: u64,
    pub outcomes: Vec<(&'static str, u64)>,
    pub forwards_rejected: Vec<(&'static str, u64)>,
    pub tcp_rejected: Vec<(&'static str, u64)>,
    pub qtypes: Vec<(&'static str, u64)>,
    pub rcodes: Vec<(&'static str, u64)>,
}

impl Metrics {
    /// One query answered (or not) by the server.
    #[inline]
    pub fn query(&self, outcome: Outcome, qtype: RType, rcode: Rcode) {
        self.requests.fetch_add(1, Relaxed);
        self.outcomes[outcome as usize].fetch_add(1, Relaxed);
        self.qtypes[qtype_slot(qtype)].fetch_add(1, Relaxed);
        if !matches!(outcome, Outcome::Dropped) {
            self.rcodes[rcode_slot(rcode)].fetch_add(1, Relaxed);
        }
    }

    /// Adds a worker's batch of counts and clears it: a handful of atomic
    /// adds per batch instead of four per query.
    pub fn flush(&self, c: &mut LocalCounts) {
        if c.requests == 0 && c.outcomes.iter().all(|&v| v == 0) {
            return;
        }
        for (a, v) in self.forwards_rejected.iter().zip(&c.forwards_rejected) {
            if *v != 0 {
                a.fetch_add(*v, Relaxed);
            }
        }
        if c.udp_truncated != 0 {
            self.udp_truncated.fetch_add(c.udp_truncated, Relaxed);
        }
        self.requests.fetch_add(c.requests, Relaxed);
        for (a, v) in self.outcomes.iter().zip(&c.outcomes) {
            if *v != 0 {
                a.fetch_add(*v, Relaxed);
            }
        }
        for (a, v) in self.qtypes.iter().zip(&c.qtypes) {
            if *v != 0 {
                a.fetch_add(*v, Relaxed);
            }
        }
        for (a, v) in self.rcodes.iter().zip(&c.rcodes) {
            if *v != 0 {
                a.fetch_add(*v, Relaxed);
            }
        }
        *c = LocalCounts::default();
    }

    /// A packet that never was a query we answer: runt or a response (not an Istio request).
    pub fn dropped(&self) {
        self.outcomes[Outcome::Dropped as usize].fetch_add(1, Relaxed);
    }

    /// An upstream answer that did not match what we asked.
    pub fn spoof(&self) {
        self.outcomes[Outcome::DroppedSpoof as usize].fetch_add(1, Relaxed);
    }

    /// A query entering the upstream phase (Istio: once per query).
    pub fn upstream_request(&self) {
        self.upstream_requests.fetch_add(1, Relaxed);
    }

    /// The upstream phase ended; `failed` when every attempt failed.
    pub fn upstream_done(&self, took: Duration, failed: bool) {
        if failed {
            self.upstream_failures.fetch_add(1, Relaxed);
        }
        let s = took.as_secs_f64();
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            if s <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Relaxed);
        self.duration_sum_ns.fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub fn attempt(&self) {
        self.upstream_attempts.fetch_add(1, Relaxed);
    }

    pub fn tcp_retry(&self) {
        self.tcp_retries.fetch_add(1, Relaxed);
    }

    pub fn hedge(&self) {
        self.hedged.fetch_add(1, Relaxed);
    }

    pub fn coalesce(&self) {
        self.coalesced.fetch_add(1, Relaxed);
    }

    /// A forward turned away by a pending-forward limit (answered SERVFAIL).
    pub fn forward_rejected(&self, limit: ForwardLimit) {
        self.forwards_rejected[limit as usize].fetch_add(1, Relaxed);
    }

    /// A TCP connection closed as soon as it was accepted.
    pub fn tcp_rejected(&self, why: TcpReject) {
        self.tcp_rejected[why as usize].fetch_add(1, Relaxed);
    }

    /// An idle TCP connection closed to make room for a new one.
    pub fn tcp_evicted(&self) {
        self.tcp_evicted.fetch_add(1, Relaxed);
    }

    /// A UDP reply sent with TC set (cut to the client's size limit, or
    /// relayed truncated from an upstream).
    pub fn udp_truncated(&self) {
        self.udp_truncated.fetch_add(1, Relaxed);
    }

    pub fn stats(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Relaxed);
        Stats {
            requests: g(&self.requests),
            upstream_requests: g(&self.upstream_requests),
            upstream_failures: g(&self.upstream_failures),
            upstream_attempts: g(&self.upstream_attempts),
            tcp_retries: g(&self.tcp_retries),
            hedged: g(&self.hedged),
            coalesced: g(&self.coalesced),
            tcp_evicted: g(&self.tcp_evicted),
            udp_truncated: g(&self.udp_truncated),
            outcomes: Outcome::ALL.iter().map(|o| (o.as_str(), g(&self.outcomes[*o as usize]))).collect(),
            forwards_rejected: ForwardLimit::ALL
                .iter()
                .map(|l| (l.as_str(), g(&self.forwards_rejected[*l as usize])))
                .collect(),
            tcp_rejected: TcpReject::ALL.iter().map(|r| (r.as_str(), g(&self.tcp_rejected[*r as usize]))).collect(),
            qtypes: label(&QTYPES.map(RType::name)).zip(self.qtypes.iter().map(g)).collect(),
            rcodes: label(&RCODES.map(Rcode::name)).zip(self.rcodes.iter().map(g)).collect(),
        }
    }

    /// The Prometheus text exposition (format 0.0.4), with `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let s = self.stats();
        let mut o = String::with_capacity(4096);
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(&mut o, "istio_agent_dns_requests_total", "Total number of DNS requests.", s.requests);
        counter(
            &mut o,
            "istio_agent_dns_upstream_requests_total",
            "Total number of DNS requests forwarded to upstream.",
            s.upstream_requests,
        );
        counter(
            &mut o,
            "istio_agent_dns_upstream_failures_total",
            "Total number of DNS failures forwarding to upstream.",
            s.upstream_failures,
        );
        let h = "istio_agent_dns_upstream_request_duration_seconds";
        let _ = writeln!(o, "# HELP {h} Total time in seconds Istio takes to get DNS response from upstream.");
        let _ = writeln!(o, "# TYPE {h} histogram");
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(o, "{h}_bucket{{le=\"{le}\"}} {}", b.load(Relaxed));
        }
        let count = self.duration_count.load(Relaxed);
        let sum = self.duration_sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(o, "{h}_bucket{{le=\"+Inf\"}} {count}\n{h}_sum {sum}\n{h}_count {count}");
        let labeled = |o: &mut String, name: &str, help: &str, label: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (k, v) in rows {
                let _ = writeln!(o, "{name}{{{label}=\"{k}\"}} {v}");
            }
        };
        labeled(&mut o, "pymesh_dns_queries_total", "DNS queries by outcome.", "outcome", &s.outcomes);
        labeled(&mut o, "pymesh_dns_queries_by_type_total", "DNS queries by query type.", "qtype", &s.qtypes);
        labeled(&mut o, "pymesh_dns_responses_total", "DNS responses by rcode.", "rcode", &s.rcodes);
        counter(&mut o, "pymesh_dns_upstream_attempts_total", "Queries sent to upstream servers.", s.upstream_attempts);
        counter(
            &mut o,
            "pymesh_dns_upstream_tcp_retries_total",
            "Truncated upstream answers retried over TCP.",
            s.tcp_retries,
        );
        counter(&mut o, "pymesh_dns_upstream_hedged_total", "Hedged queries sent to a second upstream.", s.hedged);
        counter(&mut o, "pymesh_dns_coalesced_total", "Queries that joined an identical one in flight.", s.coalesced);
        labeled(
            &mut o,
            "pymesh_dns_forwards_rejected_total",
            "Forwarded queries answered SERVFAIL at once because a pending-forward limit was reached.",
            "limit",
            &s.forwards_rejected,
        );
        labeled(
            &mut o,
            "pymesh_dns_tcp_connections_rejected_total",
            "TCP connections closed as soon as they were accepted.",
            "reason",
            &s.tcp_rejected,
        );
        counter(
            &mut o,
            "pymesh_dns_tcp_connections_evicted_total",
            "Idle TCP connections closed to admit a new one.",
            s.tcp_evicted,
        );
        counter(
            &mut o,
            "pymesh_dns_udp_truncated_total",
            "UDP replies sent truncated (TC set) to fit the client's size limit.",
            s.udp_truncated,
        );
        let gauge = |o: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(&mut o, "pymesh_dns_cache_entries", "Answers in the cache.", gauges.cache_entries);
        gauge(
            &mut o,
            "pymesh_dns_forwards_pending",
            "Forwarded queries waiting for an upstream answer.",
            gauges.forwards_pending,
        );
        gauge(
            &mut o,
            "pymesh_dns_forwards_pending_limit",
            "Forwarded queries that may wait for an upstream answer at once.",
            gauges.forwards_limit,
        );
        gauge(&mut o, "pymesh_dns_tcp_connections", "Open TCP client connections.", gauges.tcp_connections);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_istio_names_and_counts() {
        let m = Metrics::default();
        m.query(Outcome::Local, RType(1), Rcode(0));
        m.query(Outcome::NoData, RType(28), Rcode(0));
        m.query(Outcome::Forwarded, RType(16), Rcode(3));
        m.upstream_request();
        m.upstream_done(Duration::from_millis(3), false);
        let t = m.render(&Gauges::default());
        assert!(t.contains("\nistio_agent_dns_requests_total 3\n"), "{t}");
        assert!(t.contains("\nistio_agent_dns_upstream_requests_total 1\n"));
        assert!(t.contains("istio_agent_dns_upstream_request_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(t.contains("istio_agent_dns_upstream_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(t.contains("pymesh_dns_queries_total{outcome=\"nodata\"} 1\n"));
        assert!(t.contains("pymesh_dns_queries_by_type_total{qtype=\"TXT\"} 1\n"));
        assert!(t.contains("pymesh_dns_responses_total{rcode=\"NXDOMAIN\"} 1\n"));
    }

    #[test]
    fn every_counted_code_has_its_name_and_the_labels_keep_their_order() {
        assert!(QTYPES.iter().all(|t| t.name().is_some()) && RCODES.iter().all(|r| r.name().is_some()));
        let s = Metrics::default().stats();
        let q: Vec<&str> = s.qtypes.iter().map(|x| x.0).collect();
        assert_eq!(q, ["A", "AAAA", "PTR", "SRV", "TXT", "MX", "CNAME", "SOA", "NS", "SVCB", "HTTPS", "ANY", "other"]);
        let r: Vec<&str> = s.rcodes.iter().map(|x| x.0).collect();
        assert_eq!(
            r,
            [
                "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET",
                "NOTAUTH", "NOTZONE", "BADVERS", "other"
            ]
        );
        let m = Metrics::default();
        m.query(Outcome::Malformed, RType(0), Rcode::BADVERS);
        m.query(Outcome::Forwarded, RType(99), Rcode(23));
        let s = m.stats();
        assert_eq!((s.rcodes[11], s.rcodes[12], s.qtypes[12]), (("BADVERS", 1), ("other", 1), ("other", 2)));
    }
}

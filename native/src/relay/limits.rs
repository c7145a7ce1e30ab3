//! How many connections a relay serves at once, derived from the process's
//! file-descriptor budget when it starts, and the per-source key.
//!
//! A relayed connection holds two sockets (client, upstream); a plaintext
//! one also holds a pipe (two descriptors) per direction, but only while
//! bytes are in flight: pipes come from a pool bounded at a quarter of the
//! connection limit (haproxy's `tune.maxpipes` default, `maxconn / 4`,
//! haproxy `doc/configuration.txt`; `src/pipe.c`), and a direction that finds
//! the pool empty copies through a small buffer instead. So a relay's
//! descriptors never exceed `2.5 x limit`.
//!
//! The budget: the soft `RLIMIT_NOFILE` (the agent raises it to the hard
//! limit before starting the relays, `pymesh/agent/dataplane.py`
//! `raise_nofile_limit`), minus the descriptors already open, minus a
//! reserve for the rest of the process (the agent's Python side, the DNS
//! proxy, xDS, certificate files): an eighth of the limit, at least 128.
//! What is left is split between the relays of one process: the agent runs
//! two (outbound 15001, inbound 15006), and each gets half, so a flood on
//! one never takes the other's descriptors. Before this, each connection
//! cost 6 descriptors and 2 threads, and ~170 idle connections at the
//! default 1,024 exhausted the whole agent.

use std::net::IpAddr;

/// Descriptors per connection, pipes included (2 sockets + 2 x 2 / 4).
const FDS_PER_CONNECTION_X2: u64 = 5;
/// Relays per process sharing the budget (the agent's outbound and inbound).
const RELAYS_PER_PROCESS: u64 = 2;
/// The smallest reserve left to the rest of the process.
const MIN_RESERVE: u64 = 128;
/// Never fewer than this many connections, however small the budget.
const MIN_CONNECTIONS: usize = 16;

/// The limits a relay serves with, fixed when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (accepted and not yet closed).
    pub max_connections: usize,
    /// Connections open at once from one source (an IPv4 address, an IPv6 /64).
    pub max_connections_per_source: usize,
    /// Splice pipes open at once (pooled and in use).
    pub max_pipes: usize,
    /// The soft `RLIMIT_NOFILE` the limits were derived from.
    pub fd_limit: u64,
}

/// The soft `RLIMIT_NOFILE` (None: unlimited) and the descriptors open now.
pub(crate) fn fd_budget() -> (Option<u64>, u64) {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(64);
    (soft, open)
}

/// The connection limit a budget allows one relay: `(soft - open - reserve)
/// / 2.5 / relays`. `soft` None (unlimited) counts as Linux's default
/// `nr_open`, 1,048,576.
pub(crate) fn connections_for(soft: Option<u64>, open: u64) -> usize {
    let soft = soft.unwrap_or(1 << 20);
    let reserve = (soft / 8).max(MIN_RESERVE);
    let usable = soft.saturating_sub(open).saturating_sub(reserve);
    let n = usable * 2 / FDS_PER_CONNECTION_X2 / RELAYS_PER_PROCESS;
    usize::try_from(n).unwrap_or(usize::MAX).max(MIN_CONNECTIONS)
}

impl Limits {
    /// The limits for a relay: the configured maximum (None: none) capped by
    /// what the descriptor budget allows; the per-source cap as configured,
    /// else `default_per_source(limit)`, never above the limit.
    pub(crate) fn derive(
        max_connections: Option<usize>,
        per_source: Option<usize>,
        default_per_source: impl Fn(usize) -> usize,
        (soft, open): (Option<u64>, u64),
    ) -> Limits {
        let budget = connections_for(soft, open);
        let max_connections = max_connections.map_or(budget, |m| m.min(budget)).max(1);
        let per_source = per_source.unwrap_or_else(|| default_per_source(max_connections)).clamp(1, max_connections);
        Limits {
            max_connections,
            max_connections_per_source: per_source,
            max_pipes: (max_connections / 4).max(4),
            fd_limit: soft.unwrap_or(u64::MAX),
        }
    }
}

/// What connections are counted by per source: the address for IPv4, the
/// /64 for IPv6 (one host holds a whole /64, RFC 4291 §2.5.1's interface
/// identifiers, so counting single IPv6 addresses would cap nobody).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SourceKey(u128);

impl SourceKey {
    pub(crate) fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(a) => SourceKey(u128::from(u32::from(a))),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => SourceKey(u128::from(u32::from(v4))),
                // The top bit marks IPv6, so no /64 equals an IPv4 key.
                None => SourceKey((u128::from(a) >> 64) | (1 << 127)),
            },
        }
    }
}

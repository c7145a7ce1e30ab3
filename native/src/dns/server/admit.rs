//! Admission of forwarded queries: at most so many wait for an upstream at
//! once in all, and at most so many per client, so a flood of distinct names
//! to a silent upstream holds a bounded amount of memory and file
//! descriptors and one client cannot take every slot. A query over either
//! limit is answered SERVFAIL at once (and counted) rather than dropped or
//! queued: the client hears it now and tries its next server.
//!
//! Lock-free: the total is one atomic counter; clients are counted in a
//! fixed array of atomic counters indexed by a keyed hash of the client (its
//! IPv4 address, or its IPv6 /64, the unit one host is usually given), so
//! the check is two relaxed read-modify-writes and never allocates. Two
//! clients whose keys share a counter share its limit (rare with 1,024
//! counters and a per-server random key that an attacker cannot aim at). On
//! loopback every local process is the same client (127.0.0.1); there the
//! total and the attempt timeouts are what bound the load.
//!
//! The last quarter of the total is kept for light clients, those holding
//! fewer than 1/16 of their share (16 of 256 by default): a few heavy
//! clients, each within its share, can then take three quarters at most, and
//! a client asking now and then still gets a slot while they flood (with
//! more attacking addresses than that, only the attempt timeouts bound how
//! long a slot stays taken).
//!
//! A [`ForwardPermit`] gives its slots back when dropped, so a forward that
//! finishes, times out or is cancelled (the runtime stopping) always frees them.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::dns::metrics::ForwardLimit;

/// Per-client counters (a power of two).
const CLIENT_SLOTS: usize = 1024;

/// What identifies a client: an IPv4 address (IPv4-mapped included) or an
/// IPv6 /64.
pub(crate) fn client_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4)),
            // The top bit marks IPv6 so that no /64 aliases an IPv4 address.
            None => ((u128::from(a) >> 64) as u64) | (1 << 63),
        },
    }
}

/// A random 64-bit key from the OS (the clock if there is none).
pub(crate) fn random_key() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        return n as u64;
    }
    u64::from_ne_bytes(b)
}

/// The pending-forward limits and counters.
#[derive(Debug)]
pub(crate) struct ForwardGate {
    pending: AtomicUsize,
    limit: AtomicUsize,
    per_client: AtomicUsize,
    clients: Box<[AtomicU32]>,
    key: u64,
}

/// Slots taken by one forward; given back on drop.
#[derive(Debug)]
pub(crate) struct ForwardPermit {
    gate: Arc<ForwardGate>,
    slot: usize,
}

impl Drop for ForwardPermit {
    fn drop(&mut self) {
        self.gate.clients[self.slot].fetch_sub(1, Relaxed);
        self.gate.pending.fetch_sub(1, Relaxed);
    }
}

impl ForwardGate {
    pub(crate) fn new(limit: usize, per_client: usize) -> ForwardGate {
        ForwardGate {
            pending: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit.max(1)),
            per_client: AtomicUsize::new(per_client.max(1)),
            clients: (0..CLIENT_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            key: random_key(),
        }
    }

    /// Changes the limits; forwards already admitted keep their slots.
    pub(crate) fn set_limits(&self, limit: usize, per_client: usize) {
        self.limit.store(limit.max(1), Relaxed);
        self.per_client.store(per_client.max(1), Relaxed);
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    fn slot(&self, client: IpAddr) -> usize {
        // Multiply-shift hashing of the keyed client (Dietzfelbinger et al.).
        let h = (client_key(client) ^ self.key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - CLIENT_SLOTS.trailing_zeros())) as usize
    }

    /// Takes a slot for a forward from `client`, or says which limit is reached.
    #[inline]
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Result<ForwardPermit, ForwardLimit> {
        let slot = self.slot(client);
        let c = &self.clients[slot];
        let per_client = self.per_client.load(Relaxed);
        let held = c.fetch_add(1, Relaxed) as usize;
        if held >= per_client {
            c.fetch_sub(1, Relaxed);
            return Err(ForwardLimit::Client);
        }
        let limit = self.limit.load(Relaxed);
        // A heavy client may not take the reserve (the total's last quarter).
        let cap = if held >= (per_client / 16).max(1) { limit - limit / 4 } else { limit };
        if self.pending.fetch_add(1, Relaxed) >= cap {
            self.pending.fetch_sub(1, Relaxed);
            c.fetch_sub(1, Relaxed);
            return Err(ForwardLimit::Total);
        }
        Ok(ForwardPermit { gate: self.clone(), slot })
    }
}

/// The pending-forward total allowed by the file descriptors: each pending
/// forward may hold one socket per upstream server (hedged attempts), and
/// half of the process's descriptors are left to everything else (listeners,
/// TCP clients, and in the agent the relay). `configured` when it fits.
pub(crate) fn fd_bounded(configured: usize, servers: usize) -> usize {
    let soft = nofile_soft_limit().unwrap_or(1024);
    let budget = (soft / 2) / servers.max(1);
    configured.min(budget.max(16)).max(1)
}

#[cfg(unix)]
fn nofile_soft_limit() -> Option<usize> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we pass, which
    // lives across the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (rc == 0).then(|| usize::try_from(r.rlim_cur).unwrap_or(usize::MAX))
}

#[cfg(not(unix))]
fn nofile_soft_limit() -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn total_and_per_client_limits_and_release_on_drop() {
        // Total 8 (the last 2 for light clients: those holding none), share 3.
        let g = Arc::new(ForwardGate::new(8, 3));
        let a: Vec<_> = (0..3).map(|_| g.admit(ip("192.0.2.1")).unwrap()).collect();
        assert_eq!(g.admit(ip("192.0.2.1")).unwrap_err(), ForwardLimit::Client);
        let b: Vec<_> = (0..3).map(|_| g.admit(ip("192.0.2.2")).unwrap()).collect();
        assert_eq!(g.pending(), 6);
        // Heavy (holding one already): not into the reserve.
        let c = g.admit(ip("192.0.2.3")).unwrap();
        assert_eq!(g.admit(ip("192.0.2.3")).unwrap_err(), ForwardLimit::Total);
        let d = g.admit(ip("192.0.2.4")).unwrap();
        assert_eq!(g.pending(), 8);
        assert_eq!(g.admit(ip("192.0.2.5")).unwrap_err(), ForwardLimit::Total);
        // A refused client took nothing: its counter is back at zero.
        assert_eq!(g.clients[g.slot(ip("192.0.2.5"))].load(Relaxed), 0);
        drop(a);
        assert_eq!(g.pending(), 5);
        let e = g.admit(ip("192.0.2.1")).unwrap();
        drop((b, c, d, e));
        assert_eq!(g.pending(), 0);
        assert!(g.clients.iter().all(|c| c.load(Relaxed) == 0));
        g.set_limits(1, 1);
        let _one = g.admit(ip("192.0.2.9")).unwrap();
        assert_eq!(g.admit(ip("192.0.2.8")).unwrap_err(), ForwardLimit::Total);
    }

    #[test]
    fn heavy_clients_leave_the_last_quarter_to_light_ones() {
        // Total 100, share 64: holding 4 or more makes a client heavy.
        let g = Arc::new(ForwardGate::new(100, 64));
        let heavy: Vec<_> = (0..3u8)
            .flat_map(|i| {
                let g = g.clone();
                (0..64).map_while(move |_| g.admit(IpAddr::from([192, 0, 2, i])).ok())
            })
            .collect();
        // 64 (the first client's share), 11 more up to three quarters, and the
        // third client's first 4, taken while it was still light.
        assert_eq!(heavy.len(), 64 + 11 + 4);
        assert_eq!(g.admit(ip("192.0.2.1")).unwrap_err(), ForwardLimit::Total);
        // Light clients still get in, up to the total.
        let got: Vec<_> = (0..40u8).filter_map(|i| g.admit(IpAddr::from([198, 51, 100, i])).ok()).collect();
        assert_eq!(got.len(), 21);
        assert_eq!(g.pending(), 100);
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        assert_eq!(client_key(ip("2001:db8:1:2::1")), client_key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(client_key(ip("2001:db8:1:2::1")), client_key(ip("2001:db8:1:3::1")));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), client_key(ip("192.0.2.1")));
        assert_ne!(client_key(ip("::c000:201")), client_key(ip("192.0.2.1")));
        let g = Arc::new(ForwardGate::new(100, 2));
        let _p = (g.admit(ip("2001:db8::1")).unwrap(), g.admit(ip("2001:db8::2")).unwrap());
        assert_eq!(g.admit(ip("2001:db8::3")).unwrap_err(), ForwardLimit::Client);
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_total() {
        let g = Arc::new(ForwardGate::new(64, 1000));
        // Permits held at once (the gate's own counter may briefly read one
        // over while a refused admission backs out).
        let (held, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (g, held, peak) = (g.clone(), held.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..20_000u32 {
                        let client = IpAddr::from([10, t, (i >> 8) as u8, i as u8]);
                        if let Ok(p) = g.admit(client) {
                            peak.fetch_max(held.fetch_add(1, Relaxed) + 1, Relaxed);
                            mine.push(p);
                        }
                        if mine.len() > 20 || i % 7 == 0 {
                            held.fetch_sub(mine.len(), Relaxed);
                            mine.clear();
                        }
                    }
                    held.fetch_sub(mine.len(), Relaxed);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Relaxed) <= 64);
        assert_eq!(g.pending(), 0);
    }

    #[test]
    fn the_total_fits_the_descriptors() {
        let soft = nofile_soft_limit().unwrap();
        assert_eq!(fd_bounded(usize::MAX, 2), ((soft / 2) / 2).max(16));
        assert_eq!(fd_bounded(10, 2), 10, "16 or more always fit");
        assert!(fd_bounded(1024, 0) >= 1);
    }
}

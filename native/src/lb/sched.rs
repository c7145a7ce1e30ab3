//! Weighted round robin without locks: a precomputed slot sequence.
//!
//! Envoy's weighted round robin is an EDF scheduler (a heap per worker
//! thread). pymesh shares one snapshot between threads, so instead the EDF
//! order is computed once at build time into a table of slots, and a pick is
//! `slots[counter++ % len]` on one atomic counter that starts at a random
//! point (so a fleet of proxies does not send its first picks to the same
//! host, the reason for Envoy's `createWithPicks`, PRs #31592/#32233).
//!
//! Each host gets `weight / gcd(weights)` slots, exactly Envoy's long-run
//! ratio. If that would exceed [`SLOT_CAP`] slots (weights like 1 and
//! 1,000,003), the counts are scaled to the cap with the largest-remainder
//! method and at least one slot each: each host's share is then within half a
//! slot of exact (documented deviation; EDF is exact in the limit).

/// Largest slot table for `n` hosts: 64k, or 16 per host for large clusters.
pub(crate) fn slot_cap(n: usize) -> usize {
    (n * 16).max(1 << 16)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Slot counts per host, each >= 1 for a positive weight.
pub(crate) fn slot_counts(weights: &[u64], cap: usize) -> Vec<u64> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let counts: Vec<u64> = weights.iter().map(|&w| w / g).collect();
    let total: u128 = counts.iter().map(|&c| u128::from(c)).sum();
    if total <= cap as u128 {
        return counts;
    }
    // Largest remainder over cap slots, each positive weight at least 1 slot.
    let cap = cap as u128;
    let mut out: Vec<u64> = Vec::with_capacity(counts.len());
    let mut rem: Vec<(u128, usize)> = Vec::with_capacity(counts.len());
    let mut used: u128 = 0;
    for (i, &c) in counts.iter().enumerate() {
        let exact = u128::from(c) * cap;
        let q = (exact / total).max(u128::from(c > 0));
        used += q;
        out.push(q as u64);
        rem.push((exact % total, i));
    }
    rem.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rem.iter().take(cap.saturating_sub(used) as usize) {
        out[i] += 1;
    }
    out
}

/// The EDF order of `counts`: host `i`'s `k`-th turn comes at virtual time
/// `(k + 1) / counts[i]`; ties go to the lower index. Returns host positions.
pub(crate) fn interleave(counts: &[u64]) -> Box<[u32]> {
    let total: usize = counts.iter().map(|&c| c as usize).sum();
    // Keys are (k + 1) / c as 64-bit fixed point: comparing a/b < c/d exactly
    // would need 128-bit products per comparison; 2^-40 resolution is far
    // below the spacing of any two distinct deadlines of a table <= 2^24 slots.
    let mut keyed: Vec<(u64, u32)> = Vec::with_capacity(total);
    for (i, &c) in counts.iter().enumerate() {
        for k in 0..c {
            let key = ((u128::from(k + 1) << 40) / u128::from(c)) as u64;
            keyed.push((key, i as u32));
        }
    }
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Builds the slot sequence of weights (positions into the weight list).
pub(crate) fn weighted_slots(weights: &[u64]) -> Box<[u32]> {
    interleave(&slot_counts(weights, slot_cap(weights.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_counts_and_smooth_order() {
        let s = weighted_slots(&[2, 4, 6]);
        assert_eq!(s.len(), 6);
        let count = |h| s.iter().filter(|&&x| x == h).count();
        assert_eq!((count(0), count(1), count(2)), (1, 2, 3));
        // The heaviest host never takes more than two turns in a row.
        assert!(s.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])));
    }

    #[test]
    fn capped_counts_keep_every_host_and_the_total() {
        let c = slot_counts(&[1, 1_000_003, 500_000], 1000);
        assert_eq!(c.iter().sum::<u64>(), 1000);
        assert!(c[0] >= 1);
        assert!((c[1] as i64 - 666).abs() <= 1 && (c[2] as i64 - 333).abs() <= 1, "{c:?}");
    }
}

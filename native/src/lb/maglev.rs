//! Maglev, as Envoy builds it (`maglev_lb.cc`, the paper's listing 1 with
//! Envoy's weighting): hosts sorted by hash key; each host's permutation is
//! `offset = xxHash64(key) % M`, `skip = xxHash64(key, seed 1) % (M - 1) + 1`;
//! on iteration `k` a host with normalised weight `w` claims its next free
//! slot when `k * w >= target`, then adds the largest normalised weight to
//! its target. Same hosts and table size as Envoy give the same table.
//!
//! Build speed: the permutation advances by addition instead of a multiply
//! and a modulo per probe, and occupancy is a bitmap (8 KiB for 65537 slots,
//! it stays in L1) so the probe loop rarely touches the table itself.

use xxhash_rust::xxh64::xxh64;

#[derive(Debug)]
pub(crate) struct Maglev {
    /// Host position per slot; u16 when the source has < 65536 hosts halves
    /// the table (128 KiB for M = 65537), like Envoy's compact table.
    table: Table,
}

#[derive(Debug)]
enum Table {
    Small(Box<[u16]>),
    Large(Box<[u32]>),
}

impl Maglev {
    /// `keys[i]`, `weights[i]` (positive) describe host `i`; `m` is prime.
    pub(crate) fn build(keys: &[&str], weights: &[f64], m: u64) -> Maglev {
        let n = keys.len();
        let total: f64 = weights.iter().sum();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| keys[a].cmp(keys[b]));
        struct Entry {
            host: u32,
            pos: u64,
            skip: u64,
            /// `k * skip % m` for k = 1..=8: the next eight probes' offsets.
            steps: [u64; 8],
            /// skip^-1 mod m.
            inv: u64,
            weight: f64,
            target: f64,
        }
        let mut entries: Vec<Entry> = order
            .iter()
            .map(|&i| {
                let k = keys[i].as_bytes();
                let skip = xxh64(k, 1) % (m - 1) + 1;
                Entry {
                    host: i as u32,
                    pos: xxh64(k, 0) % m,
                    skip,
                    steps: std::array::from_fn(|k| (k as u64 + 1) * skip % m),
                    inv: mod_pow(skip, m - 2, m),
                    weight: weights[i] / total,
                    target: 0.0,
                }
            })
            .collect();
        let max_w = entries.iter().map(|e| e.weight).fold(0.0, f64::max);
        let mut occupied = vec![0u64; (m as usize).div_ceil(64)];
        // Written straight into the final table's width: no u32 table to
        // allocate, fill and narrow afterwards (a 256 KiB round trip).
        let small = n <= usize::from(u16::MAX) + 1;
        let mut small_slots: Vec<u16> = if small { vec![0; m as usize] } else { Vec::new() };
        let mut large_slots: Vec<u32> = if small { Vec::new() } else { vec![0; m as usize] };
        let mut filled = 0u64;
        // Below this many free slots the direct search beats walking.
        let switch_at = ((m / 4) as f64).sqrt() as u64;
        let mut free: Option<Vec<u64>> = None;
        let mut iteration: u32 = 1;
        while filled < m && n > 0 {
            for e in entries.iter_mut() {
                if filled >= m {
                    break;
                }
                if f64::from(iteration) * e.weight < e.target {
                    continue;
                }
                e.target += max_w;
                // `pos` is offset + skip * next (mod m), advanced in place.
                let mut c = match free.as_mut() {
                    // Few slots left: instead of walking the permutation
                    // (m / free probes on average), find directly which
                    // free slot comes first in it: slot s is `d` steps
                    // ahead with d = (s - pos) / skip (mod m, m prime).
                    // The slot is the one a walk would reach first.
                    Some(fl) => {
                        let mut best = (u64::MAX, 0usize);
                        for (j, &s) in fl.iter().enumerate() {
                            let d = if s >= e.pos { s - e.pos } else { s + m - e.pos } * e.inv % m;
                            if d < best.0 {
                                best = (d, j);
                            }
                        }
                        fl.swap_remove(best.1)
                    }
                    None => {
                        // Eight probes per step, without a branch per
                        // probe: their positions do not depend on each
                        // other, the free ones become a bit mask, and the
                        // lowest set bit is the first free slot in
                        // permutation order. One (rarely taken late)
                        // branch per eight probes instead of a likely
                        // mispredicted one per probe.
                        let mut c = e.pos;
                        let add = |a: u64, b: u64| if a + b >= m { a + b - m } else { a + b };
                        loop {
                            let mut cand = [c; 8];
                            let mut free = 0u32;
                            for (k, slot) in cand.iter_mut().enumerate() {
                                let x = if k == 0 { c } else { add(c, e.steps[k - 1]) };
                                *slot = x;
                                let bit = (occupied[(x >> 6) as usize] >> (x & 63)) & 1;
                                free |= ((bit ^ 1) as u32) << k;
                            }
                            if free != 0 {
                                break cand[free.trailing_zeros() as usize];
                            }
                            c = add(c, e.steps[7]);
                        }
                    }
                };
                occupied[(c >> 6) as usize] |= 1 << (c & 63);
                if small {
                    small_slots[c as usize] = e.host as u16;
                } else {
                    large_slots[c as usize] = e.host;
                }
                c += e.skip;
                if c >= m {
                    c -= m;
                }
                e.pos = c;
                filled += 1;
                if free.is_none() && m - filled <= switch_at {
                    free = Some((0..m).filter(|&x| occupied[(x >> 6) as usize] & (1 << (x & 63)) == 0).collect());
                }
            }
            iteration += 1;
        }
        let table = if small { Table::Small(small_slots.into()) } else { Table::Large(large_slots.into()) };
        Maglev { table }
    }

    #[inline]
    pub(crate) fn lookup(&self, h: u64) -> u32 {
        match &self.table {
            Table::Small(t) => u32::from(t[(h % t.len() as u64) as usize]),
            Table::Large(t) => t[(h % t.len() as u64) as usize],
        }
    }

    pub(crate) fn counts(&self, n_hosts: usize) -> Vec<u64> {
        let mut c = vec![0u64; n_hosts];
        match &self.table {
            Table::Small(t) => t.iter().for_each(|&h| c[h as usize] += 1),
            Table::Large(t) => t.iter().for_each(|&h| c[h as usize] += 1),
        }
        c
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        match &self.table {
            Table::Small(t) => t.len() * 2,
            Table::Large(t) => t.len() * 4,
        }
    }
}

/// b^e mod m (Fermat's little theorem gives inverses mod a prime).
fn mod_pow(mut b: u64, mut e: u64, m: u64) -> u64 {
    let mut r = 1u64;
    b %= m;
    while e > 0 {
        if e & 1 == 1 {
            r = (u128::from(r) * u128::from(b) % u128::from(m)) as u64;
        }
        b = (u128::from(b) * u128::from(b) % u128::from(m)) as u64;
        e >>= 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_docs_weights_1_2_give_21846_and_43691_entries() {
        let m = Maglev::build(&["10.0.0.1:90", "10.0.0.2:90"], &[1.0, 2.0], 65537);
        let mut c = m.counts(2);
        c.sort_unstable();
        assert_eq!(c, vec![21846, 43691]);
    }

    /// Envoy's loop, literally: one probe at a time, `(offset + skip * next) % m`.
    fn naive(keys: &[&str], weights: &[f64], m: u64) -> Vec<u32> {
        let total: f64 = weights.iter().sum();
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[a].cmp(keys[b]));
        let mut e: Vec<(usize, u64, u64, f64, f64, u64)> = order
            .iter()
            .map(|&i| {
                let k = keys[i].as_bytes();
                (i, xxh64(k, 0) % m, xxh64(k, 1) % (m - 1) + 1, weights[i] / total, 0.0, 0)
            })
            .collect();
        let max_w = e.iter().map(|x| x.3).fold(0.0, f64::max);
        let mut table = vec![u32::MAX; m as usize];
        let (mut filled, mut it) = (0u64, 1u32);
        while filled < m {
            for x in e.iter_mut() {
                if filled >= m {
                    break;
                }
                if f64::from(it) * x.3 < x.4 {
                    continue;
                }
                x.4 += max_w;
                let mut c = (x.1 + x.2 * x.5) % m;
                while table[c as usize] != u32::MAX {
                    x.5 += 1;
                    c = (x.1 + x.2 * x.5) % m;
                }
                table[c as usize] = x.0 as u32;
                x.5 += 1;
                filled += 1;
            }
            it += 1;
        }
        table
    }

    /// Same hosts and table size, same table as Envoy: a mesh that mixes
    /// Envoy and pymesh proxies sends each key to the same host from both.
    /// Checked at the default size, a small prime, and 655,373 (the size
    /// at which one removal of 100 hosts moves <= 1.2x the optimum; see
    /// `lb::tests::maglev_disruption_per_removal_default_and_larger_table`).
    #[test]
    fn table_equals_envoys_literal_loop() {
        let keys: Vec<String> = (0..37).map(|i| format!("10.1.{}.{}:443", i % 3, i)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let weights: Vec<f64> = (0..37).map(|i| f64::from(1 + i % 5)).collect();
        for m in [65537u64, 313, 655_373] {
            let fast = Maglev::build(&refs, &weights, m);
            let want = naive(&refs, &weights, m);
            let got: Vec<u32> = (0..m).map(|h| fast.lookup(h)).collect();
            assert_eq!(got, want, "m = {m}");
        }
    }

    #[test]
    fn equal_weights_fill_evenly_and_every_slot() {
        let keys: Vec<String> = (0..100).map(|i| format!("10.0.{}.{}:80", i / 256, i % 256)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let m = Maglev::build(&refs, &vec![1.0; 100], 65537);
        let c = m.counts(100);
        assert_eq!(c.iter().sum::<u64>(), 65537);
        assert!(c.iter().all(|&x| x == 655 || x == 656), "{c:?}");
    }
}

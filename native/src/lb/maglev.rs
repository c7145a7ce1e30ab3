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
            weight: f64,
            target: f64,
        }
        let mut entries: Vec<Entry> = order
            .iter()
            .map(|&i| {
                let k = keys[i].as_bytes();
                Entry {
                    host: i as u32,
                    pos: xxh64(k, 0) % m,
                    skip: xxh64(k, 1) % (m - 1) + 1,
                    weight: weights[i] / total,
                    target: 0.0,
                }
            })
            .collect();
        let max_w = entries.iter().map(|e| e.weight).fold(0.0, f64::max);
        let mut occupied = vec![0u64; (m as usize).div_ceil(64)];
        let mut slots = vec![0u32; m as usize];
        let mut filled = 0u64;
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
                let mut c = e.pos;
                while occupied[(c >> 6) as usize] & (1 << (c & 63)) != 0 {
                    c += e.skip;
                    if c >= m {
                        c -= m;
                    }
                }
                occupied[(c >> 6) as usize] |= 1 << (c & 63);
                slots[c as usize] = e.host;
                c += e.skip;
                if c >= m {
                    c -= m;
                }
                e.pos = c;
                filled += 1;
            }
            iteration += 1;
        }
        let table = if n <= usize::from(u16::MAX) + 1 {
            Table::Small(slots.iter().map(|&h| h as u16).collect())
        } else {
            Table::Large(slots.into())
        };
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

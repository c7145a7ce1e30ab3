//! Ring hash (ketama), as Envoy builds it (`ring_hash_lb.cc`).
//!
//! Host weights are normalised to sum to 1; `scale = min(ceil(min_w *
//! min_ring) / min_w, max_ring)`; walking the hosts with running totals, each
//! host adds entries `<hash key>_<i>` hashed with xxHash64 until the running
//! count reaches its running target. Entries are sorted by hash; a lookup
//! takes the first entry whose hash is >= the request's hash, wrapping to the
//! first. Keys are identical to Envoy's, so the same hosts give the same ring.
//!
//! Lookup speed: besides the sorted hashes, a bucket index on the top bits of
//! the hash narrows the binary search to the few entries of one bucket.

use std::fmt::Write;

use super::rng::hash_key;

#[derive(Debug)]
pub(crate) struct Ring {
    hashes: Box<[u64]>,
    /// Position of each entry's host in the source's host list.
    hosts: Box<[u32]>,
    /// `index[b]` = first entry whose hash's top `bits` are >= b; len 2^bits + 1.
    index: Box<[u32]>,
    shift: u32,
}

impl Ring {
    /// `keys[i]` and `weights[i]` (positive) describe host `i`.
    pub(crate) fn build(keys: &[&str], weights: &[f64], min_size: u64, max_size: u64) -> Ring {
        let total: f64 = weights.iter().sum();
        let norm: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let min_w = norm.iter().copied().fold(f64::INFINITY, f64::min);
        let scale = ((min_w * min_size as f64).ceil() / min_w).min(max_size as f64);
        let size = scale.ceil() as usize;
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(size);
        let mut key_buf = String::with_capacity(96);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        // Envoy walks hosts in the order given; sorting by key first makes
        // the ring independent of input order (the entries are the same
        // anyway when scale * weight is whole, the common equal-weight case).
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[a].cmp(keys[b]));
        for i in order {
            target += scale * norm[i];
            let mut k = 0u64;
            while current < target {
                key_buf.clear();
                key_buf.push_str(keys[i]);
                let _ = write!(key_buf, "_{k}");
                entries.push((hash_key(key_buf.as_bytes()), i as u32));
                k += 1;
                current += 1.0;
            }
        }
        // Sorting by (hash, host) keeps equal hashes (never seen in practice) deterministic.
        entries.sort_unstable();
        let bits = (entries.len().max(2).next_power_of_two().trailing_zeros()).clamp(1, 24);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = vec![0u32; buckets + 1];
        let mut e = 0usize;
        for (b, slot) in index.iter_mut().enumerate().take(buckets) {
            while e < entries.len() && ((entries[e].0 >> shift) as usize) < b {
                e += 1;
            }
            *slot = e as u32;
        }
        index[buckets] = entries.len() as u32;
        let (hashes, hosts): (Vec<u64>, Vec<u32>) = entries.into_iter().unzip();
        Ring { hashes: hashes.into(), hosts: hosts.into(), index: index.into(), shift }
    }

    /// The host position for hash `h`.
    #[inline]
    pub(crate) fn lookup(&self, h: u64) -> u32 {
        let b = (h >> self.shift) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        let pos = lo + self.hashes[lo..hi].partition_point(|&x| x < h);
        // Past the bucket: the answer is the next bucket's first entry, i.e. `hi`.
        let pos = if pos == self.hashes.len() { 0 } else { pos };
        self.hosts[pos]
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Entries per host position (inspection, Envoy's min/max_hashes_per_host).
    pub(crate) fn counts(&self, n_hosts: usize) -> Vec<u64> {
        let mut c = vec![0u64; n_hosts];
        for &h in self.hosts.iter() {
            c[h as usize] += 1;
        }
        c
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.hashes.len() * 12 + self.index.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_matches_a_plain_binary_search() {
        let keys: Vec<String> = (0..37).map(|i| format!("10.0.0.{i}:80")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let ring = Ring::build(&refs, &vec![1.0; 37], 1024, 8 << 20);
        assert_eq!(ring.len(), 37 * 28); // ceil(1024 / 37) = 28 each
        let mut rng = crate::lb::rng::Rng::new(7);
        for _ in 0..20_000 {
            let h = rng.next_u64();
            let p = ring.hashes.partition_point(|&x| x < h);
            let want = ring.hosts[if p == ring.hashes.len() { 0 } else { p }];
            assert_eq!(ring.lookup(h), want);
        }
        assert_eq!(
            ring.lookup(u64::MAX),
            ring.hosts[if ring.hashes[ring.len() - 1] == u64::MAX { ring.len() - 1 } else { 0 }]
        );
        assert_eq!(ring.lookup(0), ring.hosts[0]);
    }

    #[test]
    fn weights_scale_entries() {
        let ring = Ring::build(&["a:1", "b:1"], &[1.0, 3.0], 1024, 8 << 20);
        // min_w = 0.25: scale = ceil(256) / 0.25 = 1024 entries, 256 and 768.
        assert_eq!(ring.counts(2), vec![256, 768]);
    }
}

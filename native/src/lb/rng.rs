//! The random source of picks: wyrand, a 64-bit generator that is fast (one
//! multiply per value), seedable (tests, the fuzz target and `--seed` runs are
//! reproducible) and good enough for load balancing (it passes BigCrush).
//! Envoy uses a per-worker random generator the same way.

use std::hash::{BuildHasher, Hasher};

/// A seedable pseudo-random generator. Not cryptographic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator that always produces the same sequence for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x2d35_8dcc_aa6c_78a5)
    }

    /// A generator seeded from the process's hash randomness, the time and
    /// the thread (distinct per call).
    pub fn from_entropy() -> Rng {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.write_u64(std::thread::current().id().as_u64_compat());
        Rng::new(h.finish())
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A value in `0..n` (`n > 0`) by multiply-shift (Lemire), without the
    /// division of `%`; its bias is below 2^-32 for any realistic `n`.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// `ThreadId::as_u64` is unstable; hashing the id gives the same effect.
trait ThreadIdCompat {
    fn as_u64_compat(&self) -> u64;
}

impl ThreadIdCompat for std::thread::ThreadId {
    fn as_u64_compat(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(self, &mut h);
        h.finish()
    }
}

/// splitmix64: derives independent seeds (per snapshot, per source) from one.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of a request's hash key, as Envoy computes it for ring hash and
/// Maglev (`HashUtil::xxHash64`, seed 0).
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(key, 0)
}

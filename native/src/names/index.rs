//! The open-addressing hash index behind a name table.
//!
//! One slot is 12 bytes: a tag (21 hash bits, the form, the key length), the
//! entry it resolves to, and where the key's bytes live in the table's name
//! arena. Keys are never copied: short forms (`name.namespace.svc`,
//! `name.namespace`, `name`) are prefixes of a string already in the arena.
//! Linear probing at a load factor of at most 2/3; a position is derived from
//! the low hash bits with a multiply (no power-of-two rounding), so memory
//! follows the key count closely.
//!
//! The slot carries both the entry and the key's place on purpose: with them
//! a hit's two reads after the slot (key bytes, entry record) are independent
//! and their cache misses overlap. An 8-byte slot (tag, entry) would have to
//! find the key through the record, one more miss in series.

use super::table::Form;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// 0 = empty. Otherwise hash bits 31..11 | form << 8 | key length.
    tag: u32,
    entry: u32,
    key_off: u32,
}

const LEN_MASK: u32 = 0xFF;
const FORM_SHIFT: u32 = 8;
const FORM_MASK: u32 = 0x7 << FORM_SHIFT;
const HASH_MASK: u32 = !(LEN_MASK | FORM_MASK);

/// A built index: read-only, shared by all readers of a snapshot.
pub(crate) struct Index {
    slots: Box<[Slot]>,
    seed: u64,
}

/// What a lookup found: the entry, the form under which it was indexed, and
/// where its key starts in the arena.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    pub entry: u32,
    pub form: Form,
}

/// Asks the CPU to start loading the cache line holding `x`. Only a hint:
/// nothing is read, so any address would do; it never faults.
#[inline]
pub(crate) fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has; it
        // is a hint that neither reads nor writes memory visibly and never
        // faults, and the pointer comes from a live reference anyway.
        #[allow(unused_unsafe)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast::<i8>())
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

#[inline]
fn hash(key: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, seed)
}

#[inline]
fn tag_of(h: u64, len: usize) -> u32 {
    ((h >> 32) as u32 & HASH_MASK) | (len as u32 & LEN_MASK)
}

#[inline]
fn home(h: u64, cap: usize) -> usize {
    ((h as u32 as u64 * cap as u64) >> 32) as usize
}

impl Index {
    /// An index sized for `keys` keys, with a per-table random seed so that
    /// probe sequences cannot be predicted from outside.
    pub fn with_capacity(keys: usize, seed: u64) -> Index {
        let cap = if keys == 0 { 0 } else { keys + keys / 2 + 1 };
        Index { slots: vec![Slot::default(); cap].into_boxed_slice(), seed }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }

    /// Looks a normalised key up. `arena` is the table's name arena.
    #[inline]
    pub fn get(&self, key: &[u8], arena: &[u8]) -> Option<Found> {
        self.get_hashed(self.hash(key), key, arena)
    }

    /// The hash `get_hashed` wants for `key`.
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        hash(key, self.seed)
    }

    /// Starts loading the slot where the probe for hash `h` begins.
    #[inline]
    pub fn prefetch_home(&self, h: u64) {
        if !self.slots.is_empty() {
            prefetch(&self.slots[home(h, self.slots.len())]);
        }
    }

    /// The first slot of the probe for (`h`, `len`) whose tag matches,
    /// without comparing the key: `(entry, key_off)` to prefetch.
    #[inline]
    pub fn peek(&self, h: u64, len: usize) -> Option<(u32, u32)> {
        let cap = self.slots.len();
        if cap == 0 || len > LEN_MASK as usize {
            return None;
        }
        let want = tag_of(h, len);
        let mut i = home(h, cap);
        loop {
            let s = &self.slots[i];
            if s.tag == 0 {
                return None;
            }
            if s.tag & !FORM_MASK == want {
                return Some((s.entry, s.key_off));
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    /// `get` with the key's hash already computed.
    #[inline]
    pub fn get_hashed(&self, h: u64, key: &[u8], arena: &[u8]) -> Option<Found> {
        let cap = self.slots.len();
        if cap == 0 || key.len() > LEN_MASK as usize {
            return None;
        }
        let want = tag_of(h, key.len());
        let mut i = home(h, cap);
        loop {
            let s = &self.slots[i];
            if s.tag == 0 {
                return None;
            }
            if s.tag & !FORM_MASK == want && arena.get(s.key_off as usize..s.key_off as usize + key.len()) == Some(key)
            {
                return Some(Found { entry: s.entry, form: Form::from_bits((s.tag & FORM_MASK) >> FORM_SHIFT) });
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    /// Inserts `key` (stored at `arena[key_off..]`) for `entry` under `form`.
    /// When the key is already present, `prefer_new(existing_entry,
    /// existing_form)` decides who keeps it; it may also return an error,
    /// which is passed through.
    pub fn insert<E>(
        &mut self,
        key: &[u8],
        key_off: u32,
        entry: u32,
        form: Form,
        arena: &[u8],
        mut prefer_new: impl FnMut(u32, Form) -> Result<bool, E>,
    ) -> Result<(), E> {
        let cap = self.slots.len();
        debug_assert!(cap > 0 && !key.is_empty() && key.len() <= LEN_MASK as usize);
        let h = hash(key, self.seed);
        let want = tag_of(h, key.len());
        let mut i = home(h, cap);
        loop {
            let s = &mut self.slots[i];
            if s.tag == 0 {
                *s = Slot { tag: want | ((form as u32) << FORM_SHIFT), entry, key_off };
                return Ok(());
            }
            if s.tag & !FORM_MASK == want && arena.get(s.key_off as usize..s.key_off as usize + key.len()) == Some(key)
            {
                let old_form = Form::from_bits((s.tag & FORM_MASK) >> FORM_SHIFT);
                if prefer_new(s.entry, old_form)? {
                    *s = Slot { tag: want | ((form as u32) << FORM_SHIFT), entry, key_off };
                }
                return Ok(());
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }
}

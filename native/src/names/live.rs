//! Publishing snapshots: build off the hot path, swap atomically.
//!
//! Readers call [`LiveNameTable::load`] (one atomic load, no lock, no
//! reference-count traffic on the fast path) and keep reading the snapshot
//! they got even while a new one is published; the old snapshot is freed when
//! its last reader lets go. A reader can never observe a half-built table
//! because a table is only reachable once [`super::NameTable::build`] returned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::NameTable;

/// The table currently serving, or none before the first one arrives (then a
/// DNS proxy forwards every query instead of failing it, unlike Istio).
#[derive(Debug, Default)]
pub struct LiveNameTable {
    current: ArcSwapOption<NameTable>,
    generation: AtomicU64,
}

/// A reader's hold on one snapshot.
pub type Snapshot = arc_swap::Guard<Option<Arc<NameTable>>>;

impl LiveNameTable {
    pub fn new() -> LiveNameTable {
        LiveNameTable::default()
    }

    /// The snapshot serving now.
    #[inline]
    pub fn load(&self) -> Snapshot {
        self.current.load()
    }

    /// Publishes `table`, returning the new generation number (1 for the first).
    pub fn store(&self, table: Arc<NameTable>) -> u64 {
        self.current.store(Some(table));
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// How many tables have been published.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

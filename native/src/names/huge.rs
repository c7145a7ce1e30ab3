//! Transparent huge pages for a table's large arrays.
//!
//! A lookup in a table of a million names reads a few cache lines at random
//! out of ~100 MB: with 4 KiB pages nearly every one of them also misses the
//! TLB, and the page walk (two-dimensional under a hypervisor) costs as much
//! as the miss itself. 2 MiB pages cut the pages to walk 512-fold. With THP
//! in `madvise` mode (the usual distribution default) only regions marked
//! `MADV_HUGEPAGE` get them, so the table marks its large arrays itself.

/// Arrays smaller than this stay on normal pages: the TLB covers them.
const MIN_BYTES: usize = 4 << 20;
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the buffer of a vector (or string) with huge
/// pages: `ptr` and `capacity` are its `as_ptr()` and `capacity()`. Call it
/// on a freshly allocated, still empty one, before its pages are first
/// touched: pages faulted in afterwards come as huge pages. Purely advisory;
/// failure (THP disabled, another OS) changes nothing but speed.
pub(crate) fn advise<T>(ptr: *const T, capacity: usize) {
    let bytes = capacity.saturating_mul(std::mem::size_of::<T>());
    if bytes < MIN_BYTES {
        return;
    }
    // Only whole huge pages inside the allocation.
    let base = ptr as usize;
    let start = base.next_multiple_of(HUGE_PAGE);
    let end = (base + bytes) & !(HUGE_PAGE - 1);
    if end > start {
        madvise_huge(start, end - start);
    }
}

#[cfg(target_os = "linux")]
fn madvise_huge(start: usize, len: usize) {
    // SAFETY: [start, start + len) lies inside one live allocation (the
    // caller's vector's capacity; `advise` rounds inwards to whole huge
    // pages), so it is page-aligned and mapped. MADV_HUGEPAGE
    // changes only how the kernel backs those pages, never their contents or
    // validity, so no Rust-visible memory changes. The result is ignored: the
    // advice is optional.
    unsafe {
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn madvise_huge(_start: usize, _len: usize) {}

//! pymesh's native core.
//!
//! Plain Rust with no knowledge of its callers: the Python extension
//! (`bindings/python`) and the C ABI (`bindings/capi`) are thin crates beside
//! it that convert and delegate. Everything here is testable with `cargo test`.
//!
//! Tables are built off the hot path into immutable snapshots and published
//! with one atomic swap ([`names::LiveNameTable`]); the serving path only reads.

pub mod dns;
pub mod error;
pub mod lb;
pub mod mesh;
pub mod names;
pub mod relay;

pub use error::{Error, Result};

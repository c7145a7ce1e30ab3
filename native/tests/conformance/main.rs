//! The Rust drivers of the shared conformance cases (`tests/cases/*.cases`),
//! one per module, in one test binary: every integration test crate is a
//! separate binary linked against the whole core (with the release profile's
//! LTO), so one crate instead of three saves two of those links per build.

mod lb;
mod mesh;
mod names;

//! The DNS proxy: mesh names answered from the name table, everything else
//! forwarded upstream and cached.
//!
//! - `wire`: hostile-input parsing into validated types, a compressing writer;
//! - `table`: a name table plus the indexes DNS needs, swapped atomically;
//! - `answer`: local answers straight into the caller's buffer.

pub mod answer;
pub mod table;
pub mod wire;

pub use answer::{answer_packet, answer_query, AnswerConfig, Decision, Outcome, Transport, DEFAULT_TTL};
pub use table::{AnswerSource, DnsSnapshot, DnsTable, LiveDnsTable};
pub use wire::{parse_message, parse_query, Message, NameBuf, Query, Record, WireError};

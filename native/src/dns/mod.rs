//! The DNS proxy: mesh names answered from the name table, everything else
//! forwarded upstream and cached.
//!
//! - `wire`: hostile-input parsing into validated types, a compressing writer;
//! - `table`: a name table plus the indexes DNS needs, swapped atomically;
//! - `answer`: local answers straight into the caller's buffer;
//! - `cache`: forwarded answers, positive and negative (RFC 2308);
//! - `upstream`: hedged, health-ordered, spoof-resistant forwarding;
//! - `forward`: cache + coalescing + upstreams, as one reply function;
//! - `metrics`: counters, Prometheus text with Istio's names;
//! - `acl`: which clients a listener off loopback serves;
//! - `server`: UDP workers (SO_REUSEPORT, recvmmsg/sendmmsg) and TCP, with
//!   their limits (pending forwards, connections, in-flight queries).

pub mod acl;
pub mod answer;
pub mod cache;
pub mod forward;
pub mod metrics;
pub mod server;
pub mod table;
pub mod upstream;
pub mod wire;

pub use acl::{AllowList, Cidr};
pub use answer::{answer_packet, answer_query, refuse_packet, AnswerConfig, Decision, Outcome, Transport, DEFAULT_TTL};
pub use metrics::Stats;
pub use server::{Server, ServerConfig, DEFAULT_PORT};
pub use table::{AnswerSource, DnsSnapshot, DnsTable, LiveDnsTable};
pub use upstream::{ServerState, UpstreamConfig};
pub use wire::{parse_message, parse_query, Message, NameBuf, Query, Record, WireError};

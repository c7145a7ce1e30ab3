//! DNS wire format (RFC 1035 §4): hostile-input parsing into validated types,
//! and a writer that compresses names and truncates at a size limit.
//!
//! Parsing never panics and never reads past a bound it checked first: every
//! read goes through [`Reader`], whose methods return a [`WireError`] naming
//! what was being read and at which offset. Names are decompressed into a
//! fixed [`NameBuf`] (255 bytes, RFC 1035 §2.3.4), so a query costs no heap
//! allocation. Compression pointers must point strictly backwards and the
//! decompressed name must stay within 255 bytes, which bounds every loop.
//!
//! - `reader`: the bounds-checked cursor;
//! - `name`: names (decompression, text forms, case-insensitive compares);
//! - `query`: a client's query, validated, and the header-only rejections;
//! - `message`: whole messages from upstreams, records with their names
//!   decompressed;
//! - `writer`: the compressing, truncating writer and the replies built with it.

use std::fmt;

mod message;
mod name;
mod query;
mod reader;
mod writer;

pub use message::{parse_message, Message, Record};
pub use name::{read_name, NameBuf};
pub use query::{parse_query, write_reject, Edns, Query, Reject};
pub use reader::Reader;
pub use writer::{write_response, write_status, write_upstream_query, Full, ReplyShape, Writer, OPT_LEN};

/// Fixed DNS header length.
pub const HEADER_LEN: usize = 12;
/// Longest name on the wire, root label included (RFC 1035 §2.3.4).
pub const MAX_WIRE_NAME: usize = 255;
/// UDP payload limit without EDNS0 (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_LIMIT: usize = 512;
/// The EDNS0 UDP size we advertise and ask upstreams for (DNS flag day 2020).
pub const EDNS_UDP_SIZE: u16 = 1232;
/// The largest reply we send over UDP, whatever size the client advertises:
/// the one rule for every UDP answer (local, cached, forwarded, coalesced),
/// applied by [`Query::udp_limit`]. RFC 6891 §6.2.5 leaves a responder's
/// maximum to the implementation (4096 "as a starting point"); the DNS Flag
/// Day 2020 recommendation, which BIND and Unbound ship as their default,
/// is 1232 bytes: the IPv6 minimum MTU (1280) minus the IPv6 and UDP
/// headers, so a reply is never fragmented (fragments can be spoofed) and a
/// forged-source query of ~40 bytes can never be turned into a reply larger
/// than ~30 times its size (it was 18,927 bytes for a 42-byte query when the
/// client's 65,535 was honoured). A larger answer is truncated with TC and the
/// client retries over TCP (RFC 1035 §4.2.1, RFC 2181 §9, RFC 7766 §5).
pub const MAX_UDP_REPLY: usize = EDNS_UDP_SIZE as usize;
/// Largest DNS message (TCP length prefix, RFC 1035 §4.2.2).
pub const MAX_MESSAGE: usize = 65535;

pub const CLASS_IN: u16 = 1;

/// A record type (RFC 1035 §3.2.2; the IANA "Resource Record (RR) TYPEs"
/// registry). Any value is a type: unknown ones pass through as they are
/// (RFC 3597); the constants are those the proxy treats specially or names
/// in its metrics.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct RType(pub u16);

impl RType {
    pub const A: RType = RType(1);
    pub const NS: RType = RType(2);
    pub const CNAME: RType = RType(5);
    pub const SOA: RType = RType(6);
    pub const PTR: RType = RType(12);
    pub const MX: RType = RType(15);
    pub const TXT: RType = RType(16);
    pub const AAAA: RType = RType(28);
    pub const SRV: RType = RType(33);
    pub const OPT: RType = RType(41);
    /// RFC 9460.
    pub const SVCB: RType = RType(64);
    /// RFC 9460.
    pub const HTTPS: RType = RType(65);
    pub const IXFR: RType = RType(251);
    pub const AXFR: RType = RType(252);
    pub const MAILB: RType = RType(253);
    pub const MAILA: RType = RType(254);
    pub const ANY: RType = RType(255);

    /// The mnemonic of a type named above; None for the others.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            RType::A => "A",
            RType::NS => "NS",
            RType::CNAME => "CNAME",
            RType::SOA => "SOA",
            RType::PTR => "PTR",
            RType::MX => "MX",
            RType::TXT => "TXT",
            RType::AAAA => "AAAA",
            RType::SRV => "SRV",
            RType::OPT => "OPT",
            RType::SVCB => "SVCB",
            RType::HTTPS => "HTTPS",
            RType::IXFR => "IXFR",
            RType::AXFR => "AXFR",
            RType::MAILB => "MAILB",
            RType::MAILA => "MAILA",
            RType::ANY => "ANY",
            _ => return None,
        })
    }
}

/// The mnemonic, or `TYPE<n>` for an unnamed type (RFC 3597 §5).
impl fmt::Display for RType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "TYPE{}", self.0),
        }
    }
}

impl fmt::Debug for RType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A response code: the header's four bits, or twelve with EDNS0's
/// extended bits (RFC 1035 §4.1.1, RFC 6891 §6.1.3).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Rcode(pub u16);

impl Rcode {
    pub const NOERROR: Rcode = Rcode(0);
    pub const FORMERR: Rcode = Rcode(1);
    pub const SERVFAIL: Rcode = Rcode(2);
    pub const NXDOMAIN: Rcode = Rcode(3);
    pub const NOTIMP: Rcode = Rcode(4);
    pub const REFUSED: Rcode = Rcode(5);
    /// RFC 2136 §2.2 (YXDOMAIN to NOTZONE).
    pub const YXDOMAIN: Rcode = Rcode(6);
    pub const YXRRSET: Rcode = Rcode(7);
    pub const NXRRSET: Rcode = Rcode(8);
    pub const NOTAUTH: Rcode = Rcode(9);
    pub const NOTZONE: Rcode = Rcode(10);
    /// RFC 6891 §9: an EDNS version the server does not speak.
    pub const BADVERS: Rcode = Rcode(16);

    /// The mnemonic of a code named above; None for the others.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Rcode::NOERROR => "NOERROR",
            Rcode::FORMERR => "FORMERR",
            Rcode::SERVFAIL => "SERVFAIL",
            Rcode::NXDOMAIN => "NXDOMAIN",
            Rcode::NOTIMP => "NOTIMP",
            Rcode::REFUSED => "REFUSED",
            Rcode::YXDOMAIN => "YXDOMAIN",
            Rcode::YXRRSET => "YXRRSET",
            Rcode::NXRRSET => "NXRRSET",
            Rcode::NOTAUTH => "NOTAUTH",
            Rcode::NOTZONE => "NOTZONE",
            Rcode::BADVERS => "BADVERS",
            _ => return None,
        })
    }

    /// The four bits of the header.
    pub const fn low_bits(self) -> u16 {
        self.0 & 0xF
    }

    /// The eight bits above them, carried in the OPT record.
    pub const fn ext_bits(self) -> u8 {
        (self.0 >> 4) as u8
    }
}

impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "RCODE{}", self.0),
        }
    }
}

impl fmt::Debug for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.1.6 for AD/CD).
pub mod flag {
    pub const QR: u16 = 0x8000;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const RA: u16 = 0x0080;
    pub const AD: u16 = 0x0020;
    pub const CD: u16 = 0x0010;
    pub const OPCODE_MASK: u16 = 0x7800;
}

/// A malformed message: what was being read and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    pub what: &'static str,
    pub at: usize,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed DNS message: {} at offset {}", self.what, self.at)
    }
}

impl std::error::Error for WireError {}

fn err<T>(what: &'static str, at: usize) -> Result<T, WireError> {
    Err(WireError { what, at })
}

#[cfg(test)]
mod tests;

//! DNS: answer one query packet from a table, so an embedding proxy can keep
//! its own sockets and event loop and call pymesh only for the answer.

use std::ffi::c_char;

use pymesh_core::dns::{answer_packet, AnswerConfig, Decision, Transport};

use crate::args;
use crate::error::{boundary, pymesh_status, FfiError};
use crate::table::pymesh_name_table;

/// The TTL pymesh gives local answers unless told otherwise (Istio's 30 s).
pub const PYMESH_DNS_DEFAULT_TTL: u32 = 30;

/// The smallest `out_cap` `pymesh_dns_answer` accepts: every reply over UDP
/// may be 512 bytes (RFC 1035 §4.2.1).
pub const PYMESH_DNS_MIN_OUT: usize = 512;

/// The largest reply `pymesh_dns_answer` writes for a query that came over
/// UDP, whatever size the client advertises (the DNS Flag Day 2020 size:
/// no fragments, and a bounded reply to a forged-source query).
pub const PYMESH_DNS_MAX_UDP_REPLY: usize = 1232;

// The core's cap (`wire::MAX_UDP_REPLY`), spelled out for cbindgen.
const _: () = assert!(PYMESH_DNS_MAX_UDP_REPLY == pymesh_core::dns::wire::MAX_UDP_REPLY);

/// Answers one DNS query packet (`query`, `query_len` bytes as received) from
/// `table`, writing the reply into `out` (`out_cap` bytes, at least
/// `PYMESH_DNS_MIN_OUT`; 65535 is always enough).
///
/// `tcp` is 0 for a query that came over UDP (the reply is truncated, with
/// TC set, to 512 bytes without EDNS0, else to the client's EDNS0 size but
/// never above `PYMESH_DNS_MAX_UDP_REPLY`, so the caller need not cap it) or 1
/// for TCP (up to 65535, without the 2-byte length prefix). `ttl` is the TTL
/// of local records (`PYMESH_DNS_DEFAULT_TTL` for Istio's).
///
/// Returns:
/// - `PYMESH_OK` with `*out_len > 0`: send those bytes back to the client
///   (an answer, NODATA with SOA, or FORMERR/NOTIMP/BADVERS for a malformed
///   query, never larger than the client allows);
/// - `PYMESH_OK` with `*out_len == 0`: send nothing (a runt packet or a
///   response, RFC 5452 §9.1);
/// - `PYMESH_NOT_FOUND` (`*out_len == 0`): not a name of the table, or a
///   query type the table cannot answer: forward the query upstream;
/// - `PYMESH_ERR_INVALID_ARGUMENT` (NULL pointers, `out_cap` too small,
///   `tcp` not 0 or 1), `PYMESH_ERR_PANIC`.
///
/// Malformed packets are not errors: they get their RFC answer or none.
///
/// # Safety
///
/// `table` is NULL or a live table; `query` is readable for `query_len`
/// bytes; `out` is writable for `out_cap` bytes; `out_len` is NULL or
/// writable; `error_message` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pymesh_dns_answer(
    table: *const pymesh_name_table,
    query: *const u8,
    query_len: usize,
    tcp: i32,
    ttl: u32,
    out: *mut u8,
    out_cap: usize,
    out_len: *mut usize,
    error_message: *mut *mut c_char,
) -> pymesh_status {
    // SAFETY: forwarded contracts.
    unsafe {
        boundary(error_message, || {
            if out_len.is_null() {
                return Err(FfiError::invalid_argument("out_len is NULL"));
            }
            out_len.write(0);
            let t = args::handle(table, "table")?;
            let packet = args::bytes(query, query_len, "query")?;
            if out.is_null() {
                return Err(FfiError::invalid_argument("out is NULL"));
            }
            if out_cap < PYMESH_DNS_MIN_OUT {
                return Err(FfiError::invalid_argument(format!(
                    "out_cap is {out_cap}; at least {PYMESH_DNS_MIN_OUT} bytes are needed"
                )));
            }
            let transport = match tcp {
                0 => Transport::Udp,
                1 => Transport::Tcp,
                _ => return Err(FfiError::invalid_argument(format!("tcp must be 0 or 1, got {tcp}"))),
            };
            let buf = std::slice::from_raw_parts_mut(out, out_cap.min(65535));
            let cfg = AnswerConfig { ttl, zones: Vec::new() };
            match answer_packet(Some(&t.table), &cfg, packet, transport, 0, buf) {
                Decision::Reply { len, .. } => {
                    out_len.write(len);
                    Ok(pymesh_status::PYMESH_OK)
                }
                Decision::Drop => Ok(pymesh_status::PYMESH_OK),
                Decision::Forward(_) => Ok(pymesh_status::PYMESH_NOT_FOUND),
            }
        })
    }
}

#[cfg(test)]
#[allow(
    clippy::undocumented_unsafe_blocks,
    reason = "tests call the C ABI as a C program would, with pointers they just made"
)]
mod tests {
    use std::ptr;

    use pymesh_core::dns::{parse_message, wire::RType};

    use super::*;
    use crate::error::pymesh_status::*;
    use crate::{pymesh_name_table_free, pymesh_name_table_from_json};

    fn table() -> *mut pymesh_name_table {
        let json = r#"{"table": {"product.default.svc.cluster.local": {"ips": ["10.0.0.1"], "registry": "Kubernetes",
            "shortname": "product", "namespace": "default"}}}"#;
        let mut t = ptr::null_mut();
        let s = unsafe {
            pymesh_name_table_from_json(json.as_ptr().cast(), json.len(), ptr::null(), &mut t, ptr::null_mut())
        };
        assert_eq!(s, PYMESH_OK);
        t
    }

    fn query(name: &[u8], qtype: u16) -> Vec<u8> {
        let mut p = vec![0xAB, 0xCD, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split(|&b| b == b'.') {
            p.push(l.len() as u8);
            p.extend_from_slice(l);
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p
    }

    fn answer(t: *const pymesh_name_table, q: &[u8], cap: usize) -> (pymesh_status, Vec<u8>) {
        let mut out = vec![0u8; cap];
        let mut len = 0usize;
        let s = unsafe {
            pymesh_dns_answer(t, q.as_ptr(), q.len(), 0, 30, out.as_mut_ptr(), cap, &mut len, ptr::null_mut())
        };
        out.truncate(len);
        (s, out)
    }

    #[test]
    fn answers_forwards_and_drops() {
        let t = table();
        let (s, out) = answer(t, &query(b"product.default.svc.cluster.local", RType::A.0), 512);
        assert_eq!(s, PYMESH_OK);
        let m = parse_message(&out).unwrap();
        assert_eq!(m.id, 0xABCD);
        assert_eq!(m.answers[0].rdata, vec![10, 0, 0, 1]);
        let (s, out) = answer(t, &query(b"www.example.org", RType::A.0), 512);
        assert_eq!((s, out.len()), (PYMESH_NOT_FOUND, 0));
        let (s, out) = answer(t, &[1, 2, 3], 512);
        assert_eq!((s, out.len()), (PYMESH_OK, 0));
        let (s, _) = answer(t, &query(b"product", RType::A.0), 100);
        assert_eq!(s, PYMESH_ERR_INVALID_ARGUMENT);
        let (s, _) = answer(ptr::null(), &query(b"product", RType::A.0), 512);
        assert_eq!(s, PYMESH_ERR_INVALID_ARGUMENT);
        unsafe { pymesh_name_table_free(t) };
    }

    #[test]
    fn udp_replies_never_exceed_the_cap_whatever_the_client_advertises() {
        let ips: Vec<String> = (0..300).map(|i| format!("\"10.1.{}.{}\"", i / 250, i % 250)).collect();
        let json = format!(r#"{{"table": {{"many.example.com": {{"ips": [{}]}}}}}}"#, ips.join(","));
        let mut t = ptr::null_mut();
        let s = unsafe {
            pymesh_name_table_from_json(json.as_ptr().cast(), json.len(), ptr::null(), &mut t, ptr::null_mut())
        };
        assert_eq!(s, PYMESH_OK);
        let mut q = query(b"many.example.com", RType::A.0);
        q[11] = 1; // an OPT advertising 65535
        q.extend_from_slice(&[0, 0, 41, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0]);
        let (s, out) = answer(t, &q, 65535);
        assert_eq!(s, PYMESH_OK);
        assert!(out.len() <= PYMESH_DNS_MAX_UDP_REPLY, "{}", out.len());
        assert!(parse_message(&out).unwrap().flags & 0x0200 != 0, "truncated with TC");
        unsafe { pymesh_name_table_free(t) };
    }
}

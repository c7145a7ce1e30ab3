//! Arbitrary bytes as a DNS query and as an upstream response: parsing
//! returns a value or an error, never panics; every reply the proxy would
//! send re-parses with the strict parser and stays within the client's size
//! limit, never above 1232 bytes over UDP whatever the client advertises
//! (no amplification), and so does a REFUSED reply to a client outside the
//! allow-list; a parsed upstream message re-encoded for a client parses back
//! to the same records (hickory-dns `fuzz/fuzz_targets/message.rs`).

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pymesh_core::dns::answer::reply_limit;
use pymesh_core::dns::wire::{
    flag, parse_message, parse_query, write_response, Edns, NameBuf, Query, RType, ReplyShape, CLASS_IN, MAX_UDP_REPLY,
};
use pymesh_core::dns::{answer_packet, refuse_packet, AnswerConfig, Decision, DnsTable, Transport};
use pymesh_core::names::{NameConfig, NameEntry, NameTable};

fn table() -> &'static DnsTable {
    static T: OnceLock<DnsTable> = OnceLock::new();
    T.get_or_init(|| {
        let entries = vec![
            NameEntry::kubernetes("a.default.svc.cluster.local", "a", "default", ["10.0.0.1", "fd00::1"]),
            NameEntry::new("*.w.example.com", ["10.0.0.2"]),
            NameEntry::kubernetes(
                "many.default.svc.cluster.local",
                "many",
                "default",
                (0..300).map(|i| format!("10.1.{}.{}", i / 250, i % 250)).collect::<Vec<_>>(),
            ),
        ];
        let cfg = NameConfig {
            namespace: "default".into(),
            search: vec!["default.svc.cluster.local".into()],
            ..Default::default()
        };
        DnsTable::new(Arc::new(NameTable::build(&entries, &cfg).unwrap()), 1)
    })
}

fuzz_target!(|data: &[u8]| {
    let cfg = AnswerConfig::new(30, &["svc.cluster.local".into()]).unwrap();
    let mut out = vec![0u8; 65535];
    for (tr, cap) in [(Transport::Udp, 512usize), (Transport::Udp, 65535), (Transport::Tcp, 65535)] {
        match answer_packet(Some(table()), &cfg, data, tr, data.len() as u32, &mut out[..cap]) {
            Decision::Reply { len, .. } => {
                let limit = match (tr, parse_query(data)) {
                    (Transport::Tcp, _) => 65535,
                    (Transport::Udp, Ok(q)) => q.udp_limit(),
                    (Transport::Udp, Err(_)) => 512,
                };
                assert!(len <= limit && len <= cap);
                assert!(tr == Transport::Tcp || len <= MAX_UDP_REPLY);
                let m = parse_message(&out[..len]).expect("our reply must parse");
                assert_eq!(m.id, u16::from_be_bytes([data[0], data[1]]));
                assert!(m.flags & flag::QR != 0);
            }
            Decision::Forward(q) => assert_eq!(parse_query(data).as_ref(), Ok(&q)),
            Decision::Drop => {}
        }
    }
    // A client outside the allow-list: REFUSED, no larger than its query.
    if let Decision::Reply { len, .. } = refuse_packet(data, &mut out) {
        let q = parse_query(data).expect("only queries are refused");
        assert!(len <= 12 + q.qname.as_wire().len() + 4 + 11);
        assert!(parse_message(&out[..len]).expect("our reply must parse").id == q.id);
    }
    // The same bytes as an upstream response, relayed to a client.
    if let Ok(m) = parse_message(data) {
        let q = Query {
            id: 7,
            flags: flag::RD,
            qname: NameBuf::from_text("x.example.com").unwrap(),
            qtype: RType::A,
            qclass: CLASS_IN,
            edns: Some(Edns { udp_size: 1232, ext_rcode: 0, version: 0, dnssec_ok: false }),
        };
        let udp = |size: u16| Query { edns: Some(Edns { udp_size: size, ..q.edns.unwrap() }), ..q.clone() };
        let limits = [reply_limit(&udp(65535), Transport::Udp), reply_limit(&udp(512), Transport::Udp), 1232, 65535];
        assert!(limits[0] == MAX_UDP_REPLY && limits[1] == 512);
        for limit in limits {
            let n = write_response(&q, &m, 0, ReplyShape { limit, edns: q.edns }, &mut out);
            assert!(n <= limit);
            if n == 0 {
                continue;
            }
            let back = parse_message(&out[..n]).expect("re-encoded message must parse");
            assert!(back.answers.len() <= m.answers.len());
            if back.flags & flag::TC == 0 {
                assert_eq!(back.answers.len(), m.answers.len());
                assert_eq!(back.authority.len(), m.authority.len());
                for (a, b) in back.answers.iter().zip(&m.answers) {
                    assert!(a.name.eq_ignore_case(&b.name) && a.rdata.len() == b.rdata.len() && a.ttl == b.ttl);
                }
            }
        }
    }
});

//! Wire parsing and writing: RFC rejections, pointer loops, compression, truncation.

use super::*;

fn query(name: &str, qtype: RType, edns: Option<u16>) -> Vec<u8> {
    let mut b = vec![0u8; 600];
    let q = Query {
        id: 0x1234,
        flags: flag::RD,
        qname: NameBuf::from_text(name).unwrap(),
        qtype,
        qclass: CLASS_IN,
        edns: edns.map(|s| Edns { udp_size: s, ext_rcode: 0, version: 0, dnssec_ok: false }),
    };
    let mut w = Writer::new(&mut b, 600);
    w.header(q.id, q.flags, [1, 0, 0, u16::from(edns.is_some())]).unwrap();
    w.name(q.qname.as_wire(), false).unwrap();
    w.u16(qtype.0).unwrap();
    w.u16(CLASS_IN).unwrap();
    if let Some(s) = edns {
        w.bytes(&[0, 0, 41]).unwrap();
        w.u16(s).unwrap();
        w.u32(0).unwrap();
        w.u16(0).unwrap();
    }
    let n = w.finish();
    b.truncate(n);
    b
}

#[test]
fn parses_a_query() {
    let p = query("Foo.Example.com", RType::AAAA, Some(1232));
    let q = parse_query(&p).unwrap();
    assert_eq!(q.id, 0x1234);
    assert_eq!(q.qtype, RType::AAAA);
    assert_eq!(q.qname, NameBuf::from_text("Foo.Example.com.").unwrap());
    assert_eq!(q.udp_limit(), 1232);
    // One UDP limit: the client's EDNS size, at least 512, at most 1232.
    for (edns, limit) in [(None, 512), (Some(100), 512), (Some(900), 900), (Some(4096), 1232), (Some(65535), 1232)] {
        assert_eq!(parse_query(&query("a.b", RType::A, edns)).unwrap().udp_limit(), limit, "{edns:?}");
    }
    let mut t = [0u8; 253];
    assert_eq!(q.qname.to_lookup_text(&mut t).unwrap(), b"foo.example.com");
}

#[test]
fn rejects_per_rfc() {
    assert_eq!(parse_query(&[0; 11]), Err(Reject::Drop));
    let mut p = query("a.b", RType(1), None);
    p[2] |= 0x80;
    assert_eq!(parse_query(&p), Err(Reject::Drop));
    let mut p = query("a.b", RType(1), None);
    p[2] |= 0x28; // opcode 5 (UPDATE)
    assert!(matches!(parse_query(&p), Err(Reject::Error { rcode: Rcode::NOTIMP, .. })));
    let mut p = query("a.b", RType(1), None);
    p[5] = 2;
    assert!(matches!(parse_query(&p), Err(Reject::Error { rcode: Rcode::FORMERR, .. })));
    let p = query("a.b", RType(1), None);
    assert!(matches!(parse_query(&p[..p.len() - 1]), Err(Reject::Error { rcode: Rcode::FORMERR, .. })));
    let mut p = query("a.b", RType(1), Some(1232));
    let n = p.len();
    p[n - 5] = 1; // EDNS version 1
    assert!(matches!(parse_query(&p), Err(Reject::BadVersion { .. })));
}

#[test]
fn pointer_loops_are_errors() {
    // Question name is a pointer to itself, then a label followed by a
    // pointer back to that label.
    let mut p = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1];
    assert!(matches!(parse_query(&p), Err(Reject::Error { rcode: Rcode::FORMERR, .. })));
    p.truncate(12);
    p.extend_from_slice(&[1, b'a', 0xC0, 12, 0, 1, 0, 1]);
    assert!(matches!(parse_query(&p), Err(Reject::Error { rcode: Rcode::FORMERR, .. })));
}

#[test]
fn writer_compresses_and_truncates() {
    let q = parse_query(&query("www.example.com", RType::A, None)).unwrap();
    let mut m = Message { flags: flag::QR | flag::RA, ..Default::default() };
    for i in 0..100u8 {
        m.answers.push(Record {
            name: NameBuf::from_text("WWW.example.com").unwrap(),
            rtype: RType::A,
            class: CLASS_IN,
            ttl: 60,
            rdata: vec![10, 0, 0, i],
        });
    }
    let mut out = vec![0u8; 4096];
    let n = write_response(&q, &m, 10, ReplyShape { limit: 512, edns: None }, &mut out);
    assert!(n <= 512);
    let back = parse_message(&out[..n]).unwrap();
    assert!(back.flags & flag::TC != 0);
    // 12 header + 21 question; each compressed A record is 16 bytes.
    assert_eq!(back.answers.len(), (512 - 12 - 21) / 16);
    assert_eq!(back.answers[0].ttl, 50);
    let n = write_response(&q, &m, 0, ReplyShape { limit: 65535, edns: None }, &mut out);
    let back = parse_message(&out[..n]).unwrap();
    assert_eq!(back.answers.len(), 100);
    assert_eq!(back.flags & flag::TC, 0);
    assert_eq!(back.answers[0].name, NameBuf::from_text("www.example.com").unwrap().to_lowercase());
}

#[test]
fn rdata_names_round_trip() {
    let q = parse_query(&query("x.example.com", RType::MX, Some(1232))).unwrap();
    let mut rd = vec![0, 10];
    rd.extend_from_slice(NameBuf::from_text("mail.example.com").unwrap().as_wire());
    let mut soa = Vec::new();
    soa.extend_from_slice(NameBuf::from_text("ns.example.com").unwrap().as_wire());
    soa.extend_from_slice(NameBuf::from_text("hostmaster.example.com").unwrap().as_wire());
    soa.extend_from_slice(&[0; 20]);
    let m = Message {
        flags: flag::QR,
        answers: vec![Record {
            name: NameBuf::from_text("x.example.com").unwrap(),
            rtype: RType::MX,
            class: 1,
            ttl: 5,
            rdata: rd,
        }],
        authority: vec![Record {
            name: NameBuf::from_text("example.com").unwrap(),
            rtype: RType::SOA,
            class: 1,
            ttl: 5,
            rdata: soa,
        }],
        ..Default::default()
    };
    let mut out = vec![0u8; 1024];
    let n = write_response(&q, &m, 0, ReplyShape { limit: 1232, edns: q.edns }, &mut out);
    let back = parse_message(&out[..n]).unwrap();
    assert_eq!(back.answers, m.answers);
    assert_eq!(back.authority, m.authority);
    assert!(back.edns.is_some());
}

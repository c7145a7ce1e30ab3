//! Local answers checked by parsing them back with the strict parser.

use std::sync::Arc;

use super::*;
use crate::dns::table::DnsTable;
use crate::dns::wire::{parse_message, Edns, Message, Writer};
use crate::names::{NameConfig, NameEntry, NameTable};

fn table() -> DnsTable {
    let entries = vec![
        NameEntry::kubernetes("product.default.svc.cluster.local", "product", "default", ["10.0.0.1"]),
        NameEntry::kubernetes("dual.default.svc.cluster.local", "dual", "default", ["10.0.0.2", "fd00::2"]),
        NameEntry::new("api.example.com", ["240.240.0.1", "240.240.0.2", "240.240.0.3"]),
        NameEntry::new("*.wild.example.com", ["240.240.0.9"]),
        NameEntry::kubernetes(
            "many.default.svc.cluster.local",
            "many",
            "default",
            (0..200).map(|i| format!("10.1.{}.{}", i / 250, i % 250)).collect::<Vec<_>>(),
        ),
    ];
    let cfg = NameConfig {
        namespace: "default".into(),
        search: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
        ..Default::default()
    };
    DnsTable::new(Arc::new(NameTable::build(&entries, &cfg).unwrap()), 7)
}

fn packet(name: &str, qtype: RType, edns: Option<u16>) -> Vec<u8> {
    let mut b = vec![0u8; 600];
    let mut w = Writer::new(&mut b, 600);
    w.header(0xBEEF, flag::RD, [1, 0, 0, u16::from(edns.is_some())]).unwrap();
    w.name(NameBuf::from_text(name).unwrap().as_wire(), false).unwrap();
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

fn ask(
    t: Option<&DnsTable>,
    cfg: &AnswerConfig,
    name: &str,
    qtype: RType,
    tr: Transport,
    edns: Option<u16>,
) -> Option<Message> {
    let mut out = vec![0u8; 65535];
    let p = packet(name, qtype, edns);
    match answer_packet(t, cfg, &p, tr, 0, &mut out) {
        Decision::Reply { len, .. } => {
            let limit = match tr {
                Transport::Udp => edns.map_or(512, |e| (e as usize).clamp(512, 1232)),
                Transport::Tcp => 65535,
            };
            assert!(len <= limit, "{len} > {limit}");
            Some(parse_message(&out[..len]).unwrap())
        }
        Decision::Forward(q) => {
            assert_eq!(q.qname, NameBuf::from_text(name).unwrap());
            None
        }
        Decision::Drop => panic!("dropped"),
    }
}

#[test]
fn a_and_aaaa_with_aa_ttl_and_owner_case() {
    let t = table();
    let cfg = AnswerConfig::default();
    let m = ask(Some(&t), &cfg, "Product.Default.SVC.cluster.local", RType::A, Transport::Udp, None).unwrap();
    assert_eq!(m.id, 0xBEEF);
    assert!(m.flags & flag::AA != 0 && m.flags & flag::QR != 0 && m.flags & flag::RD != 0);
    assert_eq!(m.rcode(), Rcode::NOERROR);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].rdata, vec![10, 0, 0, 1]);
    assert_eq!(m.answers[0].ttl, 30);
    // Owner echoes the question's letter case.
    assert_eq!(m.answers[0].name, NameBuf::from_text("Product.Default.SVC.cluster.local").unwrap());
    // Short names via the search list and the namespace forms.
    for n in ["product", "product.default", "product.default.svc"] {
        let m = ask(Some(&t), &cfg, n, RType::A, Transport::Udp, None).unwrap();
        assert_eq!(m.answers.len(), 1, "{n}");
    }
    let m = ask(Some(&t), &cfg, "dual.default.svc.cluster.local", RType::AAAA, Transport::Udp, None).unwrap();
    assert_eq!(m.answers[0].rdata, "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec());
    let cfg = AnswerConfig::new(5, &[]).unwrap();
    let m = ask(Some(&t), &cfg, "product", RType::A, Transport::Udp, None).unwrap();
    assert_eq!(m.answers[0].ttl, 5);
}

#[test]
fn nodata_with_soa_never_nxdomain_for_known_names() {
    let t = table();
    let cfg = AnswerConfig::default();
    let m = ask(Some(&t), &cfg, "product.default.svc.cluster.local", RType::AAAA, Transport::Udp, None).unwrap();
    assert_eq!(m.rcode(), Rcode::NOERROR);
    assert!(m.answers.is_empty());
    assert_eq!(m.authority.len(), 1);
    let soa = &m.authority[0];
    assert_eq!(soa.rtype, RType::SOA);
    assert_eq!(soa.name, NameBuf::from_text("cluster.local").unwrap());
    assert_eq!(&soa.rdata[soa.rdata.len() - 4..], &30u32.to_be_bytes());
    // Other types of a Kubernetes name of the cluster domain: NODATA + SOA.
    for ty in [RType::SRV, RType::TXT, RType::MX, RType::HTTPS] {
        let m = ask(Some(&t), &cfg, "product", ty, Transport::Udp, None).unwrap();
        assert!(m.answers.is_empty() && m.authority[0].rtype == RType::SOA);
    }
    // ServiceEntry host: AAAA of a v4-only host is NODATA with the SOA at the name.
    let m = ask(Some(&t), &cfg, "api.example.com", RType::AAAA, Transport::Udp, None).unwrap();
    assert_eq!(m.authority[0].name, NameBuf::from_text("api.example.com").unwrap());
    // ... but its other types are forwarded.
    assert!(ask(Some(&t), &cfg, "api.example.com", RType::MX, Transport::Udp, None).is_none());
}

#[test]
fn unknown_names_forward_unless_under_an_authoritative_zone() {
    let t = table();
    let cfg = AnswerConfig::default();
    assert!(ask(Some(&t), &cfg, "www.example.org", RType::A, Transport::Udp, None).is_none());
    assert!(ask(Some(&t), &cfg, "nope.default.svc.cluster.local", RType::A, Transport::Udp, None).is_none());
    let cfg = AnswerConfig::new(30, &["svc.cluster.local".into()]).unwrap();
    let m = ask(Some(&t), &cfg, "Nope.default.svc.cluster.local", RType::A, Transport::Udp, None).unwrap();
    assert_eq!(m.rcode(), Rcode::NXDOMAIN);
    assert_eq!(m.authority[0].name, NameBuf::from_text("svc.cluster.local").unwrap());
    // No table yet: everything is forwarded (Istio: SERVFAIL).
    assert!(ask(None, &cfg, "product", RType::A, Transport::Udp, None).is_none());
    // Other classes are the upstream's.
    let mut p = packet("product", RType::A, None);
    let n = p.len();
    p[n - 1] = 3; // CHAOS
    assert!(matches!(answer_packet(Some(&t), &cfg, &p, Transport::Udp, 0, &mut [0; 512]), Decision::Forward(_)));
}

#[test]
fn wildcard_answers_under_the_question_never_a_star() {
    let t = table();
    let m = ask(Some(&t), &AnswerConfig::default(), "x.Wild.example.com", RType::A, Transport::Udp, None).unwrap();
    assert_eq!(m.answers[0].name, NameBuf::from_text("x.Wild.example.com").unwrap());
    assert!(ask(Some(&t), &AnswerConfig::default(), "*.wild.example.com", RType::A, Transport::Udp, None).is_none());
}

#[test]
fn ptr_for_every_table_address() {
    let t = table();
    let cfg = AnswerConfig::default();
    let m = ask(Some(&t), &cfg, "1.0.0.10.in-addr.arpa", RType::PTR, Transport::Udp, None).unwrap();
    assert_eq!(m.answers[0].rdata, NameBuf::from_text("product.default.svc.cluster.local").unwrap().as_wire());
    let m = ask(Some(&t), &cfg, "1.0.240.240.IN-ADDR.ARPA", RType::PTR, Transport::Udp, None).unwrap();
    assert_eq!(m.answers[0].rdata, NameBuf::from_text("api.example.com").unwrap().as_wire());
    let v6 = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
    let m = ask(Some(&t), &cfg, v6, RType::PTR, Transport::Udp, None).unwrap();
    assert_eq!(m.answers[0].rdata, NameBuf::from_text("dual.default.svc.cluster.local").unwrap().as_wire());
    assert!(ask(Some(&t), &cfg, "9.9.9.9.in-addr.arpa", RType::PTR, Transport::Udp, None).is_none());
    // The wildcard entry's address has no PTR (it would need a `*`).
    assert!(ask(Some(&t), &cfg, "9.0.240.240.in-addr.arpa", RType::PTR, Transport::Udp, None).is_none());
    assert_eq!(reverse_addr(b"01.0.0.10.in-addr.arpa"), None);
    assert_eq!(reverse_addr(b"256.0.0.10.in-addr.arpa"), None);
    assert_eq!(reverse_addr(b"0.0.10.in-addr.arpa"), None);
}

#[test]
fn rotation_and_truncation() {
    let t = table();
    let cfg = AnswerConfig::default();
    let p = packet("api.example.com", RType::A, None);
    let mut firsts = Vec::new();
    for rot in 0..3 {
        let mut out = [0u8; 512];
        let Decision::Reply { len, .. } = answer_packet(Some(&t), &cfg, &p, Transport::Udp, rot, &mut out) else {
            panic!()
        };
        let m = parse_message(&out[..len]).unwrap();
        assert_eq!(m.answers.len(), 3);
        firsts.push(m.answers[0].rdata[3]);
    }
    firsts.sort();
    assert_eq!(firsts, vec![1, 2, 3]);
    // 200 addresses: UDP without EDNS gets what fits in 512 with TC.
    let m = ask(Some(&t), &cfg, "many", RType::A, Transport::Udp, None).unwrap();
    assert!(m.flags & flag::TC != 0);
    assert_eq!(m.answers.len(), (512 - 12 - 10) / 16);
    let m = ask(Some(&t), &cfg, "many", RType::A, Transport::Udp, Some(1232)).unwrap();
    assert!(m.flags & flag::TC != 0);
    assert_eq!(m.answers.len(), (1232 - 12 - 10 - 11) / 16);
    assert_eq!(m.edns.map(|e| e.udp_size), Some(1232));
    let m = ask(Some(&t), &cfg, "many", RType::A, Transport::Tcp, None).unwrap();
    assert_eq!(m.flags & flag::TC, 0);
    assert_eq!(m.answers.len(), 200);
    // A client advertising less than 512 still gets 512 (RFC 6891 §6.2.5).
    let m = ask(Some(&t), &cfg, "many", RType::A, Transport::Udp, Some(100)).unwrap();
    assert_eq!(m.answers.len(), (512 - 12 - 10 - 11) / 16);
    // One advertising more than 1232 gets 1232 (wire::MAX_UDP_REPLY), even
    // when the caller's buffer could hold everything.
    for size in [1233, 4096, 65535] {
        let m = ask(Some(&t), &cfg, "many", RType::A, Transport::Udp, Some(size)).unwrap();
        assert!(m.flags & flag::TC != 0);
        assert_eq!(m.answers.len(), (1232 - 12 - 10 - 11) / 16, "{size}");
    }
}

#[test]
fn refused_replies_echo_the_question_and_never_amplify() {
    for edns in [None, Some(4096)] {
        let p = packet("Product.default.svc.cluster.local", RType::A, edns);
        let mut out = [0u8; 512];
        let Decision::Reply { len, outcome, rcode, qtype } = refuse_packet(&p, &mut out) else { panic!() };
        assert_eq!((outcome, rcode, qtype), (Outcome::Refused, Rcode::REFUSED, RType::A));
        assert!(len <= p.len(), "{len} > {}", p.len());
        let m = parse_message(&out[..len]).unwrap();
        assert_eq!((m.id, m.rcode(), m.answers.len()), (0xBEEF, Rcode::REFUSED, 0));
        assert_eq!(m.question.unwrap().0, NameBuf::from_text("Product.default.svc.cluster.local").unwrap());
        assert_eq!(m.edns.is_some(), edns.is_some());
    }
    // Malformed, or a response: nothing at all for a client we do not serve.
    let mut out = [0u8; 512];
    assert!(matches!(refuse_packet(&[1, 2, 3], &mut out), Decision::Drop));
    let mut p = packet("a.example", RType::A, None);
    p[5] = 2;
    assert!(matches!(refuse_packet(&p, &mut out), Decision::Drop));
}

#[test]
fn malformed_queries() {
    let t = table();
    let cfg = AnswerConfig::default();
    let mut out = [0u8; 512];
    // Runt: dropped.
    assert!(matches!(answer_packet(Some(&t), &cfg, &[1, 2, 3], Transport::Udp, 0, &mut out), Decision::Drop));
    // Two questions: FORMERR, header only, never larger than the query.
    let mut p = packet("product", RType::A, None);
    p[5] = 2;
    let Decision::Reply { len, rcode: rc, .. } = answer_packet(Some(&t), &cfg, &p, Transport::Udp, 0, &mut out) else {
        panic!()
    };
    assert_eq!((len, rc), (12, Rcode::FORMERR));
    assert!(len <= p.len());
    // BADVERS carries an OPT with the extended rcode.
    let mut p = packet("product", RType::A, Some(1232));
    let n = p.len();
    p[n - 5] = 1;
    let Decision::Reply { len, .. } = answer_packet(Some(&t), &cfg, &p, Transport::Udp, 0, &mut out) else { panic!() };
    let m = parse_message(&out[..len]).unwrap();
    assert_eq!(m.rcode(), Rcode::BADVERS);
    assert_eq!(m.edns.map(|e| e.ext_rcode), Some(1));
    let _ = Edns { udp_size: 0, ext_rcode: 0, version: 0, dnssec_ok: false };
}

#[test]
fn a_bare_name_table_answers_like_the_indexed_one() {
    let t = table();
    let cfg = AnswerConfig::default();
    for (name, ty) in [
        ("product", RType::A),
        ("product", RType::SRV),
        ("api.example.com", RType::AAAA),
        ("api.example.com", RType::TXT),
        ("1.0.0.10.in-addr.arpa", RType::PTR),
        ("9.0.240.240.in-addr.arpa", RType::PTR),
        ("www.example.org", RType::A),
    ] {
        let p = packet(name, ty, Some(1232));
        let (mut a, mut b) = ([0u8; 1232], [0u8; 1232]);
        let da = answer_packet(Some(&t), &cfg, &p, Transport::Udp, 0, &mut a);
        let db = answer_packet(Some(t.names()), &cfg, &p, Transport::Udp, 0, &mut b);
        match (da, db) {
            (Decision::Reply { len: la, .. }, Decision::Reply { len: lb, .. }) => {
                let (mut ma, mut mb) = (parse_message(&a[..la]).unwrap(), parse_message(&b[..lb]).unwrap());
                // Only the SOA serial (the generation) may differ.
                for m in [&mut ma, &mut mb] {
                    for r in &mut m.authority {
                        let n = r.rdata.len();
                        r.rdata[n - 20..n - 16].fill(0);
                    }
                }
                assert_eq!(ma, mb, "{name}");
            }
            (Decision::Forward(_), Decision::Forward(_)) => {}
            (x, y) => panic!("{name}: {x:?} vs {y:?}"),
        }
    }
}

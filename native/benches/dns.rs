//! DNS answering benchmarks: the cost of one local answer (parse, lookup,
//! write) from a 10k-name table, beside the cost of copying the query into a
//! reply (the floor of any responder), of a forwarded answer re-encoded
//! from the cache (parse-free, compressing writer), and of the replies a
//! flood mostly gets: REFUSED to a client outside the allow-list, SERVFAIL
//! over the pending-forward limits.
//!
//! Full run: `cargo bench --bench dns`; short (CI): `PYMESH_BENCH_SHORT=1 cargo bench --bench dns`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use pymesh_core::dns::forward::Forwarder;
use pymesh_core::dns::metrics::Metrics;
use pymesh_core::dns::wire::{
    flag, parse_query, write_response, write_status, Message, NameBuf, RType, Rcode, Record, ReplyShape, Writer,
    CLASS_IN,
};
use pymesh_core::dns::{answer_packet, refuse_packet, AnswerConfig, Decision, DnsTable, Transport, UpstreamConfig};
use pymesh_core::names::{NameConfig, NameEntry, NameTable};

fn short_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    std::env::var("PYMESH_BENCH_SHORT").is_ok_and(|v| v == "1")
        || args.iter().any(|a| a == "--test")
        || !args.iter().any(|a| a == "--bench")
}

fn packet(name: &str, qtype: RType) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    let mut w = Writer::new(&mut b, 512);
    w.header(0x4242, flag::RD, [1, 0, 0, 0]).unwrap();
    w.name(NameBuf::from_text(name).unwrap().as_wire(), false).unwrap();
    w.u16(qtype.0).unwrap();
    w.u16(CLASS_IN).unwrap();
    let n = w.finish();
    b.truncate(n);
    b
}

fn table() -> DnsTable {
    let entries: Vec<NameEntry> = (0..10_000)
        .map(|i| {
            let mut ips = vec![format!("10.96.{}.{}", i / 256, i % 256)];
            if i % 5 == 0 {
                ips.push(format!("fd00:10:96::{i:x}"));
            }
            NameEntry::kubernetes(
                format!("svc-{i}.ns-{}.svc.cluster.local", i % 100),
                format!("svc-{i}"),
                format!("ns-{}", i % 100),
                ips,
            )
        })
        .collect();
    let cfg =
        NameConfig { namespace: "ns-0".into(), search: vec!["ns-0.svc.cluster.local".into()], ..Default::default() };
    DnsTable::new(Arc::new(NameTable::build(&entries, &cfg).unwrap()), 1)
}

fn bench(c: &mut Criterion) {
    let t = table();
    let cfg = AnswerConfig::default();
    let mut g = c.benchmark_group("dns");
    if short_mode() {
        g.sample_size(10).measurement_time(Duration::from_millis(300)).warm_up_time(Duration::from_millis(100));
    }
    let mut out = vec![0u8; 4096];
    let a = packet("svc-1234.ns-34.svc.cluster.local", RType::A);
    g.bench_function("echo_copy", |b| {
        b.iter(|| {
            let p = black_box(&a);
            out[..p.len()].copy_from_slice(p);
            out[2] |= 0x80;
            black_box(out[3])
        })
    });
    for (label, p) in [
        ("local_a", a.clone()),
        ("local_aaaa_nodata", packet("svc-1234.ns-34.svc.cluster.local", RType::AAAA)),
        ("local_short_name", packet("svc-1230", RType::A)),
        ("forward_decision", packet("www.example.org", RType::A)),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| match answer_packet(Some(&t), &cfg, black_box(&p), Transport::Udp, 1, &mut out) {
                Decision::Reply { len, .. } => len,
                _ => 0,
            })
        });
    }
    let q = parse_query(&packet("www.example.org", RType::A)).unwrap();
    let m = Message {
        flags: flag::QR | flag::RA,
        answers: (0..2)
            .map(|i| Record { name: q.qname.clone(), rtype: RType::A, class: 1, ttl: 300, rdata: vec![192, 0, 2, i] })
            .collect(),
        ..Default::default()
    };
    // The whole UDP path of a forwarded name found in the cache: parse, table
    // miss, cache lookup, re-encode.
    let fw = Forwarder::new(UpstreamConfig::default(), 1000, 1 << 20, Arc::new(Metrics::default()));
    fw.insert_for_test(&q, Arc::new(m.clone()));
    let p = packet("www.example.org", RType::A);
    g.bench_function("cache_hit_full", |b| {
        b.iter(|| match answer_packet(Some(&t), &cfg, black_box(&p), Transport::Udp, 1, &mut out) {
            Decision::Forward(q) => fw.cached_reply(&q, Transport::Udp, &mut out).unwrap_or(0),
            _ => 0,
        })
    });
    g.bench_function("cache_hit_write", |b| {
        b.iter(|| write_response(black_box(&q), &m, 3, ReplyShape { limit: 512, edns: None }, &mut out))
    });
    g.bench_function("refused", |b| {
        b.iter(|| match refuse_packet(black_box(&p), &mut out) {
            Decision::Reply { len, .. } => len,
            _ => 0,
        })
    });
    g.bench_function("overloaded_servfail", |b| b.iter(|| write_status(black_box(&q), Rcode::SERVFAIL, &mut out)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

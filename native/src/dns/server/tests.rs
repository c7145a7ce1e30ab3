//! The server over real loopback sockets, with a tiny upstream thread.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::dns::wire::{
    flag, parse_message, parse_query, write_response, Message, NameBuf, RType, Record, ReplyShape, Writer, CLASS_IN,
};
use crate::names::NameEntry;

fn packet(id: u16, name: &str, qtype: RType) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    let mut w = Writer::new(&mut b, 512);
    w.header(id, flag::RD, [1, 0, 0, 0]).unwrap();
    w.name(NameBuf::from_text(name).unwrap().as_wire(), false).unwrap();
    w.u16(qtype.0).unwrap();
    w.u16(CLASS_IN).unwrap();
    let n = w.finish();
    b.truncate(n);
    b
}

/// An upstream answering every A query with 192.0.2.1, TTL 60; counts queries.
fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((len, from)) = s.recv_from(&mut buf) else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let Ok(q) = parse_query(&buf[..len]) else { continue };
            let m = Message {
                flags: flag::QR | flag::RA,
                answers: vec![Record {
                    name: q.qname.clone(),
                    rtype: RType::A,
                    class: 1,
                    ttl: 60,
                    rdata: vec![192, 0, 2, 1],
                }],
                ..Default::default()
            };
            let mut out = [0u8; 4096];
            let mut m2 = m;
            m2.id = q.id;
            let n = write_response(&q, &m2, 0, ReplyShape { limit: 4096, edns: q.edns }, &mut out);
            // write_response copies the client's ID from the query.
            let _ = s.send_to(&out[..n], from);
        }
    });
    (addr, n)
}

fn server(upstreams: Vec<SocketAddr>) -> (Server, SocketAddr) {
    let cfg = ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        upstream: UpstreamConfig { servers: upstreams, ..Default::default() },
        ..Default::default()
    };
    let s = Server::new(cfg).unwrap();
    let t = NameTable::build(
        &[NameEntry::kubernetes("product.default.svc.cluster.local", "product", "default", ["10.0.0.1"])],
        &Default::default(),
    )
    .unwrap();
    s.swap_table(Arc::new(t));
    let addr = s.start().unwrap()[0];
    (s, addr)
}

fn ask(client: &UdpSocket, to: SocketAddr, p: &[u8]) -> Message {
    client.send_to(p, to).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = client.recv_from(&mut buf).unwrap();
    parse_message(&buf[..n]).unwrap()
}

#[test]
fn udp_local_forwarded_cached_and_tcp() {
    let (up, count) = upstream();
    let (s, addr) = server(vec![up]);
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let m = ask(&c, addr, &packet(1, "product.default.svc.cluster.local", RType::A));
    assert_eq!((m.id, m.answers[0].rdata.clone()), (1, vec![10, 0, 0, 1]));
    let m = ask(&c, addr, &packet(2, "www.Example.org", RType::A));
    assert_eq!((m.id, m.answers[0].rdata.clone()), (2, vec![192, 0, 2, 1]));
    assert_eq!(m.answers[0].name, NameBuf::from_text("www.Example.org").unwrap());
    std::thread::sleep(Duration::from_millis(1100));
    let m = ask(&c, addr, &packet(3, "WWW.example.org", RType::A));
    assert_eq!(m.id, 3);
    assert!(m.answers[0].ttl < 60, "TTL decremented on a cache hit");
    assert_eq!(count.load(Ordering::SeqCst), 1, "second query answered from the cache");
    let st = s.stats();
    assert_eq!(st.outcomes.iter().find(|o| o.0 == "cache_hit").unwrap().1, 1);

    // TCP: two pipelined queries on one connection.
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut both = Vec::new();
    for (id, name) in [(10u16, "product"), (11, "www.example.org")] {
        let p = packet(id, name, RType::A);
        both.extend_from_slice(&(p.len() as u16).to_be_bytes());
        both.extend_from_slice(&p);
    }
    t.write_all(&both).unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut l = [0u8; 2];
        t.read_exact(&mut l).unwrap();
        let mut b = vec![0u8; u16::from_be_bytes(l) as usize];
        t.read_exact(&mut b).unwrap();
        ids.push(parse_message(&b).unwrap().id);
    }
    ids.sort();
    assert_eq!(ids, vec![10, 11]);
    s.stop();
    assert!(!s.is_running());
}

#[test]
fn servfail_when_every_upstream_is_dead() {
    // A bound socket that never answers.
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 1,
        upstream: UpstreamConfig {
            servers: vec![dead.local_addr().unwrap()],
            attempt_timeout: Duration::from_millis(200),
            hedge_delay: Duration::from_millis(50),
        },
        ..Default::default()
    };
    let s = Server::new(cfg).unwrap();
    let addr = s.start().unwrap()[0];
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let m = ask(&c, addr, &packet(5, "nothing.example", RType::A));
    assert_eq!(m.rcode(), crate::dns::wire::Rcode::SERVFAIL);
    assert!(s.metrics_text().contains("\nistio_agent_dns_upstream_failures_total 1\n"));
}

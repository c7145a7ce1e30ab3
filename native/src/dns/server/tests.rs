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

// --- limits -------------------------------------------------------

fn packet_edns(id: u16, name: &str, qtype: RType, size: u16) -> Vec<u8> {
    let mut p = packet(id, name, qtype);
    p[11] = 1; // ARCOUNT
    p.extend_from_slice(&[0, 0, 41]);
    p.extend_from_slice(&size.to_be_bytes());
    p.extend_from_slice(&[0; 6]);
    p
}

/// An upstream answering every A query with `n` records after `delay`,
/// over UDP whatever the size we asked for (as a careless server would).
fn big_upstream(n: usize, delay: Duration) -> SocketAddr {
    let s = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((len, from)) = s.recv_from(&mut buf) else { return };
            let Ok(q) = parse_query(&buf[..len]) else { continue };
            let s = s.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let m = Message {
                    flags: flag::QR | flag::RA,
                    answers: (0..n)
                        .map(|i| Record {
                            name: q.qname.clone(),
                            rtype: RType::A,
                            class: 1,
                            ttl: 60,
                            rdata: vec![198, 51, (i / 250) as u8, (i % 250) as u8],
                        })
                        .collect(),
                    ..Default::default()
                };
                let mut out = vec![0u8; 65535];
                let n = write_response(&q, &m, 0, ReplyShape { limit: 65535, edns: q.edns }, &mut out);
                let _ = s.send_to(&out[..n], from);
            });
        }
    });
    addr
}

fn started(cfg: ServerConfig, table: Option<NameTable>) -> (Server, SocketAddr) {
    let s = Server::new(cfg).unwrap();
    if let Some(t) = table {
        s.swap_table(Arc::new(t));
    }
    let addr = s.start().unwrap()[0];
    (s, addr)
}

fn config(upstreams: Vec<SocketAddr>) -> ServerConfig {
    ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        workers: 2,
        upstream: UpstreamConfig { servers: upstreams, ..Default::default() },
        ..Default::default()
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what}: not reached in 5 s");
}

fn outcome(s: &Server, name: &str) -> u64 {
    s.stats().outcomes.iter().find(|o| o.0 == name).unwrap().1
}

fn tcp_query(t: &mut TcpStream, p: &[u8]) -> Message {
    let mut framed = (p.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(p);
    t.write_all(&framed).unwrap();
    let mut l = [0u8; 2];
    t.read_exact(&mut l).unwrap();
    let mut b = vec![0u8; u16::from_be_bytes(l) as usize];
    t.read_exact(&mut b).unwrap();
    parse_message(&b).unwrap()
}

#[test]
fn udp_replies_are_capped_at_1232_on_every_path() {
    let up = big_upstream(300, Duration::from_millis(300));
    let many = NameTable::build(
        &[NameEntry::new("many.example.com", (0..300).map(|i| format!("10.2.{}.{}", i / 250, i % 250)))],
        &Default::default(),
    )
    .unwrap();
    let (s, addr) = started(config(vec![up]), Some(many));
    let check = |buf: &[u8]| {
        assert!(buf.len() <= 1232, "{} bytes over UDP", buf.len());
        let m = parse_message(buf).unwrap();
        assert!(m.flags & flag::TC != 0 && !m.answers.is_empty(), "truncated with TC");
        m
    };
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 65535];
    // Local.
    c.send_to(&packet_edns(1, "many.example.com", RType::A, 65535), addr).unwrap();
    let n = c.recv(&mut buf).unwrap();
    check(&buf[..n]);
    // Forwarded, with three more clients coalesced onto the same upstream query.
    let clients: Vec<UdpSocket> = (0..4).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    for (i, c) in clients.iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.send_to(&packet_edns(10 + i as u16, "big.example.org", RType::A, 65535), addr).unwrap();
    }
    for c in &clients {
        let n = c.recv(&mut buf).unwrap();
        check(&buf[..n]);
    }
    assert_eq!(s.stats().coalesced, 3);
    // Cached.
    c.send_to(&packet_edns(2, "big.example.org", RType::A, 65535), addr).unwrap();
    let n = c.recv(&mut buf).unwrap();
    check(&buf[..n]);
    assert_eq!(outcome(&s, "cache_hit"), 1);
    // Over TCP the whole answer, from the cache and from the table.
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(tcp_query(&mut t, &packet_edns(3, "big.example.org", RType::A, 65535)).answers.len(), 300);
    assert_eq!(tcp_query(&mut t, &packet_edns(4, "many.example.com", RType::A, 65535)).answers.len(), 300);
    assert_eq!(s.stats().udp_truncated, 6);
    assert!(s.metrics_text().contains("\npymesh_dns_udp_truncated_total 6\n"));
}

#[test]
fn forwards_over_the_pending_limits_get_servfail_at_once_and_timeouts_free_the_rest() {
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = ServerConfig {
        upstream: UpstreamConfig {
            servers: vec![dead.local_addr().unwrap()],
            attempt_timeout: Duration::from_secs(3),
            hedge_delay: Duration::from_millis(50),
        },
        max_pending_forwards: 4,
        max_pending_forwards_per_client: 3,
        ..config(Vec::new())
    };
    let (s, addr) = started(cfg, None);
    assert_eq!(s.forward_limit(), 4);
    let client = |ip: &str| {
        let c = UdpSocket::bind((ip, 0)).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        c
    };
    // Replies before the 3 s attempt timeout can only be the shed ones.
    let servfails = |c: &UdpSocket, n: usize| {
        let mut buf = [0u8; 1500];
        (0..n)
            .map(|_| {
                let n = c.recv(&mut buf).unwrap();
                parse_message(&buf[..n]).unwrap()
            })
            .inspect(|m| assert_eq!(m.rcode(), crate::dns::wire::Rcode::SERVFAIL))
            .map(|m| m.id)
            .collect::<Vec<_>>()
    };
    let (a, b, c) = (client("127.0.0.1"), client("127.0.0.2"), client("127.0.0.3"));
    for i in 0..5u16 {
        a.send_to(&packet(i, &format!("a{i}.example.org"), RType::A), addr).unwrap();
    }
    // Three admitted (the client's share), two answered at once.
    assert_eq!(servfails(&a, 2).len(), 2);
    wait_for("a's three pending", || s.pending_forwards() == 3);
    for i in 0..2u16 {
        b.send_to(&packet(10 + i, &format!("b{i}.example.org"), RType::A), addr).unwrap();
    }
    // One more fills the total of 4; the second is over it.
    assert_eq!(servfails(&b, 1).len(), 1);
    c.send_to(&packet(20, "c.example.org", RType::A), addr).unwrap();
    assert_eq!(servfails(&c, 1), vec![20]);
    assert_eq!(s.pending_forwards(), 4);
    let st = s.stats();
    assert_eq!(st.forwards_rejected, vec![("total", 2), ("client", 2)]);
    assert_eq!(outcome(&s, "overloaded"), 4);
    let text = s.metrics_text();
    assert!(
        text.contains("\npymesh_dns_forwards_pending 4\n") && text.contains("\npymesh_dns_forwards_pending_limit 4\n")
    );
    assert!(text.contains("pymesh_dns_forwards_rejected_total{limit=\"client\"} 2\n"), "{text}");
    // The silent upstream never answers: every pending forward ends with the
    // attempt timeout, SERVFAIL, and gives everything back.
    let mut buf = [0u8; 1500];
    for sock in [&a, &a, &a, &b] {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = sock.recv(&mut buf).unwrap();
        let m = parse_message(&buf[..n]).unwrap();
        assert_eq!(m.rcode(), crate::dns::wire::Rcode::SERVFAIL);
    }
    wait_for("every slot back", || s.pending_forwards() == 0);
    assert_eq!(s.shared.forwarder.in_flight(), 0);
    assert_eq!(outcome(&s, "upstream_failure"), 4);
    // And the slots serve again.
    a.send_to(&packet(30, "again.example.org", RType::A), addr).unwrap();
    wait_for("admitted again", || s.pending_forwards() == 1);
}

#[test]
fn tcp_pipelining_holds_at_most_max_inflight_queries_per_connection() {
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = ServerConfig {
        upstream: UpstreamConfig {
            servers: vec![dead.local_addr().unwrap()],
            attempt_timeout: Duration::from_millis(400),
            hedge_delay: Duration::from_millis(50),
        },
        tcp_max_inflight: 3,
        ..config(Vec::new())
    };
    let (s, addr) = started(cfg, None);
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut all = Vec::new();
    for i in 0..9u16 {
        let p = packet(i, &format!("p{i}.example.org"), RType::A);
        all.extend_from_slice(&(p.len() as u16).to_be_bytes());
        all.extend_from_slice(&p);
    }
    t.write_all(&all).unwrap();
    wait_for("three in flight", || s.pending_forwards() == 3);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(s.pending_forwards(), 3, "the connection is not read past its in-flight limit");
    // Three rounds of attempt timeouts later, all nine are answered (SERVFAIL).
    for _ in 0..9 {
        let mut l = [0u8; 2];
        t.read_exact(&mut l).unwrap();
        let mut b = vec![0u8; u16::from_be_bytes(l) as usize];
        t.read_exact(&mut b).unwrap();
        assert_eq!(parse_message(&b).unwrap().rcode(), crate::dns::wire::Rcode::SERVFAIL);
    }
    wait_for("nothing pending", || s.pending_forwards() == 0);
    // A query longer than any question closes the connection.
    t.write_all(&5000u16.to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(t.read(&mut b).unwrap_or(0), 0);
}

#[test]
fn tcp_at_a_limit_the_oldest_idle_connection_makes_room() {
    let (up, _) = upstream();
    let cfg = ServerConfig { tcp_max_connections: 2, tcp_max_connections_per_client: 64, ..config(vec![up]) };
    let (s, addr) = server_cfg(cfg);
    let q = packet(1, "product", RType::A);
    let connect = |from: &str| {
        let t = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        t.bind(&SocketAddr::from((from.parse::<std::net::Ipv4Addr>().unwrap(), 0)).into()).unwrap();
        t.connect(&addr.into()).unwrap();
        let t: TcpStream = t.into();
        t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        t
    };
    let closed = |t: &mut TcpStream| {
        let mut b = [0u8; 1];
        matches!(t.read(&mut b), Ok(0) | Err(_))
    };
    let mut old = connect("127.0.0.1");
    std::thread::sleep(Duration::from_millis(20));
    let mut active = connect("127.0.0.1");
    wait_for("two open", || s.tcp_connections() == 2);
    assert_eq!(tcp_query(&mut active, &q).answers.len(), 1);
    // A third client: `old` (idle, least recently active) is closed for it.
    let mut new = connect("127.0.0.2");
    assert_eq!(tcp_query(&mut new, &q).answers.len(), 1);
    assert!(closed(&mut old));
    assert_eq!(tcp_query(&mut active, &q).answers.len(), 1);
    assert_eq!(s.stats().tcp_evicted, 1);
    assert_eq!(s.tcp_connections(), 2);
    drop((active, new));
    wait_for("all closed", || s.tcp_connections() == 0);

    // Per client: the second connection of a client with a share of one
    // replaces its first; another client's is untouched.
    let (up, _) = upstream();
    let cfg = ServerConfig { tcp_max_connections_per_client: 1, ..config(vec![up]) };
    let (s, addr2) = server_cfg(cfg);
    let connect2 = |from: &str| {
        let t = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        t.bind(&SocketAddr::from((from.parse::<std::net::Ipv4Addr>().unwrap(), 0)).into()).unwrap();
        t.connect(&addr2.into()).unwrap();
        let t: TcpStream = t.into();
        t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        t
    };
    let mut first = connect2("127.0.0.1");
    let mut other = connect2("127.0.0.2");
    wait_for("two open", || s.tcp_connections() == 2);
    let mut second = connect2("127.0.0.1");
    assert_eq!(tcp_query(&mut second, &q).answers.len(), 1);
    assert!(closed(&mut first));
    assert_eq!(tcp_query(&mut other, &q).answers.len(), 1);
}

fn server_cfg(cfg: ServerConfig) -> (Server, SocketAddr) {
    let t = NameTable::build(
        &[NameEntry::kubernetes("product.default.svc.cluster.local", "product", "default", ["10.0.0.1"])],
        &crate::names::NameConfig { namespace: "default".into(), ..Default::default() },
    )
    .unwrap();
    started(cfg, Some(t))
}

/// An address of this host that is not loopback (on an interface that is
/// up), to be a client from "outside" without leaving the host.
fn local_non_loopback_v4() -> Option<std::net::Ipv4Addr> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills the pointer we pass with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let mut found = None;
    let mut p = ifap;
    while !p.is_null() && found.is_none() {
        // SAFETY: `p` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*p };
        let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
        // SAFETY: a non-null ifa_addr points at a sockaddr of the list.
        if up && !ifa.ifa_addr.is_null() && i32::from(unsafe { (*ifa.ifa_addr).sa_family }) == libc::AF_INET {
            // SAFETY: the family says it is a sockaddr_in.
            let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            found = (!ip.is_loopback()).then_some(ip);
        }
        p = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(ifap) };
    found
}

#[test]
fn a_listener_off_loopback_refuses_clients_outside_its_allow_list() {
    let Some(outside) = local_non_loopback_v4() else {
        eprintln!("skipped: this host has no non-loopback IPv4 address");
        return;
    };
    let (up, _) = upstream();
    let q = packet(7, "product", RType::A);
    let ask_from = |from: std::net::Ipv4Addr, to: SocketAddr| {
        let c = UdpSocket::bind((from, 0)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        ask(&c, to, &q)
    };
    let any = |port: u16| SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
    let cfg = ServerConfig { listen: vec![any(0)], ..config(vec![up]) };
    let s = Server::new(cfg).unwrap();
    assert!(s.warnings()[0].contains("no client allow-list"), "{:?}", s.warnings());
    s.swap_table(Arc::new(
        NameTable::build(
            &[NameEntry::kubernetes("product.default.svc.cluster.local", "product", "default", ["10.0.0.1"])],
            &crate::names::NameConfig { namespace: "default".into(), ..Default::default() },
        )
        .unwrap(),
    ));
    let port = s.start().unwrap()[0].port();
    // Loopback clients are served; a client from another address is refused.
    let m = ask_from(std::net::Ipv4Addr::LOCALHOST, SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(m.answers.len(), 1);
    let m = ask_from(outside, SocketAddr::from((outside, port)));
    assert_eq!((m.id, m.rcode(), m.answers.len()), (7, crate::dns::wire::Rcode::REFUSED, 0));
    assert_eq!(m.question.unwrap().0, NameBuf::from_text("product").unwrap());
    assert_eq!(outcome(&s, "refused"), 1);
    // Over TCP the connection is closed at once.
    let t = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    t.bind(&SocketAddr::from((outside, 0)).into()).unwrap();
    t.connect(&SocketAddr::from((outside, port)).into()).unwrap();
    let mut t: TcpStream = t.into();
    t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(t.read(&mut b), Ok(0) | Err(_)));
    wait_for("counted", || s.stats().tcp_rejected[0] == ("not_allowed", 1));
    s.stop();

    // Listed: served.
    let (up, _) = upstream();
    let cfg = ServerConfig {
        listen: vec![any(0)],
        allow: crate::dns::acl::AllowList::parse(&[format!("{outside}/32")]).unwrap(),
        ..config(vec![up])
    };
    let (s, bound) = server_cfg(cfg);
    assert!(s.warnings().is_empty());
    assert_eq!(ask_from(outside, SocketAddr::from((outside, bound.port()))).answers.len(), 1);
    // A loopback listener checks nothing: a captured query (REDIRECT to
    // 127.0.0.1) keeps its non-loopback source and is served.
    let (up, _) = upstream();
    let (s, lo) = server_cfg(config(vec![up]));
    assert_eq!(ask_from(outside, lo).answers.len(), 1);
    assert_eq!(outcome(&s, "refused"), 0);
}

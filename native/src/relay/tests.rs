//! Loopback tests of the pumps, admission and eviction, the limits, TLS
//! detection and the relay's lifecycle. Redirection through real netfilter
//! rules needs root and a network namespace; those tests are in
//! `tests/netns/test_relay_*.py` and `tests/hostile/test_relay_floods.py`.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::admit::{ConnState, Phase, Refused, Registry, EVICTABLE_IDLE_MS};
use super::inbound::{detect, Detected};
use super::limits::{connections_for, Limits, SourceKey};
use super::splice::{pump, End, PipePool};
use super::{monotonic_ms, Mode, Relay, RelayConfig, Routes};
use crate::lb::{Capture, LbTable, RedirectTable};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A connected TCP pair on loopback.
async fn pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn data(size: usize) -> Vec<u8> {
    (0..size as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// client -> (a|b) -pump-> (c|d) -> server, `size` bytes; returns the pump's
/// end, the bytes counted and what the server got.
fn pump_through(pool: Arc<PipePool>, size: usize) -> (End, u64, Vec<u8>) {
    rt().block_on(async move {
        let (mut client, b) = pair().await;
        let (c, mut server) = pair().await;
        let sent = data(size);
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let bytes = AtomicU64::new(0);
        let st = ConnState::new(monotonic_ms());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        let end = pump(&b, &c, &pool, &bytes, &st).await;
        socket2::SockRef::from(&c).shutdown(std::net::Shutdown::Write).unwrap();
        let got = reader.await.unwrap();
        drop(writer.await.unwrap());
        (end, bytes.load(Ordering::Relaxed), got)
    })
}

#[test]
fn pump_moves_a_large_stream_intact_and_gives_its_pipe_back() {
    let pool = Arc::new(PipePool::new(4, 1 << 16));
    let (end, bytes, got) = pump_through(pool.clone(), 8 << 20);
    assert_eq!(end, End::Eof);
    assert_eq!(got.len(), 8 << 20);
    assert_eq!(checksum(&got), checksum(&data(8 << 20)));
    assert_eq!(bytes, 8 << 20);
    // The pipe went back to the pool, empty, and is kept for the next burst.
    assert_eq!(pool.open(), 1);
    assert!(pool.take().is_some());
}

#[test]
fn without_a_free_pipe_the_pump_copies_and_stays_correct() {
    // No pipe may be opened at all: every chunk takes the copy path.
    let pool = Arc::new(PipePool::new(0, 1 << 16));
    let (end, bytes, got) = pump_through(pool.clone(), 3 << 20);
    assert_eq!(end, End::Eof);
    assert_eq!(bytes, 3 << 20);
    assert_eq!(checksum(&got), checksum(&data(3 << 20)));
    assert_eq!(pool.open(), 0);
}

#[test]
fn pump_reports_an_error_when_the_destination_resets() {
    rt().block_on(async {
        let (mut client, b) = pair().await;
        let (c, server) = pair().await;
        // The destination resets: writes into `c` fail with EPIPE/ECONNRESET.
        socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO)).unwrap();
        drop(server);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let w = tokio::spawn(async move {
            let chunk = vec![7u8; 1 << 16];
            for _ in 0..64 {
                if client.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            client
        });
        let pool = PipePool::new(4, 1 << 16);
        let end = pump(&b, &c, &pool, &AtomicU64::new(0), &ConnState::new(monotonic_ms())).await;
        assert_eq!(end, End::Error);
        // A pipe that may hold bytes is closed, not pooled.
        assert_eq!(pool.open(), 0);
        drop(b);
        drop(w.await.unwrap());
    });
}

#[test]
fn an_idle_relay_ends_as_idle_and_half_close_passes_through() {
    rt().block_on(async {
        // client <-> (b | c) <-> server through both pumps.
        let (mut client, b) = pair().await;
        let (c, mut server) = pair().await;
        let st = ConnState::new(monotonic_ms());
        let pool = PipePool::new(4, 1 << 16);
        let (sent, recv) = (AtomicU64::new(0), AtomicU64::new(0));
        let relay = async {
            let up = pump(&b, &c, &pool, &sent, &st);
            let down = pump(&c, &b, &pool, &recv, &st);
            super::accept::both_ways(up, down, &b, &c, &st, Some(Duration::from_millis(300))).await
        };
        let peers = async {
            client.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await.unwrap();
            server.write_all(b"pong").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong");
        };
        let started = std::time::Instant::now();
        let (end, ()) = tokio::join!(relay, peers);
        assert_eq!(end, End::Idle);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!((sent.load(Ordering::Relaxed), recv.load(Ordering::Relaxed)), (4, 4));
        // Half-close: the client's FIN reaches the server, which still answers.
        let (mut client, b) = pair().await;
        let (c, mut server) = pair().await;
        let st = ConnState::new(monotonic_ms());
        let relay = async {
            let up = pump(&b, &c, &pool, &sent, &st);
            let down = pump(&c, &b, &pool, &recv, &st);
            super::accept::both_ways(up, down, &b, &c, &st, None).await
        };
        let peers = async {
            client.write_all(b"question").await.unwrap();
            client.shutdown().await.unwrap();
            let mut q = Vec::new();
            server.read_to_end(&mut q).await.unwrap();
            server.write_all(b"answer").await.unwrap();
            server.shutdown().await.unwrap();
            let mut a = Vec::new();
            client.read_to_end(&mut a).await.unwrap();
            (q, a)
        };
        let (end, (q, a)) = tokio::join!(relay, peers);
        assert_eq!(end, End::Eof);
        assert_eq!((q.as_slice(), a.as_slice()), (&b"question"[..], &b"answer"[..]));
    });
}

#[test]
fn limits_follow_the_descriptor_budget() {
    // 1,024 descriptors, 40 open: (1024 - 40 - 128) / 2.5 / 2 relays.
    assert_eq!(connections_for(Some(1024), 40), 171);
    // The reserve is an eighth of larger limits.
    assert_eq!(connections_for(Some(1 << 20), 100), ((1u64 << 20) - 100 - (1 << 17)) as usize * 2 / 5 / 2);
    assert_eq!(connections_for(None, 0), connections_for(Some(1 << 20), 0));
    // Never below a floor, however small the budget.
    assert_eq!(connections_for(Some(64), 60), 16);
    let l = Limits::derive(None, None, |m| m / 4, (Some(1024), 40));
    assert_eq!((l.max_connections, l.max_connections_per_source, l.max_pipes), (171, 42, 42));
    // A configured maximum is capped by the budget, not the other way round.
    let l = Limits::derive(Some(100_000), Some(500), |m| m, (Some(1024), 40));
    assert_eq!((l.max_connections, l.max_connections_per_source), (171, 171));
    let l = Limits::derive(Some(10), None, |m| m, (Some(1 << 20), 40));
    assert_eq!((l.max_connections, l.max_connections_per_source, l.max_pipes), (10, 10, 4));
    // The relay derives its own from the process's budget.
    let relay = Relay::new(cfg("127.0.0.1:0"), routes()).unwrap();
    let (soft, open) = super::limits::fd_budget();
    assert!(relay.limits().max_connections <= connections_for(soft, open.saturating_sub(8)));
}

#[test]
fn sources_are_addresses_and_ipv6_slash_64s() {
    let v6 = |s: &str| SourceKey::of(s.parse::<Ipv6Addr>().unwrap().into());
    assert_eq!(v6("2001:db8::1"), v6("2001:db8::ffff:1"));
    assert_ne!(v6("2001:db8::1"), v6("2001:db8:0:1::1"));
    assert_eq!(v6("::ffff:10.0.0.1"), SourceKey::of([10, 0, 0, 1].into()));
    assert_ne!(SourceKey::of([10, 0, 0, 1].into()), SourceKey::of([10, 0, 0, 2].into()));
    // No IPv6 /64 collides with an IPv4 address.
    assert_ne!(v6("::a00:1"), SourceKey::of([10, 0, 0, 1].into()));
}

fn limits(max: usize, per_source: usize) -> Limits {
    Limits { max_connections: max, max_connections_per_source: per_source, max_pipes: 4, fd_limit: 1024 }
}

/// Makes a connection look idle (or handshaking) for `ms`.
fn age(st: &ConnState, phase: Phase, ms: u64) {
    st.set_phase(phase);
    st.touch(monotonic_ms().saturating_sub(ms));
}

#[test]
fn a_full_relay_evicts_handshaking_then_the_longest_idle_and_never_an_active_connection() {
    let reg = Arc::new(Registry::new(limits(4, 1000)));
    let src = SourceKey::of([10, 0, 0, 1].into());
    let slots: Vec<_> = (0..4).map(|_| reg.admit(src).unwrap().0).collect();
    // Two busy, one idle for 5 s, one idle for 2 s.
    age(&slots[0].state, Phase::Relay, 0);
    age(&slots[1].state, Phase::Relay, 10);
    age(&slots[2].state, Phase::Relay, 5000);
    age(&slots[3].state, Phase::Relay, 2000);
    let (fresh, evicted) = reg.admit(src).unwrap();
    assert_eq!(evicted, 1);
    assert!(slots[2].state.was_killed(), "the longest idle went first");
    assert!(!slots[3].state.was_killed() && !slots[0].state.was_killed());
    // A connection still waiting for its ClientHello goes before any idle one.
    age(&fresh.state, Phase::Hello, 0);
    let (f2, _) = reg.admit(src).unwrap();
    assert!(fresh.state.was_killed() && !slots[3].state.was_killed());
    // A handshake under way (a whole ClientHello came) is not evicted in its first second.
    age(&f2.state, Phase::Handshake, 10);
    age(&slots[3].state, Phase::Relay, EVICTABLE_IDLE_MS / 2);
    assert_eq!(reg.admit(src).unwrap_err(), Refused::Full);
    age(&f2.state, Phase::Handshake, 1500);
    age(&slots[3].state, Phase::Relay, 1200);
    let (f3, _) = reg.admit(src).unwrap();
    assert!(f2.state.was_killed() && !slots[3].state.was_killed(), "the longer stalled handshake went");
    age(&f3.state, Phase::Relay, 0);
    // Nothing evictable (all busy, or idle for less than a second): refused.
    age(&slots[3].state, Phase::Relay, EVICTABLE_IDLE_MS / 2);
    assert_eq!(reg.admit(src).unwrap_err(), Refused::Full);
    assert_eq!(reg.open(), 4);
    // Slots come back when connections end (an evicted one's already did).
    drop(slots);
    assert_eq!(reg.open(), 1);
    // Stop: every open connection is told, and nothing is admitted.
    let (s, _) = reg.admit(src).unwrap();
    reg.stop_all();
    assert!(s.state.was_killed());
    assert_eq!(reg.admit(src).unwrap_err(), Refused::Stopping);
}

#[test]
fn a_source_at_its_cap_evicts_its_own_connections_only() {
    let reg = Arc::new(Registry::new(limits(100, 3)));
    let (a, b) = (SourceKey::of([10, 0, 0, 1].into()), SourceKey::of([10, 0, 0, 2].into()));
    let others: Vec<_> = (0..3).map(|_| reg.admit(b).unwrap().0).collect();
    for s in &others {
        age(&s.state, Phase::Hello, 9000);
    }
    let mine: Vec<_> = (0..3).map(|_| reg.admit(a).unwrap().0).collect();
    for s in &mine {
        age(&s.state, Phase::Relay, 0);
    }
    // `a` is at its cap with busy connections: refused, though the relay has room
    // and `b` has far older handshaking ones.
    assert_eq!(reg.admit(a).unwrap_err(), Refused::Source);
    age(&mine[1].state, Phase::Hello, 10);
    let (_new, evicted) = reg.admit(a).unwrap();
    assert_eq!(evicted, 1);
    assert!(mine[1].state.was_killed());
    assert!(others.iter().all(|s| !s.state.was_killed()));
}

#[test]
fn the_source_holding_the_most_slots_gives_one_up_first() {
    // A legitimate client (one connection, its ClientHello not read yet and older)
    // beside a flooding source (three newer partial ClientHellos): the flood pays.
    let reg = Arc::new(Registry::new(limits(4, 100)));
    let (client, flood) = (SourceKey::of([10, 0, 0, 1].into()), SourceKey::of([10, 0, 0, 2].into()));
    let legit = reg.admit(client).unwrap().0;
    age(&legit.state, Phase::Hello, 500);
    let floods: Vec<_> = (0..3).map(|_| reg.admit(flood).unwrap().0).collect();
    for (i, s) in floods.iter().enumerate() {
        age(&s.state, Phase::Hello, 100 + i as u64);
    }
    let (_new, evicted) = reg.admit(flood).unwrap();
    assert_eq!(evicted, 1);
    assert!(!legit.state.was_killed(), "the lone client keeps its slot");
    assert!(floods[2].state.was_killed(), "the flood's oldest went");
}

#[test]
fn eviction_under_a_flood_goes_in_batches() {
    // 640 slots: a scan evicts 10, so a flood scans once per 10 admissions.
    let reg = Arc::new(Registry::new(limits(640, 640)));
    let src = SourceKey::of([10, 0, 0, 1].into());
    let slots: Vec<_> = (0..640).map(|_| reg.admit(src).unwrap().0).collect();
    for (i, s) in slots.iter().enumerate() {
        age(&s.state, Phase::Hello, 1000 + i as u64);
    }
    let (_, evicted) = reg.admit(src).unwrap();
    assert_eq!(evicted, 10);
    // The ten oldest.
    let killed: Vec<usize> = (0..640).filter(|&i| slots[i].state.was_killed()).collect();
    assert_eq!(killed, (630..640).collect::<Vec<_>>());
    for _ in 0..9 {
        assert_eq!(reg.admit(src).unwrap().1, 0);
    }
}

#[test]
fn detection_tells_tls_from_plaintext_and_times_out_silence_and_partial_headers() {
    rt().block_on(async {
        let soon = || tokio::time::Instant::now() + Duration::from_millis(200);
        let hello = [0x16, 3, 1, 0, 200, 1, 0, 0];
        for (bytes, want) in [
            (&hello[..], Detected::Tls),
            (&b"GET / HTTP/1.1\r\n"[..], Detected::Plain),
            // A handshake record that is not a ClientHello, a 2.x "record".
            (&[0x16, 3, 1, 0, 5, 2][..], Detected::Plain),
            (&[0x16, 2, 0, 0, 0, 1][..], Detected::Plain),
            (&[0x16, 3, 1][..], Detected::Partial),
            (&[][..], Detected::Silent),
        ] {
            let (mut a, b) = pair().await;
            a.write_all(bytes).await.unwrap();
            assert_eq!(detect(&b, soon(), soon()).await, want, "{bytes:?}");
            // Peeked only: every byte is still there for TLS or the app.
            if !bytes.is_empty() {
                // (Read past tokio, whose readiness detection cleared when it had to wait.)
                let mut got = vec![0u8; bytes.len()];
                let n = rustix::net::recv(&b, &mut got[..], rustix::net::RecvFlags::DONTWAIT).unwrap().0;
                assert_eq!(&got[..n], bytes);
            }
        }
        // A header completed by a later segment is found (edge-triggered wait, no polling).
        let (mut a, b) = pair().await;
        a.write_all(&hello[..3]).await.unwrap();
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.write_all(&hello[3..]).await.unwrap();
            a
        });
        let far = tokio::time::Instant::now() + Duration::from_secs(5);
        assert_eq!(detect(&b, far, far).await, Detected::Tls);
        drop(later.await.unwrap());
        // EOF before any byte.
        let (a, b) = pair().await;
        drop(a);
        assert_eq!(detect(&b, far, far).await, Detected::Closed);
    });
}

fn routes() -> Routes {
    let redirect = RedirectTable::build(&[], &Capture::default()).unwrap();
    Routes::new(Arc::new(redirect), Arc::new(LbTable::new(Some(1), None)))
}

fn cfg(listen: &str) -> RelayConfig {
    RelayConfig { listen: vec![listen.parse().unwrap()], ..Default::default() }
}

#[test]
fn a_connection_that_was_not_redirected_is_refused_not_looped() {
    let relay = Relay::new(cfg("127.0.0.1:0"), routes()).unwrap();
    let addrs = relay.start().unwrap();
    let mut s = std::net::TcpStream::connect(addrs[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    // Reset (or at least closed) without a byte: there is nowhere to go.
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    let st = relay.stats();
    assert_eq!(st.accepted, 1);
    assert_eq!(st.no_original_dst, 1);
    assert_eq!(st.connect_attempts, 0);
    relay.stop(Duration::from_secs(1));
    assert!(!relay.is_running());
    assert!(std::net::TcpStream::connect(addrs[0]).is_err(), "listener closed after stop");
}

#[test]
fn the_relay_serves_from_its_workers_alone_however_many_connections_come() {
    // The inbound relay's threads, by name (other tests run relays concurrently).
    let threads = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "pymesh-relay-in")
            .count()
    };
    let relay = Relay::new(RelayConfig { workers: 2, mode: Mode::Inbound, ..cfg("127.0.0.1:0") }, routes()).unwrap();
    let addrs = relay.start().unwrap();
    let wait_for = |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while threads() != n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        threads()
    };
    assert_eq!(wait_for(2), 2);
    let clients: Vec<_> = (0..200).map(|_| std::net::TcpStream::connect(addrs[0]).unwrap()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while relay.stats().accepted < 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(relay.stats().accepted, 200);
    assert_eq!(threads(), 2);
    drop(clients);
    relay.stop(Duration::from_secs(1));
    assert_eq!(wait_for(0), 0, "the event loop's threads end with stop");
}

#[test]
fn start_is_idempotent_and_port_zero_is_shared_by_listeners_and_a_restart_serves() {
    let mut c = cfg("127.0.0.1:0");
    c.listen.push("[::1]:0".parse().unwrap());
    let relay = Relay::new(c, routes()).unwrap();
    let a = match relay.start() {
        Ok(a) => a,
        // No IPv6 on this host's loopback: the v4 half is still tested below.
        Err(_) => {
            let relay = Relay::new(cfg("127.0.0.1:0"), routes()).unwrap();
            relay.start().unwrap()
        }
    };
    if a.len() == 2 {
        assert_eq!(a[0].port(), a[1].port());
        assert_eq!(relay.start().unwrap(), a);
    }
    relay.stop(Duration::from_secs(1));
    relay.stop(Duration::from_secs(1));
    let relay = Relay::new(cfg("127.0.0.1:0"), routes()).unwrap();
    let a = relay.start().unwrap();
    relay.stop(Duration::from_secs(1));
    let relay2 = Relay::new(cfg(&a[0].to_string()), routes()).unwrap();
    relay2.start().unwrap();
    let mut s = std::net::TcpStream::connect(a[0]).unwrap();
    let _ = s.write_all(b"x");
    relay2.stop(Duration::from_secs(1));
}

#[test]
fn invalid_settings_are_errors_naming_the_field() {
    for (c, field) in [
        (RelayConfig { connect_attempts: 0, ..cfg("127.0.0.1:0") }, "connect_attempts"),
        (RelayConfig { listen: Vec::new(), ..Default::default() }, "listen"),
        (RelayConfig { max_connections: Some(0), ..cfg("127.0.0.1:0") }, "max_connections"),
        (RelayConfig { max_connections_per_source: Some(0), ..cfg("127.0.0.1:0") }, "max_connections_per_source"),
        (RelayConfig { hello_timeout: Duration::ZERO, ..cfg("127.0.0.1:0") }, "hello_timeout"),
        (RelayConfig { keepalive: Some(Duration::from_millis(10)), ..cfg("127.0.0.1:0") }, "keepalive"),
    ] {
        let e = Relay::new(c, routes()).unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
    // A port in use is an I/O error naming the listen address.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken: SocketAddr = l.local_addr().unwrap();
    let relay = Relay::new(cfg(&taken.to_string()), routes()).unwrap();
    let e = relay.start().unwrap_err().to_string();
    assert!(e.contains("listen[0]"), "{e}");
}

#[test]
fn both_sockets_get_keepalive_and_a_user_timeout() {
    rt().block_on(async {
        let (a, b) = pair().await;
        super::accept::keepalive(&a, Some(Duration::from_secs(60)));
        let s = socket2::SockRef::from(&a);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(15));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        // Unacknowledged data is given up on after as long as keepalive would take.
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(120)));
        // Off: the socket is left as the kernel made it.
        super::accept::keepalive(&b, None);
        assert!(!socket2::SockRef::from(&b).keepalive().unwrap());
    });
}

/// A ClientHello from rustls to `sni` (the handshake is never finished:
/// the backend only has to see these bytes unchanged).
fn client_hello(sni: &str) -> Vec<u8> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg =
        rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// A gateway relay (SNI mode) whose one cluster `outbound|80||b.ns.svc.cluster.local`
/// has the endpoint `backend`.
fn sni_gateway(backend: SocketAddr) -> Relay {
    let c = serde_json::json!([{"name": "outbound|80||b.ns.svc.cluster.local", "type": "EDS",
        "lb_policy": "ROUND_ROBIN", "load_assignment": {"cluster_name": "outbound|80||b.ns.svc.cluster.local",
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address":
            {"address": backend.ip().to_string(), "port_value": backend.port()}}}}]}]}}]);
    let lb = LbTable::new(Some(1), None);
    lb.set_clusters(crate::lb::xds::clusters_from_value(&c, "test").unwrap(), 0);
    let redirect = RedirectTable::build(&[], &Capture::default()).unwrap();
    let routes = Routes::new(Arc::new(redirect), Arc::new(lb));
    let cfg = RelayConfig {
        mode: Mode::Sni,
        auto_mtls: false,
        hello_timeout: Duration::from_millis(500),
        ..cfg("127.0.0.1:0")
    };
    Relay::new(cfg, routes).unwrap()
}

#[test]
fn the_sni_gateway_splices_the_client_hello_unchanged_to_the_cluster_named_by_its_sni() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = sni_gateway(backend.local_addr().unwrap());
    let addr = relay.start().unwrap()[0];
    let hello = client_hello("outbound_.80_._.b.ns.svc.cluster.local");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // In two pieces: the gateway waits for the whole hello.
    s.write_all(&hello[..7]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&hello[7..]).unwrap();
    let (mut up, _) = backend.accept().unwrap();
    up.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = vec![0u8; hello.len()];
    up.read_exact(&mut got).unwrap();
    assert_eq!(got, hello);
    up.write_all(b"answer").unwrap();
    let mut back = [0u8; 6];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"answer");
    assert_eq!(relay.stats().cluster, 1);
}

#[test]
fn the_sni_gateway_refuses_and_counts_what_it_cannot_route() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = sni_gateway(backend.local_addr().unwrap());
    let addr = relay.start().unwrap()[0];
    let closed = |bytes: &[u8]| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(bytes).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    };
    closed(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n");
    closed(&client_hello("b.ns.svc.cluster.local"));
    closed(&client_hello("inbound_.80_._.b.ns.svc.cluster.local"));
    closed(&client_hello("outbound_.81_._.b.ns.svc.cluster.local"));
    // Silent past the hello timeout.
    closed(&[]);
    let st = relay.stats();
    assert_eq!((st.not_tls, st.sni_refused, st.unknown_cluster, st.hello_timeouts, st.cluster), (1, 2, 1, 1, 0));
    backend.set_nonblocking(true).unwrap();
    assert!(backend.accept().is_err(), "nothing reached the backend");
}

#[test]
fn a_forward_listener_passes_bytes_both_ways_to_its_one_address() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = RelayConfig { mode: Mode::Forward(backend.local_addr().unwrap()), ..cfg("127.0.0.1:0") };
    let relay = Relay::new(cfg, routes()).unwrap();
    let addr = relay.start().unwrap()[0];
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"\x16\x03\x01hello").unwrap();
    let (mut up, _) = backend.accept().unwrap();
    let mut got = [0u8; 8];
    up.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"\x16\x03\x01hello");
    up.write_all(b"ok").unwrap();
    let mut back = [0u8; 2];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ok");
    assert_eq!(relay.stats().passthrough, 1);
}

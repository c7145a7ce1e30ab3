//! Loopback tests of the pumps and the relay's lifecycle. Redirection
//! through real netfilter rules needs root and a network namespace; those
//! tests are in `tests/netns/test_relay_*.py`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::splice::{pump, End, Pipe};
use super::{Relay, RelayConfig, Routes};
use crate::lb::{Capture, LbTable, RedirectTable};

/// A connected TCP pair on loopback.
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[test]
fn pump_moves_a_large_stream_intact_and_reports_eof() {
    // client -> (a|b) -pump-> (c|d) -> server
    let (mut client, b) = pair();
    let (c, mut server) = pair();
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let want = checksum(&data);
    let writer = std::thread::spawn(move || {
        client.write_all(&data).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        client
    });
    let bytes = Arc::new(AtomicU64::new(0));
    let pipe = Pipe::new(1 << 16).unwrap();
    let counted = bytes.clone();
    let pumper = std::thread::spawn(move || {
        let end = pump(&b, &c, &pipe, &counted, None);
        c.shutdown(Shutdown::Write).unwrap();
        drop(b);
        end
    });
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    assert_eq!(pumper.join().unwrap(), End::Eof);
    drop(writer.join().unwrap());
    assert_eq!(got.len(), 8 << 20);
    assert_eq!(checksum(&got), want);
    assert_eq!(bytes.load(std::sync::atomic::Ordering::Relaxed), 8 << 20);
}

#[test]
fn pump_reports_an_error_when_the_destination_resets() {
    let (mut client, b) = pair();
    let (c, server) = pair();
    // The destination resets: writes into `c` fail with EPIPE/ECONNRESET.
    socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO)).unwrap();
    drop(server);
    std::thread::sleep(Duration::from_millis(20));
    let w = std::thread::spawn(move || {
        let chunk = vec![7u8; 1 << 16];
        for _ in 0..64 {
            if client.write_all(&chunk).is_err() {
                break;
            }
        }
        client
    });
    let pipe = Pipe::new(1 << 16).unwrap();
    let end = pump(&b, &c, &pipe, &AtomicU64::new(0), None);
    assert_eq!(end, End::Error);
    drop(b);
    drop(w.join().unwrap());
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
    let mut s = TcpStream::connect(addrs[0]).unwrap();
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
    assert!(TcpStream::connect(addrs[0]).is_err(), "listener closed after stop");
}

#[test]
fn start_is_idempotent_and_port_zero_is_shared_by_listeners() {
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
}

#[test]
fn invalid_settings_are_errors_naming_the_field() {
    let mut c = cfg("127.0.0.1:0");
    c.connect_attempts = 0;
    let e = Relay::new(c, routes()).unwrap_err().to_string();
    assert!(e.contains("connect_attempts"), "{e}");
    let c = RelayConfig { listen: Vec::new(), ..Default::default() };
    let e = Relay::new(c, routes()).unwrap_err().to_string();
    assert!(e.contains("listen"), "{e}");
    // A port in use is an I/O error naming the listen address.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken: SocketAddr = l.local_addr().unwrap();
    let relay = Relay::new(cfg(&taken.to_string()), routes()).unwrap();
    let e = relay.start().unwrap_err().to_string();
    assert!(e.contains("listen[0]"), "{e}");
}

#[test]
fn the_pool_reuses_parked_threads_and_runs_every_job() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = super::pool::Pool::new(64 * 1024, Duration::from_secs(5));
    let done = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    for n in 1..=50 {
        let (d, i) = (done.clone(), ids.clone());
        pool.execute(move || {
            i.lock().unwrap().insert(std::thread::current().id());
            d.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        // Sequential jobs: each finds the previous job's thread parked.
        while done.load(Ordering::SeqCst) < n || pool.idle() == 0 {
            std::thread::yield_now();
        }
    }
    assert_eq!(done.load(Ordering::SeqCst), 50);
    assert_eq!(ids.lock().unwrap().len(), 1, "one thread served every sequential job");
    // Concurrent jobs that block get a thread each.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let started = Arc::new(AtomicUsize::new(0));
    for _ in 0..4 {
        let (r, s) = (rx.clone(), started.clone());
        pool.execute(move || {
            s.fetch_add(1, Ordering::SeqCst);
            let _ = r.lock().unwrap().recv();
        })
        .unwrap();
    }
    let t0 = std::time::Instant::now();
    while started.load(Ordering::SeqCst) < 4 {
        assert!(t0.elapsed() < Duration::from_secs(5), "a job was left waiting for a busy thread");
        std::thread::yield_now();
    }
    for _ in 0..4 {
        tx.send(()).unwrap();
    }
}

//! Forwarding to upstream resolvers: resilient, and strict about what it
//! accepts.
//!
//! Istio's behaviour (istio `pkg/dns/client/dns.go`, `queryUpstream`, with
//! the miekg/dns client of `pkg/dns/client/proxy.go`) and what goes wrong
//! with it: it forwards the client's message verbatim with a 512-byte
//! receive buffer (answers above 512 bytes become SERVFAIL,
//! istio/istio#61371), never retries over TCP, tries servers one after
//! another with 5 s timeouts (istio/istio#53414) and keeps no health. Here:
//! - the upstream query carries our own EDNS0 (1232 bytes) and is read into
//!   a 64 KiB buffer; a truncated answer is retried over TCP (RFC 7766 §5);
//! - every attempt has its own timeout (default 1 s, well below a stub
//!   resolver's 5 s); servers are ordered healthy first, then by smoothed
//!   RTT; after a hedge delay the next server is asked too, and the first
//!   good answer wins; SERVFAIL only when every server failed;
//! - anti-spoofing (RFC 5452): a fresh socket (random source port) and a
//!   random ID per attempt; an answer counts only if it comes from the server
//!   asked, with our ID and exactly our question, letter case included
//!   (the case we sent is the client's, so mixed-case clients get 0x20
//!   protection). Anything else is dropped, counted, and the attempt keeps
//!   waiting for the real answer.
//!
//! An attempt waiting on a silent server holds its socket and a few hundred
//! bytes of state, not a receive buffer: datagrams are read, once the socket
//! is readable, into one 64 KiB buffer per runtime thread (a 64 KiB buffer
//! per attempt let a flood of names to a silent upstream hold hundreds of
//! megabytes). How many attempts can wait at once is bounded by the server's
//! pending-forward limits (`server::admit`), how long by `attempt_timeout`.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::metrics::Metrics;
use super::wire::{flag, parse_message, write_upstream_query, Message, Query, Rcode, MAX_MESSAGE};

/// Failures in a row after which a server is put last for a while.
const UNHEALTHY_AFTER: u32 = 3;
/// How long an unhealthy server stays at the back of the line.
const PENALTY: Duration = Duration::from_secs(5);

/// Forwarding settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub servers: Vec<SocketAddr>,
    /// Timeout of one attempt on one server.
    pub attempt_timeout: Duration,
    /// After this long without an answer, the next server is asked as well.
    pub hedge_delay: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            servers: Vec::new(),
            attempt_timeout: Duration::from_secs(1),
            hedge_delay: Duration::from_millis(150),
        }
    }
}

/// A server and what we learned about it.
#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    /// Smoothed RTT in microseconds (RFC 6298 style, alpha 1/8); 0 = unknown.
    srtt_us: AtomicU32,
    fails: AtomicU32,
    /// Milliseconds since `epoch` until which the server counts as unhealthy.
    down_until_ms: AtomicU64,
}

/// Health and order of one server, for stats.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub addr: SocketAddr,
    pub srtt: Duration,
    pub consecutive_failures: u32,
    pub healthy: bool,
}

/// Why one attempt failed.
#[derive(Debug)]
enum AttemptError {
    Timeout,
    Io,
    /// A well-formed answer we do not pass on (SERVFAIL, REFUSED, ...); kept
    /// in case every server fails, then the client gets SERVFAIL anyway.
    Rcode,
}

#[derive(Debug)]
pub struct Upstreams {
    servers: Vec<Server>,
    cfg: UpstreamConfig,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

thread_local! {
    /// Upstream datagrams are read here (any UDP payload fits), then parsed
    /// into an owned [`Message`] before the next await.
    static RECV: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; MAX_MESSAGE].into_boxed_slice());
}

/// A random 16-bit ID from the OS CSPRNG (RFC 5452 §9.2).
fn random_id() -> u16 {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        // No entropy source: fall back to the clock's low bits (never
        // happens on Linux; the source port is still random).
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        return (n ^ (n >> 16)) as u16;
    }
    u16::from_ne_bytes(b)
}

impl Upstreams {
    pub fn new(cfg: UpstreamConfig, metrics: Arc<Metrics>) -> Upstreams {
        let servers = cfg
            .servers
            .iter()
            .map(|&addr| Server {
                addr,
                srtt_us: AtomicU32::new(0),
                fails: AtomicU32::new(0),
                down_until_ms: AtomicU64::new(0),
            })
            .collect();
        Upstreams { servers, cfg, epoch: Instant::now(), metrics }
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn healthy(&self, s: &Server) -> bool {
        s.down_until_ms.load(Relaxed) <= self.now_ms()
    }

    /// Servers in the order they are tried: healthy first, then by smoothed
    /// RTT (unknown counts as fast, so new servers get tried), then config order.
    fn order(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.servers.len()).collect();
        idx.sort_by_key(|&i| {
            let s = &self.servers[i];
            (!self.healthy(s), s.srtt_us.load(Relaxed), i)
        });
        idx
    }

    pub fn states(&self) -> Vec<ServerState> {
        self.servers
            .iter()
            .map(|s| ServerState {
                addr: s.addr,
                srtt: Duration::from_micros(s.srtt_us.load(Relaxed) as u64),
                consecutive_failures: s.fails.load(Relaxed),
                healthy: self.healthy(s),
            })
            .collect()
    }

    fn success(&self, s: &Server, rtt: Duration) {
        let sample = rtt.as_micros().min(u32::MAX as u128) as u32;
        let old = s.srtt_us.load(Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        s.srtt_us.store(new.max(1), Relaxed);
        s.fails.store(0, Relaxed);
        s.down_until_ms.store(0, Relaxed);
    }

    /// An attempt cancelled because another server answered first: it took
    /// at least `elapsed`, which is a sample too (else a server that always
    /// loses the race would keep an unknown, i.e. fast-looking, RTT).
    fn lost_race(&self, s: &Server, elapsed: Duration) {
        let sample = elapsed.as_micros().min(u32::MAX as u128) as u32;
        let old = s.srtt_us.load(Relaxed);
        if sample > old {
            let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
            s.srtt_us.store(new.max(1), Relaxed);
        }
    }

    fn failure(&self, s: &Server) {
        let f = s.fails.fetch_add(1, Relaxed) + 1;
        if f >= UNHEALTHY_AFTER {
            s.down_until_ms.store(self.now_ms() + PENALTY.as_millis() as u64, Relaxed);
        }
        // A timeout is at least as slow as the timeout: make it rank late.
        let t = self.cfg.attempt_timeout.as_micros().min(u32::MAX as u128) as u32;
        let old = s.srtt_us.load(Relaxed);
        s.srtt_us.store(if old == 0 { t } else { old - old / 8 + t / 8 }.max(1), Relaxed);
    }

    /// Resolves `q` upstream: the first good answer of the hedged attempts,
    /// or `None` when every server failed (the caller answers SERVFAIL).
    pub async fn resolve(self: &Arc<Self>, q: &Query) -> Option<Message> {
        let order = self.order();
        if order.is_empty() {
            return None;
        }
        let q = Arc::new(q.clone());
        let mut set = JoinSet::new();
        let mut next = 0usize;
        // Attempts still running and when they started, to time the ones
        // that lose the race.
        let mut running: Vec<(usize, Instant)> = Vec::with_capacity(order.len());
        let spawn = |set: &mut JoinSet<(usize, Result<Message, AttemptError>)>, i: usize| {
            let me = self.clone();
            let q = q.clone();
            set.spawn(async move {
                let r = me.attempt(i, &q).await;
                (i, r)
            });
            (i, Instant::now())
        };
        running.push(spawn(&mut set, order[next]));
        next += 1;
        loop {
            let hedge = tokio::time::sleep(self.cfg.hedge_delay);
            tokio::select! {
                done = set.join_next() => {
                    match done {
                        Some(Ok((won, Ok(m)))) => {
                            for &(i, t) in running.iter().filter(|(i, _)| *i != won) {
                                self.lost_race(&self.servers[i], t.elapsed());
                            }
                            return Some(m);
                        }
                        Some(Ok((failed, Err(_)))) => {
                            running.retain(|(i, _)| *i != failed);
                            // Failed fast: ask the next server right away.
                            if next < order.len() {
                                running.push(spawn(&mut set, order[next]));
                                next += 1;
                            } else if set.is_empty() {
                                return None;
                            }
                        }
                        // A panicked attempt task: counts as failed.
                        Some(Err(_)) if next < order.len() => {
                            running.push(spawn(&mut set, order[next]));
                            next += 1;
                        }
                        Some(Err(_)) if set.is_empty() => return None,
                        Some(Err(_)) => {}
                        None => return None,
                    }
                }
                _ = hedge, if next < order.len() => {
                    self.metrics.hedge();
                    running.push(spawn(&mut set, order[next]));
                    next += 1;
                }
            }
        }
    }

    async fn attempt(&self, i: usize, q: &Query) -> Result<Message, AttemptError> {
        let s = &self.servers[i];
        self.metrics.attempt();
        let start = Instant::now();
        let r = match tokio::time::timeout(self.cfg.attempt_timeout, self.exchange(s.addr, q)).await {
            Ok(r) => r,
            Err(_) => Err(AttemptError::Timeout),
        };
        match &r {
            Ok(_) => self.success(s, start.elapsed()),
            Err(AttemptError::Rcode) => self.success(s, start.elapsed()),
            Err(_) => self.failure(s),
        }
        r
    }

    async fn exchange(&self, addr: SocketAddr, q: &Query) -> Result<Message, AttemptError> {
        let m = self.exchange_udp(addr, q).await?;
        let m = if m.flags & flag::TC != 0 {
            // RFC 7766 §5: a truncated UDP answer is retried over TCP.
            self.metrics.tcp_retry();
            self.exchange_tcp(addr, q).await?
        } else {
            m
        };
        match m.rcode() {
            Rcode::NOERROR | Rcode::NXDOMAIN => Ok(m),
            _ => Err(AttemptError::Rcode),
        }
    }

    /// Whether `m` answers exactly what we sent: ID, QR, and the question
    /// byte for byte (so the letter case too).
    fn matches(m: &Message, id: u16, q: &Query) -> bool {
        m.id == id
            && m.flags & flag::QR != 0
            && m.question
                .as_ref()
                .is_some_and(|(n, t, c)| n.as_wire() == q.qname.as_wire() && *t == q.qtype && *c == q.qclass)
    }

    async fn exchange_udp(&self, addr: SocketAddr, q: &Query) -> Result<Message, AttemptError> {
        let bind: SocketAddr = match addr.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        // A fresh socket per attempt: the kernel picks a random ephemeral port.
        let sock = UdpSocket::bind(bind).await.map_err(|_| AttemptError::Io)?;
        let id = random_id();
        let mut out = [0u8; 512];
        let n = write_upstream_query(id, q, &mut out);
        if n == 0 {
            return Err(AttemptError::Io);
        }
        sock.send_to(&out[..n], addr).await.map_err(|_| AttemptError::Io)?;
        loop {
            sock.readable().await.map_err(|_| AttemptError::Io)?;
            let got = RECV.with(|buf| {
                let mut buf = buf.borrow_mut();
                match sock.try_recv_from(&mut buf) {
                    Ok((len, from)) => Ok(Some((from, parse_message(&buf[..len])))),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                    Err(_) => Err(AttemptError::Io),
                }
            })?;
            let Some((from, parsed)) = got else { continue };
            if from != addr {
                self.metrics.spoof();
                continue;
            }
            match parsed {
                Ok(m) if Self::matches(&m, id, q) => return Ok(m),
                // Wrong ID, question or case, or garbage: not our answer.
                _ => self.metrics.spoof(),
            }
        }
    }

    async fn exchange_tcp(&self, addr: SocketAddr, q: &Query) -> Result<Message, AttemptError> {
        let mut s = TcpStream::connect(addr).await.map_err(|_| AttemptError::Io)?;
        let id = random_id();
        let mut out = [0u8; 514];
        let n = write_upstream_query(id, q, &mut out[2..]);
        if n == 0 {
            return Err(AttemptError::Io);
        }
        out[..2].copy_from_slice(&(n as u16).to_be_bytes());
        s.write_all(&out[..n + 2]).await.map_err(|_| AttemptError::Io)?;
        let len = s.read_u16().await.map_err(|_| AttemptError::Io)? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await.map_err(|_| AttemptError::Io)?;
        match parse_message(&buf) {
            Ok(m) if Self::matches(&m, id, q) => Ok(m),
            _ => {
                self.metrics.spoof();
                Err(AttemptError::Io)
            }
        }
    }
}

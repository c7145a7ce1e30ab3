//! The serving loop: UDP workers answering from the table without taking a
//! lock or allocating, a small async runtime for TCP and forwarding.
//!
//! Threads (see ARCHITECTURE.md):
//! - per listen address, `workers` UDP threads (default one per core), each
//!   with its own socket bound to the same port with `SO_REUSEPORT`, so the
//!   kernel spreads clients over them; each reads up to 32 datagrams with
//!   one `recvmmsg` and sends the local answers with one `sendmmsg` (Linux);
//! - a tokio runtime for TCP connections (pipelined, idle and read
//!   timeouts) and for forwarded queries, whose replies are sent from the
//!   runtime on the worker's socket.
//!
//! Limits (a flood must neither grow memory without bound nor
//! lock legitimate clients out): forwards waiting for an upstream are
//! capped in all and per client, the excess answered SERVFAIL at once
//! (`admit`); TCP connections are capped in all and per client, a newcomer
//! at a cap closing the oldest idle connection (`conns`); a TCP connection
//! has at most `tcp_max_inflight` queries in flight and stops reading
//! beyond. A listener off loopback serves only loopback clients and its
//! allow-list (`acl`).
//!
//! A table swap is one atomic store ([`LiveDnsTable::publish`]); a worker
//! loads the snapshot once per batch and answers the batch from it, so no
//! query sees a mix of two tables and none is lost.

mod admit;
mod conns;
mod tcp;
mod udp;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use socket2::{Domain, Protocol, Socket, Type};

use super::acl::{exposure_warnings, is_loopback, AllowList};
use super::answer::AnswerConfig;
use super::forward::Forwarder;
use super::metrics::{Gauges, Metrics, Stats};
use super::table::LiveDnsTable;
use super::upstream::{ServerState, UpstreamConfig};
use crate::error::{Error, Result};
use crate::names::NameTable;

/// The default listeners: both loopbacks (Istio #51609 binds `::1` too).
pub const DEFAULT_PORT: u16 = 15053;

/// Everything a server is started with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// UDP and TCP listen addresses. Port 0: one free port, shared by UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// UDP worker threads per address; 0 means one per core.
    pub workers: usize,
    pub upstream: UpstreamConfig,
    pub answer: AnswerConfig,
    /// Cache bounds; 0 entries turns the cache off.
    pub cache_entries: usize,
    pub cache_bytes: usize,
    /// TCP: a connection with no query for this long is closed (RFC 7766 §6.2.3).
    pub tcp_idle_timeout: Duration,
    /// TCP: a query must arrive whole within this long once started.
    pub tcp_read_timeout: Duration,
    /// TCP connections open at once, in all and per client (an IPv4 address
    /// or IPv6 /64); at a limit a new connection closes the oldest idle one.
    pub tcp_max_connections: usize,
    pub tcp_max_connections_per_client: usize,
    /// Queries of one connection answered concurrently (pipelining, RFC 7766
    /// §6.2.1.1); the connection is not read further until one finishes.
    pub tcp_max_inflight: usize,
    /// Forwarded queries (UDP and TCP) waiting for an upstream at once, in
    /// all (lowered at start to what the file descriptors allow, see
    /// [`Server::forward_limit`]) and per client; beyond, SERVFAIL at once.
    pub max_pending_forwards: usize,
    pub max_pending_forwards_per_client: usize,
    /// Networks served by listeners off loopback, besides loopback clients
    /// (loopback listeners serve whoever reaches them: only this host can).
    pub allow: AllowList,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![(Ipv4Addr::LOCALHOST, DEFAULT_PORT).into(), (Ipv6Addr::LOCALHOST, DEFAULT_PORT).into()],
            workers: 0,
            upstream: UpstreamConfig::default(),
            answer: AnswerConfig::default(),
            cache_entries: 10_000,
            cache_bytes: 16 << 20,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_read_timeout: Duration::from_secs(2),
            tcp_max_connections: 512,
            tcp_max_connections_per_client: 64,
            tcp_max_inflight: 16,
            max_pending_forwards: 1024,
            max_pending_forwards_per_client: 256,
            allow: AllowList::default(),
        }
    }
}

/// State shared by every thread of a server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) table: LiveDnsTable,
    pub(crate) answer: ArcSwap<AnswerConfig>,
    pub(crate) forwarder: Forwarder,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stop: AtomicBool,
    /// Forwards waiting for an upstream (UDP and TCP), bounded in all and per client.
    pub(crate) gate: Arc<admit::ForwardGate>,
    /// TCP connections of every listener (set at start).
    conns: ArcSwapOption<conns::Conns>,
}

/// A running server's threads and sockets.
#[derive(Debug)]
struct Running {
    udp: Vec<JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
    addrs: Vec<SocketAddr>,
}

/// A DNS proxy server. Create, swap tables in at any time, start, stop.
#[derive(Debug)]
pub struct Server {
    cfg: Mutex<ServerConfig>,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Io { path: what.to_string(), source: e }
}

/// A UDP socket for `addr` with `SO_REUSEPORT`, so several workers share the port.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    // Bursts of queries must not be dropped by a small default buffer.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    // Workers wake up this often to notice `stop`.
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Binds `workers` UDP sockets and a TCP listener on one port. For port 0
/// the first socket picks the port; a few tries if TCP finds it taken.
fn bind_all(addr: SocketAddr, workers: usize) -> Result<(Vec<std::net::UdpSocket>, std::net::TcpListener, SocketAddr)> {
    let tries = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let first = udp_socket(addr).map_err(|e| io_err(format!("listen udp {addr}"), e))?;
        let bound = first.local_addr().map_err(|e| io_err(format!("listen udp {addr}"), e))?;
        let tcp = match tcp_listener(bound) {
            Ok(t) => t,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let mut socks = vec![first];
        for _ in 1..workers {
            socks.push(udp_socket(bound).map_err(|e| io_err(format!("listen udp {bound}"), e))?);
        }
        return Ok((socks, tcp, bound));
    }
    Err(io_err(format!("listen tcp {addr}"), last.unwrap_or_else(|| std::io::Error::other("no port"))))
}

impl Server {
    pub fn new(cfg: ServerConfig) -> Result<Server> {
        if cfg.listen.is_empty() {
            return Err(Error::config("listen", "at least one address is needed"));
        }
        let metrics = Arc::new(Metrics::default());
        let shared = Arc::new(Shared {
            table: LiveDnsTable::new(),
            answer: ArcSwap::from_pointee(cfg.answer.clone()),
            forwarder: Forwarder::new(cfg.upstream.clone(), cfg.cache_entries, cfg.cache_bytes, metrics.clone()),
            metrics,
            stop: AtomicBool::new(false),
            gate: Arc::new(admit::ForwardGate::new(
                admit::fd_bounded(cfg.max_pending_forwards, cfg.upstream.servers.len()),
                cfg.max_pending_forwards_per_client,
            )),
            conns: ArcSwapOption::empty(),
        });
        Ok(Server { cfg: Mutex::new(cfg), shared, running: Mutex::new(None) })
    }

    /// Publishes a new table; queries from now on are answered from it.
    /// Returns the table generation (1 for the first).
    pub fn swap_table(&self, names: Arc<NameTable>) -> u64 {
        self.shared.table.publish(names)
    }

    pub fn generation(&self) -> u64 {
        self.shared.table.generation()
    }

    /// The configuration now in force.
    pub fn config(&self) -> ServerConfig {
        self.cfg.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes local-answer settings and upstreams while serving.
    pub fn reconfigure(&self, answer: Option<AnswerConfig>, upstream: Option<UpstreamConfig>) {
        let mut cfg = self.cfg.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = answer {
            cfg.answer = a.clone();
            self.shared.answer.store(Arc::new(a));
        }
        if let Some(u) = upstream {
            cfg.upstream = u.clone();
            self.shared.forwarder.set_upstreams(u);
            self.set_forward_limits(&cfg);
        }
    }

    /// The pending-forward limits for `cfg`: the total lowered to what the
    /// file descriptors allow with its number of upstreams.
    fn set_forward_limits(&self, cfg: &ServerConfig) {
        let total = admit::fd_bounded(cfg.max_pending_forwards, cfg.upstream.servers.len());
        self.shared.gate.set_limits(total, cfg.max_pending_forwards_per_client);
    }

    /// What an operator should be warned about in this configuration: a
    /// listener off loopback without an allow-list (only loopback clients are
    /// served there) or with one that admits every address.
    pub fn warnings(&self) -> Vec<String> {
        let cfg = self.cfg.lock().unwrap_or_else(|p| p.into_inner());
        exposure_warnings(&cfg.listen, &cfg.allow)
    }

    /// Binds every listener and starts the threads. Fails (and starts
    /// nothing) if any address cannot be bound.
    pub fn start(&self) -> Result<Vec<SocketAddr>> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.as_ref() {
            return Ok(r.addrs.clone());
        }
        let cfg = self.cfg.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let workers =
            if cfg.workers == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { cfg.workers };
        let mut bound = Vec::new();
        for &addr in &cfg.listen {
            bound.push(bind_all(addr, workers)?);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.clamp(1, 4))
            .thread_name("pymesh-dns-io")
            .enable_all()
            .build()
            .map_err(|e| io_err("tokio runtime", e))?;
        self.shared.stop.store(false, Ordering::Release);
        // The descriptor limit may have been raised since `new`.
        self.set_forward_limits(&cfg);
        let conns = Arc::new(conns::Conns::new(
            cfg.tcp_max_connections,
            cfg.tcp_max_connections_per_client,
            self.shared.metrics.clone(),
        ));
        self.shared.conns.store(Some(conns.clone()));
        let allow = Arc::new(cfg.allow.clone());
        let mut udp = Vec::new();
        let mut addrs = Vec::new();
        for (socks, tcp, addr) in bound {
            addrs.push(addr);
            // Only a listener off loopback checks its clients (see `acl`).
            let acl = (!is_loopback(addr.ip())).then(|| allow.clone());
            for (i, s) in socks.into_iter().enumerate() {
                let shared = self.shared.clone();
                let handle = runtime.handle().clone();
                let acl = acl.clone();
                let t = std::thread::Builder::new()
                    .name(format!("pymesh-dns-udp-{i}"))
                    .spawn(move || udp::worker(Arc::new(s), shared, handle, acl))
                    .map_err(|e| io_err("spawn UDP worker", e))?;
                udp.push(t);
            }
            let shared = self.shared.clone();
            let limits = tcp::Limits::from(&cfg);
            let _guard = runtime.enter();
            let listener =
                tokio::net::TcpListener::from_std(tcp).map_err(|e| io_err(format!("listen tcp {addr}"), e))?;
            runtime.spawn(tcp::serve(listener, shared, limits, conns.clone(), acl));
        }
        *running = Some(Running { udp, runtime, addrs: addrs.clone() });
        Ok(addrs)
    }

    /// Stops every thread and closes the sockets. Idempotent.
    pub fn stop(&self) {
        let r = self.running.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(r) = r {
            self.shared.stop.store(true, Ordering::Release);
            for t in r.udp {
                let _ = t.join();
            }
            r.runtime.shutdown_timeout(Duration::from_millis(500));
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The bound addresses (ports resolved), empty when stopped.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or_else(Vec::new, |r| r.addrs.clone())
    }

    pub fn stats(&self) -> Stats {
        self.shared.metrics.stats()
    }

    pub fn upstream_states(&self) -> Vec<ServerState> {
        self.shared.forwarder.upstreams().states()
    }

    pub fn cache_len(&self) -> usize {
        self.shared.forwarder.cache_len()
    }

    pub fn cache_bytes(&self) -> usize {
        self.shared.forwarder.cache_bytes()
    }

    /// Forwards waiting for an upstream now.
    pub fn pending_forwards(&self) -> usize {
        self.shared.gate.pending()
    }

    /// How many forwards may wait at once: `max_pending_forwards`, lowered to
    /// half the soft `RLIMIT_NOFILE` divided by the number of upstreams (each
    /// pending forward may hold a socket per upstream).
    pub fn forward_limit(&self) -> usize {
        self.shared.gate.limit()
    }

    /// Open TCP client connections.
    pub fn tcp_connections(&self) -> usize {
        self.shared.conns.load_full().map_or(0, |c| c.open())
    }

    /// Prometheus text exposition of the counters.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render(&Gauges {
            cache_entries: self.shared.forwarder.cache_len(),
            forwards_pending: self.pending_forwards(),
            forwards_limit: self.forward_limit(),
            tcp_connections: self.tcp_connections(),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;

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
//! A table swap is one atomic store ([`LiveDnsTable::publish`]); a worker
//! loads the snapshot once per batch and answers the batch from it, so no
//! query sees a mix of two tables and none is lost.

mod tcp;
mod udp;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};

use super::answer::AnswerConfig;
use super::forward::Forwarder;
use super::metrics::{Metrics, Stats};
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
    pub tcp_max_connections: usize,
    /// Queries of one connection answered concurrently (pipelining, RFC 7766 §6.2.1.1).
    pub tcp_max_inflight: usize,
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
            tcp_max_inflight: 16,
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
    /// Forwarded UDP queries in flight, bounded by `MAX_UDP_FORWARDS` so a
    /// flood of distinct unknown names cannot grow memory without bound.
    pub(crate) udp_forwards: std::sync::atomic::AtomicUsize,
}

/// Forwarded UDP queries in flight at most; beyond, queries are dropped (the
/// client retries). Each costs a task and a socket for at most the attempt
/// timeouts.
pub(crate) const MAX_UDP_FORWARDS: usize = 4096;

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
            udp_forwards: std::sync::atomic::AtomicUsize::new(0),
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
        }
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
        // Tasks cut off by a previous stop never decremented it.
        self.shared.udp_forwards.store(0, Ordering::Release);
        let mut udp = Vec::new();
        let mut addrs = Vec::new();
        for (socks, tcp, addr) in bound {
            addrs.push(addr);
            for (i, s) in socks.into_iter().enumerate() {
                let shared = self.shared.clone();
                let handle = runtime.handle().clone();
                let t = std::thread::Builder::new()
                    .name(format!("pymesh-dns-udp-{i}"))
                    .spawn(move || udp::worker(Arc::new(s), shared, handle))
                    .map_err(|e| io_err("spawn UDP worker", e))?;
                udp.push(t);
            }
            let shared = self.shared.clone();
            let limits = tcp::Limits::from(&cfg);
            let _guard = runtime.enter();
            let listener =
                tokio::net::TcpListener::from_std(tcp).map_err(|e| io_err(format!("listen tcp {addr}"), e))?;
            runtime.spawn(tcp::serve(listener, shared, limits));
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

    /// Prometheus text exposition of the counters.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render(self.shared.forwarder.cache_len())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;

//! The outbound proxy: connections that the capture rules redirected to
//! port 15001 are classified by their original destination, sent to an
//! endpoint of the service's cluster (or, for anything else, to where they
//! were going), and relayed in both directions with `splice(2)`.
//!
//! What happens to one connection follows Envoy's `tcp_proxy` on Istio's
//! `virtualOutbound` listener:
//! 1. the original destination is read with `SO_ORIGINAL_DST` (IPv4) or
//!    `IP6T_SO_ORIGINAL_DST` (IPv6), which the kernel keeps in the
//!    connection's conntrack entry after `REDIRECT` ([`original_destination`]);
//! 2. the [`RedirectTable`] says Cluster, Passthrough or Bypass;
//! 3. for a cluster, an endpoint is picked with the cluster's policy; a
//!    connect failure is reported to outlier detection
//!    (`Outcome::ConnectFailure`, Envoy's local-origin failure) and another
//!    endpoint is tried, up to `connect_attempts` in all (Envoy's
//!    `max_connect_attempts`); success is reported as `ConnectSuccess`, and
//!    the connection counts as an active request of the endpoint for its
//!    whole life (LEAST_REQUEST);
//! 4. Passthrough (Istio's PassthroughCluster) and Bypass connect to the
//!    original destination itself;
//! 5. bytes are relayed both ways; end of stream in one direction becomes a
//!    `shutdown(SHUT_WR)` on the other socket (TCP half-close, as Envoy's
//!    tcp_proxy does), and a reset or error on either side resets both.
//!
//! The proxy's own upstream sockets must not be captured again: it runs as
//! the proxy uid that the capture rules exclude (istio-iptables' owner
//! match), and it can also set `SO_MARK` on them for rules that exclude a
//! mark instead.
//!
//! # Tasks: one event loop, no thread per connection
//! Each relay runs a tokio runtime with a few worker threads (`workers`,
//! default 2: Istio's sidecar `concurrency`, ztunnel's worker count). An
//! accept task per listener admits each connection ([`admit`]: a slot under
//! the relay's and the source's limits, evicting idle or handshaking
//! connections when full) and spawns one task for it, which reads the
//! original destination, classifies, connects (with retries), handshakes
//! and then relays both directions; a tick task runs outlier-detection
//! sweeps once a second. What a connection costs:
//! - waiting for its first bytes, handshaking, waiting for an identity,
//!   connecting, or idle: its sockets (one, then two descriptors) and a
//!   task with its timer (about 9 KB resident per idle relayed connection,
//!   `tests/hostile/test_relay_floods.py`); no thread, no pipe, no buffer;
//! - moving plaintext bytes: a pipe per busy direction, taken from the
//!   relay's pool and given back when the direction goes quiet
//!   ([`splice`]); `splice(2)` moves the pages, driven by the sockets'
//!   readiness: one readiness wait per burst, two system calls per chunk;
//! - moving TLS bytes: 256 KiB buffers from the relay's pool, given back
//!   likewise (`tls::pump`).
//!
//! Limits ([`limits`]) are derived from the file-descriptor budget when the
//! relay starts. Before this design, each plaintext connection held two
//! threads and six descriptors for its whole life and a TLS one a thread,
//! and ~170 idle connections at the default 1,024 descriptors denied all
//! captured egress. None of the relay's threads takes the
//! Python GIL.
//!
//! Timeouts: `connect_timeout` per connect attempt (the upstream TLS
//! handshake included); on the inbound, `hello_timeout` from accept until
//! the TLS ClientHello (or, STRICT, any first byte) has arrived, the rest of
//! the handshake within `connect_timeout`; `idle_timeout` with no byte in
//! either direction; TCP keepalive (and `TCP_USER_TIMEOUT`) on both sockets,
//! so a peer or backend that vanished is noticed and its connection
//! reclaimed, as linkerd enables keepalive on accepted and connected
//! sockets (`LINKERD2_PROXY_INBOUND_ACCEPT_KEEPALIVE`,
//! `LINKERD2_PROXY_OUTBOUND_CONNECT_KEEPALIVE`).
//!
//! Tables are swapped atomically ([`Relay::swap_routes`]); a connection
//! classifies and picks from the snapshot it loaded when it arrived.
//!
//! # mTLS ([`tls`])
//! With a workload identity set ([`Relay::tls`], `MeshTls::set_identity`),
//! the outbound originates Istio mTLS to endpoints whose EDS metadata says
//! `tlsMode: istio` (the handshake, with the endpoint's SPIFFE identity
//! checked, is part of the connect: a failure is a connect failure for
//! outlier detection and retries), and the inbound (`inbound: true`)
//! terminates it per PeerAuthentication (STRICT / PERMISSIVE with TLS
//! detection / DISABLE) before connecting to the app as for plaintext. A
//! TLS connection cannot be spliced: its task runs the records through
//! rustls (`tls::pump`). A `tlsMode: istio` endpoint never gets plaintext:
//! without an identity the connection waits for one (up to
//! `connect_timeout`) and is refused if none comes. Endpoints without
//! `tlsMode: istio` keep the splice path.

mod accept;
pub mod accesslog;
mod admit;
mod gateway;
pub mod hello;
pub mod http;
mod inbound;
mod limits;
pub mod metrics;
pub mod mx;
mod outbound;
mod splice;
mod sys;
pub mod tls;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::error::{Error, Result};
use crate::lb::{LbTable, RedirectTable};

pub use limits::Limits;
pub use metrics::{LocalWorkload, TcpLabels, TcpMetrics, TcpValues, TCP_LABELS};
pub use tls::{MeshTls, PeerAuthentication, TlsStats};

/// Istio's outbound capture port (`--envoy-port`, `-p`).
pub const DEFAULT_PORT: u16 = 15001;

/// Something that holds a redirection table (an `Arc<RedirectTable>`, or a
/// binding's handle on one).
pub trait RedirectSource: Send + Sync + std::fmt::Debug {
    fn redirect(&self) -> &RedirectTable;
}

/// Something that holds a cluster table.
pub trait LbSource: Send + Sync + std::fmt::Debug {
    fn lb(&self) -> &LbTable;
}

impl RedirectSource for RedirectTable {
    fn redirect(&self) -> &RedirectTable {
        self
    }
}

impl LbSource for LbTable {
    fn lb(&self) -> &LbTable {
        self
    }
}

/// The tables one connection is routed with.
#[derive(Debug, Clone)]
pub struct Routes {
    pub redirect: Arc<dyn RedirectSource>,
    pub lb: Arc<dyn LbSource>,
    /// LOGICAL_DNS clusters (DNS ServiceEntries), which the lbtable does not
    /// hold: cluster name -> (host, port), resolved when a connection
    /// arrives, like Envoy's logical DNS cluster connecting to the address
    /// its latest resolution gave.
    pub logical_dns: Arc<HashMap<String, (String, u16)>>,
}

impl Routes {
    pub fn new(redirect: Arc<dyn RedirectSource>, lb: Arc<dyn LbSource>) -> Routes {
        Routes { redirect, lb, logical_dns: Arc::default() }
    }
}

/// Everything a relay is started with.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Listen addresses. REDIRECT in nat OUTPUT rewrites locally generated
    /// connections to 127.0.0.1 / ::1, so loopback suffices. Port 0: one
    /// free port shared by all listeners.
    pub listen: Vec<SocketAddr>,
    /// Connect timeout per attempt (Istio's cluster `connect_timeout`, 10 s),
    /// the upstream TLS handshake included; also how long a connection to a
    /// `tlsMode: istio` endpoint waits for an identity, and the inbound's
    /// whole handshake deadline.
    pub connect_timeout: Duration,
    /// Endpoints tried per connection (Envoy tcp_proxy `max_connect_attempts`).
    pub connect_attempts: u32,
    /// Connections served at once, at most; None: as many as the
    /// file-descriptor budget allows ([`Limits`]), which also caps a given
    /// value. When full, idle and handshaking connections are evicted for
    /// new ones, else the new one is refused (Envoy's listener
    /// `max_connections` overflow).
    pub max_connections: Option<usize>,
    /// Connections at once from one source address (an IPv6 /64); None: a
    /// quarter of the limit on the inbound, whose peers are remote, and the
    /// whole limit on the outbound, whose peers are this host's own
    /// processes (all of them share its addresses).
    pub max_connections_per_source: Option<usize>,
    /// Inbound: how long after accept the TLS ClientHello (STRICT: any first
    /// byte) must have arrived. Envoy's listener filter timeout is 15 s;
    /// a connection that has sent nothing useful should not hold a slot
    /// that long.
    pub hello_timeout: Duration,
    /// TCP keepalive on both sockets: probes start after this long without
    /// traffic, then every quarter of it, 4 of them (and `TCP_USER_TIMEOUT`
    /// as long), so a vanished peer or backend is noticed; None: off.
    pub keepalive: Option<Duration>,
    /// Event-loop worker threads; 0: 2.
    pub workers: usize,
    /// Originate Istio mTLS to endpoints whose EDS metadata says `tlsMode:
    /// istio` (Istio's `meshConfig.enableAutoMtls`, default on). On, such an
    /// endpoint gets mTLS or nothing: never plaintext. Off is for a mesh
    /// without workload identities at all (an agent with no certificate
    /// source), where every endpoint is reached in plaintext.
    pub auto_mtls: bool,
    /// `SO_MARK` for upstream sockets (needs CAP_NET_ADMIN), so rules can
    /// exclude the proxy's own traffic by mark as well as by uid.
    pub mark: Option<u32>,
    /// Pipe size per direction (`F_SETPIPE_SZ`); the kernel rounds it up
    /// to pages. Larger pipes mean fewer system calls per byte.
    pub pipe_size: usize,
    /// Seed of endpoint picks (reproducible tests); None: random.
    pub seed: Option<u64>,
    /// A connection with no bytes in either direction for this long is
    /// closed (Envoy tcp_proxy `idle_timeout`, default 1 hour); None: never.
    pub idle_timeout: Option<Duration>,
    /// What the listeners are for: outbound capture (15001), inbound
    /// capture (15006), or a gateway's SNI or fixed-target passthrough.
    pub mode: Mode,
}

/// What a relay's listeners serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Captured outbound connections (port 15001), routed by their original
    /// destination through the tables.
    #[default]
    Outbound,
    /// Captured inbound connections (port 15006): every one passed through
    /// to its original destination (the local app) from 127.0.0.6 / ::6, as
    /// Istio's inbound passthrough does, without consulting the tables.
    Inbound,
    /// An east-west gateway's `AUTO_PASSTHROUGH` port (15443): the cluster
    /// is named by the SNI of the client's still-encrypted ClientHello
    /// (`outbound_.<port>_.<subset>_.<host>`), an endpoint of it picked from
    /// the tables and the bytes spliced unchanged ([`gateway`]).
    Sni,
    /// A gateway's port forwarded as is to one address (15012 and 15017 to
    /// the control plane: TLS passthrough, never terminated).
    Forward(SocketAddr),
}

impl Mode {
    /// Peers of this listener are remote hosts (not this host's processes).
    pub fn remote_peers(self) -> bool {
        self != Mode::Outbound
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: vec![(Ipv4Addr::LOCALHOST, DEFAULT_PORT).into(), (Ipv6Addr::LOCALHOST, DEFAULT_PORT).into()],
            connect_timeout: Duration::from_secs(10),
            connect_attempts: 3,
            max_connections: None,
            max_connections_per_source: None,
            hello_timeout: Duration::from_secs(3),
            keepalive: Some(Duration::from_secs(60)),
            workers: 0,
            auto_mtls: true,
            mark: None,
            pipe_size: 1 << 18,
            seed: None,
            idle_timeout: Some(Duration::from_secs(3600)),
            mode: Mode::Outbound,
        }
    }
}

impl RelayConfig {
    /// The limits this configuration gets with the descriptor budget now.
    pub fn limits(&self) -> Limits {
        let remote = self.mode.remote_peers();
        Limits::derive(
            self.max_connections,
            self.max_connections_per_source,
            |max| if remote { (max / 4).max(1) } else { max },
            limits::fd_budget(),
        )
    }
}

/// Counters; read with [`Relay::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) cluster: AtomicU64,
    pub(crate) passthrough: AtomicU64,
    pub(crate) bypass: AtomicU64,
    pub(crate) connect_attempts: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) connect_timeouts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) no_healthy_upstream: AtomicU64,
    pub(crate) unknown_cluster: AtomicU64,
    pub(crate) no_original_dst: AtomicU64,
    pub(crate) upstream_failed: AtomicU64,
    pub(crate) overflow: AtomicU64,
    pub(crate) source_overflow: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) hello_timeouts: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) resets: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    pub(crate) not_tls: AtomicU64,
    pub(crate) sni_refused: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections routed to a cluster endpoint.
    pub cluster: u64,
    /// Connections passed through to their original destination.
    pub passthrough: u64,
    /// Connections the table says are not captured (still passed through).
    pub bypass: u64,
    pub connect_attempts: u64,
    /// Failed connect attempts, timeouts included.
    pub connect_failures: u64,
    /// Connect attempts that timed out (`connect_timeout`).
    pub connect_timeouts: u64,
    /// Attempts after a failed one.
    pub retries: u64,
    /// Connections closed because no endpoint could take them.
    pub no_healthy_upstream: u64,
    /// Connections whose service's cluster is not in the table.
    pub unknown_cluster: u64,
    /// Connections that were not redirected (no original destination) or
    /// would loop back to the proxy.
    pub no_original_dst: u64,
    /// Connections closed after every connect attempt failed.
    pub upstream_failed: u64,
    /// Connections refused because the relay was full and nothing could be evicted.
    pub overflow: u64,
    /// Connections refused because their source was at its cap and none of
    /// its connections could be evicted.
    pub source_overflow: u64,
    /// Idle or handshaking connections closed (RST) to make room for new ones.
    pub evicted: u64,
    /// Inbound connections closed because the ClientHello (STRICT: any
    /// first byte) had not arrived within `hello_timeout`.
    pub hello_timeouts: u64,
    /// Bytes client → upstream.
    pub bytes_sent: u64,
    /// Bytes upstream → client.
    pub bytes_received: u64,
    /// Connections ended by a reset or error rather than two clean closes.
    pub resets: u64,
    /// Connections closed by `idle_timeout`.
    pub idle_timeouts: u64,
    /// Gateway (SNI): connections whose first bytes were not a TLS
    /// ClientHello (or a malformed one), refused.
    pub not_tls: u64,
    /// Gateway (SNI): ClientHellos without a server name of Istio's form
    /// `outbound_.<port>_.<subset>_.<host>`, refused.
    pub sni_refused: u64,
    /// Connections left out of the Istio TCP metrics because their label
    /// set would have exceeded the cap ([`metrics::DEFAULT_MAX_SERIES`]).
    pub metric_series_dropped: u64,
}

/// State shared by the acceptors and every connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: RelayConfig,
    pub(crate) routes: ArcSwap<Routes>,
    pub(crate) counters: Counters,
    pub(crate) listen: Mutex<Vec<SocketAddr>>,
    pub(crate) seed: u64,
    /// Workload identity and inbound policy (mTLS); none set: plaintext.
    pub(crate) tls: MeshTls,
    /// Istio's TCP metrics, per label set.
    pub(crate) metrics: TcpMetrics,
    /// Envoy's access log, when one is set.
    pub(crate) access_log: arc_swap::ArcSwapOption<accesslog::AccessLog>,
    /// The outbound HTTP path: routes per port, upstream pool, counters.
    pub(crate) http: http::HttpState,
}

/// What one start of the relay serves with: its slots and pools.
#[derive(Debug)]
pub(crate) struct Serving {
    pub(crate) registry: Arc<admit::Registry>,
    pub(crate) pipes: splice::PipePool,
    pub(crate) bufs: tls::pump::BufPool,
}

#[derive(Debug)]
struct Running {
    runtime: tokio::runtime::Runtime,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    serving: Arc<Serving>,
    addrs: Vec<SocketAddr>,
}

/// The outbound proxy. Create, start, swap tables at any time, stop.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Io { path: what.to_string(), source: e }
}

/// Milliseconds on CLOCK_MONOTONIC: the clock Python's `time.monotonic()`
/// reads, so outcomes reported here and ticks from Python share one clock.
/// (std's `Instant` reads it too, but does not expose its value.)
pub fn monotonic_ms() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64).saturating_mul(1000) + (ts.tv_nsec as u64) / 1_000_000
}

/// The original destination of a connection that `REDIRECT` (nat table,
/// iptables or nftables) sent to us: netfilter keeps the original tuple in
/// the conntrack entry and exposes it as the socket options
/// `SO_ORIGINAL_DST` (`SOL_IP`, linux `include/uapi/linux/netfilter_ipv4.h`)
/// and `IP6T_SO_ORIGINAL_DST` (`SOL_IPV6`,
/// `include/uapi/linux/netfilter_ipv6/ip6_tables.h`), which Envoy's
/// `original_dst` listener filter reads too (envoy
/// `source/common/network/utility.cpp`, `getOriginalDst`). `v6` is the
/// family of the accepted socket. Fails with `ENOENT` when the connection
/// was not redirected (no conntrack NAT entry).
pub fn original_destination(socket: BorrowedFd<'_>, v6: bool) -> std::io::Result<SocketAddr> {
    let s = SockRef::from(&socket);
    let addr = if v6 { s.original_dst_v6()? } else { s.original_dst_v4()? };
    match addr.as_socket() {
        // The flow label is not part of the destination (and was never read).
        Some(SocketAddr::V6(mut a)) => {
            a.set_flowinfo(0);
            Ok(SocketAddr::V6(a))
        }
        Some(a) => Ok(a),
        None => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "original destination is not an IP address")),
    }
}

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
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

/// Istio's sidecar `concurrency` default, and ztunnel's worker threads.
const DEFAULT_WORKERS: usize = 2;

impl Relay {
    /// A relay that is not serving yet.
    pub fn new(cfg: RelayConfig, routes: Routes) -> Result<Relay> {
        if cfg.listen.is_empty() {
            return Err(Error::config("listen", "at least one address is needed"));
        }
        if cfg.connect_attempts == 0 {
            return Err(Error::config("connect_attempts", "must be at least 1"));
        }
        if cfg.connect_timeout.is_zero() {
            return Err(Error::config("connect_timeout", "must be positive"));
        }
        if cfg.hello_timeout.is_zero() {
            return Err(Error::config("hello_timeout", "must be positive"));
        }
        if cfg.max_connections == Some(0) {
            return Err(Error::config("max_connections", "must be at least 1"));
        }
        if cfg.max_connections_per_source == Some(0) {
            return Err(Error::config("max_connections_per_source", "must be at least 1"));
        }
        if cfg.keepalive.is_some_and(|k| k < Duration::from_secs(1)) {
            return Err(Error::config("keepalive", "must be at least 1 second"));
        }
        let seed = cfg.seed.unwrap_or_else(|| crate::lb::Rng::from_entropy().next_u64());
        Ok(Relay {
            shared: Arc::new(Shared {
                cfg,
                routes: ArcSwap::from_pointee(routes),
                counters: Counters::default(),
                listen: Mutex::new(Vec::new()),
                seed,
                tls: MeshTls::default(),
                metrics: TcpMetrics::default(),
                access_log: arc_swap::ArcSwapOption::empty(),
                http: http::HttpState::default(),
            }),
            running: Mutex::new(None),
        })
    }

    /// Binds the listeners, derives the limits from the descriptor budget
    /// now, and starts serving; returns the bound addresses. Starting a
    /// running relay returns its addresses.
    pub fn start(&self) -> Result<Vec<SocketAddr>> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = running.as_ref() {
            return Ok(r.addrs.clone());
        }
        let mut listeners = Vec::new();
        let mut port = 0u16;
        for (i, a) in self.shared.cfg.listen.iter().enumerate() {
            let mut a = *a;
            // Port 0 means one free port for every listener, like the DNS server.
            if a.port() == 0 && port != 0 {
                a.set_port(port);
            }
            let l = listener(a).map_err(|e| io_err(format!("listen[{i}] {a}"), e))?;
            let bound = l.local_addr().map_err(|e| io_err(format!("listen[{i}] {a}"), e))?;
            port = bound.port();
            listeners.push(l);
        }
        let workers = if self.shared.cfg.workers == 0 { DEFAULT_WORKERS } else { self.shared.cfg.workers };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            // getaddrinfo for LOGICAL_DNS clusters only.
            .max_blocking_threads(4)
            .thread_name(match self.shared.cfg.mode {
                Mode::Outbound => "pymesh-relay",
                Mode::Inbound => "pymesh-relay-in",
                Mode::Sni | Mode::Forward(_) => "pymesh-gateway",
            })
            .enable_all()
            .build()
            .map_err(|e| io_err("tokio runtime", e))?;
        let limits = self.shared.cfg.limits();
        let serving = Arc::new(Serving {
            registry: Arc::new(admit::Registry::new(limits)),
            pipes: splice::PipePool::new(limits.max_pipes, self.shared.cfg.pipe_size),
            bufs: tls::pump::BufPool::default(),
        });
        let addrs: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
        *self.shared.listen.lock().unwrap_or_else(|e| e.into_inner()) = addrs.clone();
        let mut tasks = Vec::new();
        {
            let _enter = runtime.enter();
            for l in listeners {
                let l = tokio::net::TcpListener::from_std(l).map_err(|e| io_err("listen", e))?;
                tasks.push(runtime.spawn(accept::accept_loop(self.shared.clone(), serving.clone(), l)));
            }
            tasks.push(runtime.spawn(accept::tick_loop(self.shared.clone())));
        }
        *running = Some(Running { runtime, tasks, serving, addrs: addrs.clone() });
        Ok(addrs)
    }

    /// Stops accepting, resets every open connection, and waits (up to
    /// `grace`) for their tasks to finish; then the event loop stops.
    /// Idempotent.
    pub fn stop(&self, grace: Duration) {
        let Some(r) = self.running.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        for t in &r.tasks {
            t.abort();
        }
        r.serving.registry.stop_all();
        let deadline = Instant::now() + grace;
        while self.shared.counters.active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        // Whatever is left is dropped with the runtime (its sockets close).
        r.runtime.shutdown_timeout(Duration::from_millis(100));
    }

    /// Whether the relay is accepting.
    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The bound listen addresses (empty when stopped).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|r| r.addrs.clone()).unwrap_or_default()
    }

    /// The limits serving now (running), else those a start would derive now.
    pub fn limits(&self) -> Limits {
        match self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(r) => *r.serving.registry.limits(),
            None => self.shared.cfg.limits(),
        }
    }

    /// Splice pipes open now (pooled and in use; 0 when stopped).
    pub fn pipes_open(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |r| r.serving.pipes.open())
    }

    /// Publishes new tables; connections arriving from now on use them.
    pub fn swap_routes(&self, routes: Routes) {
        self.shared.routes.store(Arc::new(routes));
    }

    /// The tables serving now.
    pub fn routes(&self) -> Arc<Routes> {
        self.shared.routes.load_full()
    }

    /// Publishes new HTTP routes (built off the hot path with
    /// [`http::HttpRoutes::build`]); connections arriving from now on use
    /// them.
    pub fn set_http_routes(&self, routes: http::HttpRoutes) {
        self.shared.http.routes.store(Arc::new(routes));
    }

    /// The inbound's upstream HTTP protocol per local app port (istiod's
    /// `inbound|<port>||` clusters), replacing the previous map.
    pub fn set_inbound_protocols(&self, protocols: std::collections::HashMap<u16, Option<bool>>) {
        self.shared.http.inbound_protocols.store(Arc::new(protocols));
    }

    /// The HTTP routes serving now.
    pub fn http_routes(&self) -> Arc<http::HttpRoutes> {
        self.shared.http.routes.load_full()
    }

    /// The HTTP path's counters, by name (`http_requests`, ...), and the
    /// upstream connections pooled (`http_pool_idle_h1`, `http_pool_h2`).
    pub fn http_stats(&self) -> Vec<(&'static str, u64)> {
        let mut v = self.shared.http.counters.snapshot();
        let (h1, h2) = self.shared.http.pool.held();
        v.push(("http_pool_idle_h1", h1 as u64));
        v.push(("http_pool_h2", h2 as u64));
        v
    }

    pub fn config(&self) -> &RelayConfig {
        &self.shared.cfg
    }

    /// The relay's mTLS state: set or clear the workload identity, the
    /// inbound PeerAuthentication mode, read the TLS counters.
    pub fn tls(&self) -> &MeshTls {
        &self.shared.tls
    }

    /// Istio's TCP metrics of this relay's connections, and the local
    /// workload they are labelled with (`set_local`).
    pub fn tcp_metrics(&self) -> &TcpMetrics {
        &self.shared.metrics
    }

    /// Writes a line per connection from now on to `log` (None: no more);
    /// the previous log, if any, is returned (its queued lines still get written).
    pub fn set_access_log(&self, log: Option<Arc<accesslog::AccessLog>>) -> Option<Arc<accesslog::AccessLog>> {
        self.shared.access_log.swap(log)
    }

    /// The access log in use.
    pub fn access_log(&self) -> Option<Arc<accesslog::AccessLog>> {
        self.shared.access_log.load_full()
    }

    pub fn stats(&self) -> RelayStats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayStats {
            accepted: g(&c.accepted),
            active: g(&c.active),
            cluster: g(&c.cluster),
            passthrough: g(&c.passthrough),
            bypass: g(&c.bypass),
            connect_attempts: g(&c.connect_attempts),
            connect_failures: g(&c.connect_failures),
            connect_timeouts: g(&c.connect_timeouts),
            retries: g(&c.retries),
            no_healthy_upstream: g(&c.no_healthy_upstream),
            unknown_cluster: g(&c.unknown_cluster),
            no_original_dst: g(&c.no_original_dst),
            upstream_failed: g(&c.upstream_failed),
            overflow: g(&c.overflow),
            source_overflow: g(&c.source_overflow),
            evicted: g(&c.evicted),
            hello_timeouts: g(&c.hello_timeouts),
            bytes_sent: g(&c.bytes_sent),
            bytes_received: g(&c.bytes_received),
            resets: g(&c.resets),
            idle_timeouts: g(&c.idle_timeouts),
            not_tls: g(&c.not_tls),
            sni_refused: g(&c.sni_refused),
            metric_series_dropped: self.shared.metrics.dropped(),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests;

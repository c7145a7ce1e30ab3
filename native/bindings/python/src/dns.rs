//! The DNS proxy for Python: `DnsServer` (start, stop, swap tables,
//! reconfigure, stats) and `dns_answer` (one packet, for tests and tools).
//! The serving threads are native and never take the GIL; the methods here
//! release it while they wait on threads or build indexes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use pymesh_core::dns::{self as core, AllowList, AnswerConfig, ServerConfig, UpstreamConfig};

use crate::errors::{to_py, ConfigError};
use crate::names::NameTable;

fn socket_addr(field: &str, s: &str, default_port: Option<u16>) -> PyResult<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let (Some(p), Ok(ip)) = (default_port, s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>()) {
        return Ok(SocketAddr::new(ip, p));
    }
    Err(ConfigError::new_err(format!("{field}: {s:?} is not an address ADDR:PORT (IPv6 as [ADDR]:PORT)")))
}

fn addrs(field: &str, v: &[String], default_port: Option<u16>) -> PyResult<Vec<SocketAddr>> {
    v.iter().enumerate().map(|(i, s)| socket_addr(&format!("{field}[{i}]"), s, default_port)).collect()
}

fn seconds(field: &str, v: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| ConfigError::new_err(format!("{field}: {v} is not a duration in seconds")))
}

fn allow_list(nets: &[String]) -> PyResult<AllowList> {
    AllowList::parse(nets).map_err(|e| ConfigError::new_err(format!("allow{e}")))
}

fn at_least_one(field: &str, v: usize) -> PyResult<usize> {
    if v == 0 {
        return Err(ConfigError::new_err(format!("{field}: must be at least 1")));
    }
    Ok(v)
}

fn answer_config(ttl: u32, zones: &[String]) -> PyResult<AnswerConfig> {
    AnswerConfig::new(ttl, zones).map_err(|e| ConfigError::new_err(format!("zones: {e}")))
}

/// A DNS proxy server: local answers from a name table, the rest forwarded.
#[pyclass(frozen, module = "pymesh._native")]
#[derive(Debug)]
pub struct DnsServer {
    inner: core::Server,
}

#[pymethods]
impl DnsServer {
    #[new]
    #[pyo3(signature = (
        *,
        listen = vec!["127.0.0.1:15053".to_owned(), "[::1]:15053".to_owned()],
        upstreams = Vec::new(),
        workers = 0,
        ttl = 30,
        zones = Vec::new(),
        cache_size = 10_000,
        cache_bytes = 16 << 20,
        timeout = 1.0,
        hedge_delay = 0.15,
        tcp_idle_timeout = 10.0,
        tcp_read_timeout = 2.0,
        allow = Vec::new(),
        max_pending = 1024,
        max_pending_per_client = 256,
        tcp_max_connections = 512,
        tcp_max_connections_per_client = 64,
        tcp_max_inflight = 16,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        listen: Vec<String>,
        upstreams: Vec<String>,
        workers: usize,
        ttl: u32,
        zones: Vec<String>,
        cache_size: usize,
        cache_bytes: usize,
        timeout: f64,
        hedge_delay: f64,
        tcp_idle_timeout: f64,
        tcp_read_timeout: f64,
        allow: Vec<String>,
        max_pending: usize,
        max_pending_per_client: usize,
        tcp_max_connections: usize,
        tcp_max_connections_per_client: usize,
        tcp_max_inflight: usize,
    ) -> PyResult<DnsServer> {
        let cfg = ServerConfig {
            listen: addrs("listen", &listen, None)?,
            workers,
            upstream: UpstreamConfig {
                servers: addrs("upstreams", &upstreams, Some(53))?,
                attempt_timeout: seconds("timeout", timeout)?,
                hedge_delay: seconds("hedge_delay", hedge_delay)?,
            },
            answer: answer_config(ttl, &zones)?,
            cache_entries: cache_size,
            cache_bytes,
            tcp_idle_timeout: seconds("tcp_idle_timeout", tcp_idle_timeout)?,
            tcp_read_timeout: seconds("tcp_read_timeout", tcp_read_timeout)?,
            allow: allow_list(&allow)?,
            max_pending_forwards: at_least_one("max_pending", max_pending)?,
            max_pending_forwards_per_client: at_least_one("max_pending_per_client", max_pending_per_client)?,
            tcp_max_connections: at_least_one("tcp_max_connections", tcp_max_connections)?,
            tcp_max_connections_per_client: at_least_one(
                "tcp_max_connections_per_client",
                tcp_max_connections_per_client,
            )?,
            tcp_max_inflight: at_least_one("tcp_max_inflight", tcp_max_inflight)?,
        };
        Ok(DnsServer { inner: core::Server::new(cfg).map_err(to_py)? })
    }

    /// Binds the listeners and starts serving; returns the bound addresses.
    /// A listener off loopback without an allow-list (or with one admitting
    /// every address) is logged as a warning on the `pymesh.dnsproxy` logger.
    fn start(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let a = py.detach(|| self.inner.start()).map_err(to_py)?;
        let warnings = self.inner.warnings();
        if !warnings.is_empty() {
            let log = py.import("logging")?.call_method1("getLogger", ("pymesh.dnsproxy",))?;
            for w in warnings {
                log.call_method1("warning", ("%s", w))?;
            }
        }
        Ok(a.iter().map(ToString::to_string).collect())
    }

    /// Why listeners off loopback deserve attention (see `start`); empty when none.
    fn warnings(&self) -> Vec<String> {
        self.inner.warnings()
    }

    /// Stops serving and closes the sockets (idempotent).
    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop());
    }

    /// Publishes `table`; every query from now on is answered from it, none
    /// from a mix. Returns the generation (1 for the first table).
    fn swap_table(&self, py: Python<'_>, table: PyRef<'_, NameTable>) -> u64 {
        let t = table.inner.clone();
        py.detach(|| self.inner.swap_table(t))
    }

    /// Changes settings while serving; arguments left as None keep their value.
    #[pyo3(signature = (*, upstreams = None, ttl = None, zones = None, timeout = None, hedge_delay = None))]
    fn reconfigure(
        &self,
        upstreams: Option<Vec<String>>,
        ttl: Option<u32>,
        zones: Option<Vec<String>>,
        timeout: Option<f64>,
        hedge_delay: Option<f64>,
    ) -> PyResult<()> {
        let cur = self.inner.config();
        let answer = if ttl.is_some() || zones.is_some() {
            let ttl = ttl.unwrap_or(cur.answer.ttl);
            Some(match zones {
                Some(z) => answer_config(ttl, &z)?,
                None => AnswerConfig { ttl, zones: cur.answer.zones.clone() },
            })
        } else {
            None
        };
        let upstream = if upstreams.is_some() || timeout.is_some() || hedge_delay.is_some() {
            let mut u = cur.upstream.clone();
            if let Some(s) = upstreams {
                u.servers = addrs("upstreams", &s, Some(53))?;
            }
            if let Some(t) = timeout {
                u.attempt_timeout = seconds("timeout", t)?;
            }
            if let Some(h) = hedge_delay {
                u.hedge_delay = seconds("hedge_delay", h)?;
            }
            Some(u)
        } else {
            None
        };
        self.inner.reconfigure(answer, upstream);
        Ok(())
    }

    /// Counters: totals, by outcome, query type and rcode; upstream health; cache size.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("requests", s.requests)?;
        d.set_item("upstream_requests", s.upstream_requests)?;
        d.set_item("upstream_failures", s.upstream_failures)?;
        d.set_item("upstream_attempts", s.upstream_attempts)?;
        d.set_item("tcp_retries", s.tcp_retries)?;
        d.set_item("hedged", s.hedged)?;
        d.set_item("coalesced", s.coalesced)?;
        d.set_item("tcp_evicted", s.tcp_evicted)?;
        d.set_item("udp_truncated", s.udp_truncated)?;
        d.set_item("forwards_pending", self.inner.pending_forwards())?;
        d.set_item("forwards_limit", self.inner.forward_limit())?;
        d.set_item("tcp_connections", self.inner.tcp_connections())?;
        let sub = |rows: &[(&str, u64)]| -> PyResult<Bound<'py, PyDict>> {
            let x = PyDict::new(py);
            for (k, v) in rows {
                x.set_item(*k, *v)?;
            }
            Ok(x)
        };
        d.set_item("outcomes", sub(&s.outcomes)?)?;
        d.set_item("qtypes", sub(&s.qtypes)?)?;
        d.set_item("rcodes", sub(&s.rcodes)?)?;
        d.set_item("forwards_rejected", sub(&s.forwards_rejected)?)?;
        d.set_item("tcp_rejected", sub(&s.tcp_rejected)?)?;
        d.set_item("cache_entries", self.inner.cache_len())?;
        d.set_item("cache_bytes", self.inner.cache_bytes())?;
        d.set_item("generation", self.inner.generation())?;
        let ups = self
            .inner
            .upstream_states()
            .into_iter()
            .map(|u| {
                let x = PyDict::new(py);
                x.set_item("address", u.addr.to_string())?;
                x.set_item("srtt_ms", u.srtt.as_secs_f64() * 1e3)?;
                x.set_item("consecutive_failures", u.consecutive_failures)?;
                x.set_item("healthy", u.healthy)?;
                Ok(x)
            })
            .collect::<PyResult<Vec<_>>>()?;
        d.set_item("upstreams", ups)?;
        Ok(d)
    }

    /// The counters in Prometheus text format, with Istio's metric names.
    fn metrics_text(&self) -> String {
        self.inner.metrics_text()
    }

    /// The bound listen addresses (empty when stopped).
    #[getter]
    fn addresses(&self) -> Vec<String> {
        self.inner.addresses().iter().map(ToString::to_string).collect()
    }

    #[getter]
    fn running(&self) -> bool {
        self.inner.is_running()
    }

    #[getter]
    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    fn __repr__(&self) -> String {
        format!("DnsServer(running={}, addresses={:?})", self.inner.is_running(), self.addresses())
    }
}

/// Answers one DNS query packet from `table` as the server would: the reply
/// bytes, `b""` when nothing is to be sent (runt packet, a response), or
/// None when the query would be forwarded upstream.
#[pyfunction]
#[pyo3(signature = (table, packet, *, tcp = false, ttl = 30, zones = Vec::new()))]
fn dns_answer<'py>(
    py: Python<'py>,
    table: Option<PyRef<'_, NameTable>>,
    packet: &[u8],
    tcp: bool,
    ttl: u32,
    zones: Vec<String>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let cfg = answer_config(ttl, &zones)?;
    let t: Option<Arc<pymesh_core::names::NameTable>> = table.map(|t| t.inner.clone());
    let transport = if tcp { core::Transport::Tcp } else { core::Transport::Udp };
    let mut out = vec![0u8; 65535];
    Ok(match core::answer_packet(t.as_deref(), &cfg, packet, transport, 0, &mut out) {
        core::Decision::Reply { len, .. } => Some(PyBytes::new(py, &out[..len])),
        core::Decision::Drop => Some(PyBytes::new(py, b"")),
        core::Decision::Forward(_) => None,
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DnsServer>()?;
    m.add_function(wrap_pyfunction!(dns_answer, m)?)?;
    Ok(())
}

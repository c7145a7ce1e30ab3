//! Python classes over the lbtable: `LbTable` (clusters, picks, outcomes,
//! inspection) and `RedirectTable` (destination classification). Cluster
//! input arrives as JSON/YAML text, a file path or Python dicts (which the
//! Python layer also produces from protobuf messages); all of it goes
//! through the core's one parser, so errors read the same for every input.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::Value;

use pymesh_core::lb::{self as core, LocalityFailover, Outcome, Rng, Source, Verdict};

use crate::errors::{to_py, InvalidEntryError, ParseError, PymeshError, UnknownClusterError};

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// A Python value (dicts, lists, str, int, float, bool, None) as JSON.
fn to_json(v: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > 64 {
        return Err(ParseError::new_err("clusters: nested more than 64 levels deep"));
    }
    if v.is_none() {
        Ok(Value::Null)
    } else if let Ok(b) = v.cast::<PyBool>() {
        Ok(Value::Bool(b.is_true()))
    } else if let Ok(i) = v.cast::<PyInt>() {
        if let Ok(u) = i.extract::<u64>() {
            Ok(Value::from(u))
        } else {
            Ok(Value::from(i.extract::<i64>().map_err(|_| ParseError::new_err("clusters: integer out of range"))?))
        }
    } else if let Ok(f) = v.cast::<PyFloat>() {
        Ok(serde_json::Number::from_f64(f.value()).map(Value::Number).unwrap_or(Value::Null))
    } else if let Ok(s) = v.cast::<PyString>() {
        Ok(Value::String(s.to_str()?.to_owned()))
    } else if let Ok(d) = v.cast::<PyDict>() {
        let mut m = serde_json::Map::new();
        for (k, x) in d.iter() {
            let k: String = k.extract().map_err(|_| ParseError::new_err("clusters: mapping keys must be strings"))?;
            m.insert(k, to_json(&x, depth + 1)?);
        }
        Ok(Value::Object(m))
    } else if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let mut out = Vec::new();
        for x in v.try_iter()? {
            out.push(to_json(&x?, depth + 1)?);
        }
        Ok(Value::Array(out))
    } else {
        Err(ParseError::new_err(format!(
            "clusters: cannot use a value of type {} (expected JSON-like data)",
            type_name(v)
        )))
    }
}

/// Seconds (float, any monotonic clock) to the core's milliseconds; None is
/// `time.monotonic()`.
fn now_ms(py: Python<'_>, now: Option<f64>) -> PyResult<u64> {
    let s = match now {
        Some(s) => s,
        None => py.import("time")?.call_method0("monotonic")?.extract()?,
    };
    if !(s.is_finite() && s >= 0.0) {
        return Err(PymeshError::new_err(format!("now must be a non-negative number of seconds, got {s}")));
    }
    Ok((s * 1000.0) as u64)
}

fn hash_of(key: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    let Some(k) = key else { return Ok(None) };
    if k.is_none() {
        Ok(None)
    } else if let Ok(s) = k.cast::<PyString>() {
        Ok(Some(core::hash_key(s.to_str()?.as_bytes())))
    } else if let Ok(b) = k.cast::<PyBytes>() {
        Ok(Some(core::hash_key(b.as_bytes())))
    } else {
        Err(PymeshError::new_err(format!("hash_key must be str or bytes, got {}", type_name(k))))
    }
}

fn outcome_of(v: &Bound<'_, PyAny>) -> PyResult<Outcome> {
    if let Ok(code) = v.extract::<u16>() {
        if (100..600).contains(&code) {
            return Ok(Outcome::Http(code));
        }
    } else if let Ok(s) = v.cast::<PyString>() {
        if let Some(o) = Outcome::from_name(s.to_str()?) {
            return Ok(o);
        }
    }
    Err(PymeshError::new_err(format!(
        "outcome must be an HTTP status (100-599) or one of 'success', '5xx', 'gateway', 'connect_failure', \
         'timeout', 'connect_success'; got {}",
        v.repr().map(|r| r.to_string()).unwrap_or_default()
    )))
}

fn locality_of(v: &Bound<'_, PyAny>) -> PyResult<core::Locality> {
    let get = |k: &str| -> PyResult<String> {
        if let Ok(d) = v.cast::<PyDict>() {
            Ok(d.get_item(k)?.map(|x| x.extract::<String>()).transpose()?.unwrap_or_default())
        } else {
            Err(PymeshError::new_err("locality must be a dict with region, zone and sub_zone"))
        }
    };
    Ok(core::Locality { region: get("region")?, zone: get("zone")?, sub_zone: get("sub_zone")? })
}

/// The cluster table (`pymesh.lbtable.LbTable`).
#[pyclass(frozen, module = "pymesh._native")]
#[derive(Debug)]
pub struct LbTable {
    pub(crate) inner: core::LbTable,
    rng: Mutex<Rng>,
}

impl LbTable {
    fn cluster(&self, name: &str) -> PyResult<std::sync::Arc<core::LiveCluster>> {
        self.inner.cluster(name).ok_or_else(|| UnknownClusterError::new_err(format!("no cluster {name:?}")))
    }

    fn endpoint(&self, cluster: &str, endpoint: &str) -> PyResult<(std::sync::Arc<core::LiveCluster>, usize)> {
        let c = self.cluster(cluster)?;
        let addr: SocketAddr = endpoint.parse().map_err(|_| {
            PymeshError::new_err(format!("endpoint must be \"ip:port\" (\"[v6]:port\"), got {endpoint:?}"))
        })?;
        let i = c
            .endpoint_index(&addr)
            .ok_or_else(|| UnknownClusterError::new_err(format!("cluster {cluster:?} has no endpoint {endpoint}")))?;
        Ok((c, i))
    }

    fn assign(&self, py: Python<'_>, a: Vec<core::ClusterAssignment>, now: Option<f64>) -> PyResult<u64> {
        let now = now_ms(py, now)?;
        py.detach(|| self.inner.set_assignments(a, now)).map_err(to_py)
    }

    fn install(&self, py: Python<'_>, specs: Vec<core::ClusterSpec>, replace: bool, now: Option<f64>) -> PyResult<u64> {
        let now = now_ms(py, now)?;
        // Building tables (Maglev, rings) for a whole push is bulk work.
        Ok(py.detach(|| {
            if replace {
                self.inner.set_clusters(specs, now)
            } else {
                self.inner.upsert_clusters(specs, now)
            }
        }))
    }
}

#[pymethods]
impl LbTable {
    /// An empty table. `seed` makes every random choice reproducible;
    /// `locality` (a dict with region/zone/sub_zone) is this proxy's own,
    /// turning on Istio locality failover for clusters with outlier
    /// detection; `failover` lists (from_region, to_region) rules.
    #[new]
    #[pyo3(signature = (*, seed = None, locality = None, failover = None))]
    fn new(
        seed: Option<u64>,
        locality: Option<&Bound<'_, PyAny>>,
        failover: Option<Vec<(String, String)>>,
    ) -> PyResult<LbTable> {
        let f = match locality.filter(|l| !l.is_none()) {
            Some(l) => Some(LocalityFailover { local: locality_of(l)?, failover: failover.unwrap_or_default() }),
            None => None,
        };
        let rng = match seed {
            Some(s) => Rng::new(core_seed(s)),
            None => Rng::from_entropy(),
        };
        Ok(LbTable { inner: core::LbTable::new(seed, f), rng: Mutex::new(rng) })
    }

    /// Loads Envoy `Cluster` resources given as Python data: a list of
    /// cluster dicts, one cluster, `{"clusters": [...]}`, an Envoy bootstrap
    /// or an xDS response dict. `replace` (default) makes this the whole set
    /// (CDS state of the world); otherwise clusters are added or replaced.
    /// Returns the table's new generation. On any error nothing changes.
    #[pyo3(signature = (clusters, *, replace = true, now = None))]
    fn load(&self, py: Python<'_>, clusters: &Bound<'_, PyAny>, replace: bool, now: Option<f64>) -> PyResult<u64> {
        let v = to_json(clusters, 0)?;
        let specs = py.detach(|| core::clusters_from_value(&v, "<clusters>")).map_err(to_py)?;
        self.install(py, specs, replace, now)
    }

    /// Like `load`, from JSON (or YAML) text.
    #[pyo3(signature = (text, *, yaml = false, replace = true, now = None))]
    fn load_json(&self, py: Python<'_>, text: &str, yaml: bool, replace: bool, now: Option<f64>) -> PyResult<u64> {
        let specs = py.detach(|| core::parse_clusters(text, yaml, "<string>")).map_err(to_py)?;
        self.install(py, specs, replace, now)
    }

    /// Like `load`, from a file (YAML for .yaml/.yml, JSON otherwise).
    #[pyo3(signature = (path, *, replace = true, now = None))]
    fn load_file(&self, py: Python<'_>, path: std::path::PathBuf, replace: bool, now: Option<f64>) -> PyResult<u64> {
        let path = path.to_string_lossy().into_owned();
        let specs = py.detach(|| core::read_clusters(&path)).map_err(to_py)?;
        self.install(py, specs, replace, now)
    }

    /// EDS: replaces the endpoints of clusters already in the table with
    /// Envoy `ClusterLoadAssignment`s given as Python data (a list of
    /// assignment dicts, one assignment, `{"assignments": [...]}` or an xDS
    /// response dict). Each cluster keeps its settings; endpoints that stay
    /// keep their live state; other clusters are untouched. An assignment
    /// for an unknown cluster, or any invalid field, raises and changes
    /// nothing. Returns the table's new generation.
    #[pyo3(signature = (assignments, *, now = None))]
    fn load_assignments(&self, py: Python<'_>, assignments: &Bound<'_, PyAny>, now: Option<f64>) -> PyResult<u64> {
        let v = to_json(assignments, 0)?;
        let a = py.detach(|| core::assignments_from_value(&v, "<assignments>")).map_err(to_py)?;
        self.assign(py, a, now)
    }

    /// Like `load_assignments`, from JSON (or YAML) text.
    #[pyo3(signature = (text, *, yaml = false, now = None))]
    fn load_assignments_json(&self, py: Python<'_>, text: &str, yaml: bool, now: Option<f64>) -> PyResult<u64> {
        let a = py.detach(|| core::parse_assignments(text, yaml, "<string>")).map_err(to_py)?;
        self.assign(py, a, now)
    }

    /// Like `load_assignments`, from a file (YAML for .yaml/.yml, JSON otherwise).
    #[pyo3(signature = (path, *, now = None))]
    fn load_assignments_file(&self, py: Python<'_>, path: std::path::PathBuf, now: Option<f64>) -> PyResult<u64> {
        let path = path.to_string_lossy().into_owned();
        let a = py.detach(|| core::read_assignments(&path)).map_err(to_py)?;
        self.assign(py, a, now)
    }

    /// Removes clusters by name; returns how many existed.
    fn remove(&self, names: Vec<String>) -> usize {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.inner.remove_clusters(&refs)
    }

    /// Picks an endpoint of `cluster` ("ip:port"), or None when none may
    /// take the request. `hash_key` (str or bytes) drives RING_HASH / MAGLEV.
    #[pyo3(signature = (cluster, hash_key = None))]
    fn pick(&self, cluster: &str, hash_key: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
        let h = hash_of(hash_key)?;
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        self.inner
            .pick_with(cluster, h, &mut rng, |e| e.address.to_string())
            .map_err(|_| UnknownClusterError::new_err(format!("no cluster {cluster:?}")))
    }

    /// Makes `count` picks and returns {"ip:port": picks}; picks that found
    /// no endpoint are counted under None.
    #[pyo3(signature = (cluster, count, hash_key = None))]
    fn pick_counts<'py>(
        &self,
        py: Python<'py>,
        cluster: &str,
        count: usize,
        hash_key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let h = hash_of(hash_key)?;
        let c = self.cluster(cluster)?;
        let snap = c.snapshot();
        let counts = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            let mut counts: HashMap<Option<usize>, u64> = HashMap::new();
            for _ in 0..count {
                *counts.entry(snap.pick(h, &mut rng)).or_default() += 1;
            }
            counts
        };
        let out = PyDict::new(py);
        let mut keys: Vec<Option<usize>> = counts.keys().copied().collect();
        keys.sort();
        for k in keys {
            let n = counts[&k];
            match k {
                Some(i) => out.set_item(snap.endpoints()[i].address.to_string(), n)?,
                None => out.set_item(py.None(), n)?,
            }
        }
        Ok(out)
    }

    /// A request to `endpoint` of `cluster` started (LEAST_REQUEST counts them).
    fn request_started(&self, cluster: &str, endpoint: &str) -> PyResult<()> {
        let (c, i) = self.endpoint(cluster, endpoint)?;
        c.state(i).request_started();
        Ok(())
    }

    /// Reports what happened to a request: an HTTP status, or "success",
    /// "5xx", "gateway", "connect_failure", "timeout", "connect_success".
    /// `finished` also ends one active request. Returns True when outlier
    /// detection ejected or returned an endpoint (a new snapshot serves).
    #[pyo3(signature = (cluster, endpoint, outcome, *, now = None, finished = false))]
    fn report(
        &self,
        py: Python<'_>,
        cluster: &str,
        endpoint: &str,
        outcome: &Bound<'_, PyAny>,
        now: Option<f64>,
        finished: bool,
    ) -> PyResult<bool> {
        let o = outcome_of(outcome)?;
        let now = now_ms(py, now)?;
        let (c, i) = self.endpoint(cluster, endpoint)?;
        Ok(c.report(i, o, finished, now))
    }

    /// The active health check result for an endpoint.
    #[pyo3(signature = (cluster, endpoint, healthy, *, now = None))]
    fn set_health_check(
        &self,
        py: Python<'_>,
        cluster: &str,
        endpoint: &str,
        healthy: bool,
        now: Option<f64>,
    ) -> PyResult<()> {
        let now = now_ms(py, now)?;
        let (c, i) = self.endpoint(cluster, endpoint)?;
        c.set_health_check(i, healthy, now);
        Ok(())
    }

    /// Advances time: runs due outlier-detection sweeps (ejected endpoints
    /// whose time ran out return). Returns how many clusters changed.
    #[pyo3(signature = (now = None))]
    fn tick(&self, py: Python<'_>, now: Option<f64>) -> PyResult<usize> {
        let now = now_ms(py, now)?;
        Ok(self.inner.tick(now))
    }

    /// Cluster names, sorted.
    fn clusters(&self) -> Vec<String> {
        self.inner.names()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, name: &str) -> bool {
        self.inner.cluster(name).is_some()
    }

    #[getter]
    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    /// The cluster's settings as a dict.
    fn cluster_info<'py>(&self, py: Python<'py>, cluster: &str) -> PyResult<Bound<'py, PyDict>> {
        let c = self.cluster(cluster)?;
        let cfg = &c.spec().config;
        let d = PyDict::new(py);
        d.set_item("name", cluster)?;
        d.set_item("policy", cfg.policy.as_str())?;
        d.set_item("overprovisioning_factor", cfg.overprovisioning_factor)?;
        d.set_item("panic_threshold", cfg.panic_threshold)?;
        d.set_item("locality_weighted", cfg.locality_weighted)?;
        d.set_item("endpoints", c.spec().endpoints.len())?;
        d.set_item("outlier_detection", cfg.outlier.is_some())?;
        d.set_item("rebuilds", c.rebuilds())?;
        d.set_item("heap_bytes", c.snapshot().heap_bytes())?;
        Ok(d)
    }

    /// Every endpoint with its settings and live state, as dicts.
    fn endpoints<'py>(&self, py: Python<'py>, cluster: &str) -> PyResult<Bound<'py, PyList>> {
        let c = self.cluster(cluster)?;
        let snap = c.snapshot();
        let spec = c.spec();
        let out = PyList::empty(py);
        for (i, e) in snap.endpoints().iter().enumerate() {
            let s = c.state(i);
            let ej = s.ejection();
            let g = &spec.groups[e.group as usize];
            let d = PyDict::new(py);
            d.set_item("address", e.address.to_string())?;
            d.set_item("weight", e.weight)?;
            d.set_item("priority", e.priority)?;
            d.set_item("health_status", e.health_status.as_str())?;
            d.set_item("health", snap.health(i).as_str())?;
            let loc = PyDict::new(py);
            loc.set_item("region", &g.locality.region)?;
            loc.set_item("zone", &g.locality.zone)?;
            loc.set_item("sub_zone", &g.locality.sub_zone)?;
            d.set_item("locality", loc)?;
            d.set_item("locality_weight", g.weight)?;
            d.set_item("active_requests", s.active_requests())?;
            d.set_item("ejected", s.is_ejected())?;
            d.set_item("ejections", ej.total)?;
            d.set_item("health_check_failed", s.health_check_failed())?;
            d.set_item("hash_key", &e.hash_key)?;
            d.set_item("hostname", &e.hostname)?;
            d.set_item("tls_mode", &e.meta.tls_mode)?;
            d.set_item("network", &e.meta.network)?;
            d.set_item("service_account", &e.meta.service_account)?;
            d.set_item("workload", &e.meta.workload)?;
            let labels = PyDict::new(py);
            for (k, v) in &e.meta.labels {
                labels.set_item(k, v)?;
            }
            d.set_item("labels", labels)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Priority loads: {"healthy": [...], "degraded": [...], "panic": [...],
    /// "health": [...], "degraded_availability": [...]} (percent per priority).
    fn priority_load<'py>(&self, py: Python<'py>, cluster: &str) -> PyResult<Bound<'py, PyDict>> {
        let c = self.cluster(cluster)?;
        load_dict(py, c.snapshot().priority_load())
    }

    /// Ring or Maglev table entries per endpoint of one priority's healthy
    /// hosts ({"ip:port": entries}); None for other policies.
    #[pyo3(signature = (cluster, priority = 0))]
    fn table_entries<'py>(
        &self,
        py: Python<'py>,
        cluster: &str,
        priority: usize,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let c = self.cluster(cluster)?;
        let snap = c.snapshot();
        let Some(counts) =
            snap.table_counts(priority, Source::Healthy).or_else(|| snap.table_counts(priority, Source::All))
        else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        for (i, n) in counts {
            d.set_item(snap.endpoints()[i as usize].address.to_string(), n)?;
        }
        Ok(Some(d))
    }

    fn __repr__(&self) -> String {
        format!("LbTable({} clusters, generation {})", self.inner.len(), self.inner.generation())
    }
}

/// The table seed as the core uses it (the same for a Python int everywhere).
fn core_seed(s: u64) -> u64 {
    s ^ 0x6c62_7461_626c_6500
}

fn load_dict<'py>(py: Python<'py>, l: &core::PriorityLoad) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("healthy", l.healthy.clone())?;
    d.set_item("degraded", l.degraded.clone())?;
    d.set_item("panic", l.panic.clone())?;
    d.set_item("health", l.health.clone())?;
    d.set_item("degraded_availability", l.degraded_availability.clone())?;
    Ok(d)
}

/// Envoy's priority-load arithmetic on raw counts: `counts` is a list of
/// (total, healthy, degraded) per priority.
#[pyfunction]
#[pyo3(signature = (counts, *, overprovisioning_factor = 140, panic_threshold = 50))]
fn lb_priority_load<'py>(
    py: Python<'py>,
    counts: Vec<(u32, u32, u32)>,
    overprovisioning_factor: u32,
    panic_threshold: u32,
) -> PyResult<Bound<'py, PyDict>> {
    let mut cs = Vec::with_capacity(counts.len());
    for (i, (total, healthy, degraded)) in counts.into_iter().enumerate() {
        if u64::from(healthy) + u64::from(degraded) > u64::from(total) {
            return Err(InvalidEntryError::new_err(format!("counts[{i}]: healthy + degraded exceeds total")));
        }
        cs.push(core::PriorityCounts { total, healthy, degraded });
    }
    load_dict(py, &core::priority::compute(&cs, overprovisioning_factor, panic_threshold))
}

/// The 64-bit hash RING_HASH and MAGLEV use for a request key (xxHash64, seed 0).
#[pyfunction]
fn lb_hash_key(key: &Bound<'_, PyAny>) -> PyResult<u64> {
    hash_of(Some(key))?.ok_or_else(|| PymeshError::new_err("hash key must not be None"))
}

/// The redirection table (`pymesh.lbtable.RedirectTable`).
#[pyclass(frozen, module = "pymesh._native")]
#[derive(Debug)]
pub struct RedirectTable {
    pub(crate) inner: core::RedirectTable,
}

#[pymethods]
impl RedirectTable {
    /// Builds from a dict: {"services": [{"address", "port", "cluster"}],
    /// "include_ip_ranges", "exclude_ip_ranges", "exclude_ports"}.
    #[staticmethod]
    fn from_dict(py: Python<'_>, document: &Bound<'_, PyAny>) -> PyResult<RedirectTable> {
        let v = to_json(document, 0)?;
        let inner = py.detach(|| core::RedirectTable::from_value(&v)).map_err(to_py)?;
        Ok(RedirectTable { inner })
    }

    /// Builds from JSON (or YAML) text.
    #[staticmethod]
    #[pyo3(signature = (text, *, yaml = false))]
    fn from_json(py: Python<'_>, text: &str, yaml: bool) -> PyResult<RedirectTable> {
        let inner = py.detach(|| core::RedirectTable::parse(text, yaml)).map_err(to_py)?;
        Ok(RedirectTable { inner })
    }

    /// Classifies an original destination: ("cluster", name),
    /// ("passthrough", None) or ("bypass", None).
    fn classify(&self, address: &str, port: u16) -> PyResult<(&'static str, Option<String>)> {
        let ip: IpAddr = address
            .parse()
            .map_err(|_| PymeshError::new_err(format!("address must be an IP address, got {address:?}")))?;
        let v = self.inner.classify(ip, port);
        Ok(match v {
            Verdict::Cluster(_) => ("cluster", self.inner.cluster_name(v).map(str::to_owned)),
            Verdict::Passthrough => ("passthrough", None),
            Verdict::Bypass => ("bypass", None),
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!("RedirectTable({} services)", self.inner.len())
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LbTable>()?;
    m.add_class::<RedirectTable>()?;
    m.add_function(wrap_pyfunction!(lb_priority_load, m)?)?;
    m.add_function(wrap_pyfunction!(lb_hash_key, m)?)?;
    Ok(())
}

//! Python classes over the name table: `NameTable` (an immutable snapshot),
//! `NameMatch` (one lookup's answer) and `LiveNameTable` (the swap point).

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use pymesh_core::names::{self as core, Hit, LiveNameTable as CoreLive, NameConfig, NameEntry};

use crate::convert::{config, entry_from_mapping};
use crate::errors::{to_py, ParseError, PymeshError};

const NDS_TYPE_URL: &str = "type.googleapis.com/istio.networking.nds.v1.NameTable";

/// Formats an address into a Python str without a heap String in between.
fn ip_str<'py>(py: Python<'py>, ip: &dyn std::fmt::Display) -> Bound<'py, PyString> {
    let mut buf = [0u8; 48];
    let mut cur = &mut buf[..];
    let _ = write!(cur, "{ip}");
    let left = cur.len();
    let n = buf.len() - left;
    PyString::new(py, std::str::from_utf8(&buf[..n]).unwrap_or_default())
}

fn v4_tuple<'py>(py: Python<'py>, ips: &[Ipv4Addr]) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, ips.iter().map(|a| ip_str(py, a)))
}

fn v6_tuple<'py>(py: Python<'py>, ips: &[Ipv6Addr]) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, ips.iter().map(|a| ip_str(py, a)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

fn family(qtype: &str) -> PyResult<Family> {
    match qtype.to_ascii_uppercase().as_str() {
        "A" => Ok(Family::V4),
        "AAAA" => Ok(Family::V6),
        _ => Err(PymeshError::new_err(format!("qtype must be 'A' or 'AAAA', got {qtype:?}"))),
    }
}

/// The answer to one lookup of a known name.
#[pyclass(frozen, module = "pymesh._native")]
#[derive(Debug)]
pub struct NameMatch {
    #[pyo3(get)]
    canonical: String,
    #[pyo3(get)]
    form: &'static str,
    #[pyo3(get)]
    search_index: Option<usize>,
    #[pyo3(get)]
    ipv4: Py<PyTuple>,
    #[pyo3(get)]
    ipv6: Py<PyTuple>,
}

impl NameMatch {
    fn from_hit(py: Python<'_>, h: &Hit<'_>) -> PyResult<NameMatch> {
        Ok(NameMatch {
            canonical: h.canonical.to_owned(),
            form: h.form.as_str(),
            search_index: h.search_index,
            ipv4: v4_tuple(py, h.ipv4)?.unbind(),
            ipv6: v6_tuple(py, h.ipv6)?.unbind(),
        })
    }
}

#[pymethods]
impl NameMatch {
    /// The addresses answering `qtype` ("A" or "AAAA"); empty means NODATA.
    #[pyo3(signature = (qtype = "A"))]
    fn addresses(&self, py: Python<'_>, qtype: &str) -> PyResult<Py<PyTuple>> {
        Ok(match family(qtype)? {
            Family::V4 => self.ipv4.clone_ref(py),
            Family::V6 => self.ipv6.clone_ref(py),
        })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "NameMatch(canonical={:?}, form={:?}, search_index={:?}, ipv4={}, ipv6={})",
            self.canonical,
            self.form,
            self.search_index,
            self.ipv4.bind(py).repr().map(|r| r.to_string()).unwrap_or_default(),
            self.ipv6.bind(py).repr().map(|r| r.to_string()).unwrap_or_default(),
        )
    }
}

/// An immutable name table snapshot: build it once, look names up from any
/// thread, swap it into a `LiveNameTable` (or a DNS server) as a whole.
#[pyclass(frozen, module = "pymesh._native")]
#[derive(Debug)]
pub struct NameTable {
    pub(crate) inner: Arc<core::NameTable>,
}

fn build(py: Python<'_>, entries: Vec<NameEntry>, cfg: NameConfig) -> PyResult<NameTable> {
    // Building 100k+ names is bulk work: other Python threads keep running.
    let table = py.detach(move || core::NameTable::build(&entries, &cfg)).map_err(to_py)?;
    Ok(NameTable { inner: Arc::new(table) })
}

fn lookup_one(py: Python<'_>, t: &core::NameTable, name: &str) -> PyResult<Option<NameMatch>> {
    t.lookup_with(name.as_bytes(), |hit| hit.map(|h| NameMatch::from_hit(py, &h)).transpose())
}

/// Names looked up together by `lookup_many`: see `NameTable::lookup_batch`.
const MANY_CHUNK: usize = 64;

fn lookup_batch<'py>(
    py: Python<'py>,
    t: &core::NameTable,
    names: &Bound<'py, PyAny>,
    fam: Family,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    // Per chunk: every answer starts as None (also for names no table can
    // hold); the valid names are looked up as one batch, whose cache misses
    // overlap on large tables, and their answers filled in.
    let mut answers: Vec<Bound<'py, PyAny>> = Vec::with_capacity(MANY_CHUNK);
    let mut queries: Vec<core::QueryName> = Vec::with_capacity(MANY_CHUNK);
    let mut slots: Vec<usize> = Vec::with_capacity(MANY_CHUNK);
    let flush = |answers: &mut Vec<Bound<'py, PyAny>>,
                 queries: &mut Vec<core::QueryName>,
                 slots: &mut Vec<usize>|
     -> PyResult<()> {
        let mut err = None;
        t.lookup_batch(queries, |i, hit| {
            let Some(h) = hit else { return };
            let tuple = match fam {
                Family::V4 => v4_tuple(py, h.ipv4).map(|t| t.into_any()),
                Family::V6 => v6_tuple(py, h.ipv6).map(|t| t.into_any()),
            };
            match tuple {
                Ok(tuple) => answers[slots[i]] = tuple,
                Err(e) => err = err.take().or(Some(e)),
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        for a in answers.drain(..) {
            out.append(a)?;
        }
        queries.clear();
        slots.clear();
        Ok(())
    };
    let add = |item: Bound<'py, PyAny>,
               answers: &mut Vec<Bound<'py, PyAny>>,
               queries: &mut Vec<core::QueryName>,
               slots: &mut Vec<usize>|
     -> PyResult<()> {
        let s = item.cast::<PyString>().map_err(|_| PymeshError::new_err("names must be strings"))?;
        if let Some(q) = core::QueryName::new(s.to_str()?.as_bytes()) {
            queries.push(q);
            slots.push(answers.len());
        }
        answers.push(py.None().into_bound(py));
        Ok(())
    };
    if let Ok(list) = names.cast::<PyList>() {
        for item in list.iter() {
            add(item, &mut answers, &mut queries, &mut slots)?;
            if answers.len() == MANY_CHUNK {
                flush(&mut answers, &mut queries, &mut slots)?;
            }
        }
    } else {
        for item in names.try_iter()? {
            add(item?, &mut answers, &mut queries, &mut slots)?;
            if answers.len() == MANY_CHUNK {
                flush(&mut answers, &mut queries, &mut slots)?;
            }
        }
    }
    flush(&mut answers, &mut queries, &mut slots)?;
    Ok(out)
}

#[pymethods]
impl NameTable {
    /// Builds a table from entries: dicts with the NDS `NameInfo` fields
    /// (`hostname`, `ips`, `registry`, `shortname`, `namespace`, `alt_hosts`).
    #[staticmethod]
    #[pyo3(signature = (entries, *, namespace = "", domain = "cluster.local", search = None))]
    fn from_entries(
        py: Python<'_>,
        entries: &Bound<'_, PyAny>,
        namespace: &str,
        domain: &str,
        search: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<NameTable> {
        let cfg = config(namespace, domain, search)?;
        let mut list = Vec::new();
        for (i, e) in entries.try_iter()?.enumerate() {
            list.push(entry_from_mapping(i, None, &e?)?);
        }
        build(py, list, cfg)
    }

    /// Builds a table from a parsed NDS document `{"table": {hostname: info}}`.
    #[staticmethod]
    #[pyo3(signature = (document, *, namespace = "", domain = "cluster.local", search = None))]
    fn from_document(
        py: Python<'_>,
        document: &Bound<'_, PyAny>,
        namespace: &str,
        domain: &str,
        search: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<NameTable> {
        let cfg = config(namespace, domain, search)?;
        let Ok(doc) = document.cast::<PyDict>() else {
            return Err(ParseError::new_err("document: expected a dict with a \"table\" field"));
        };
        if let Some(k) = doc.keys().iter().find(|k| k.extract::<String>().map(|k| k != "table").unwrap_or(true)) {
            return Err(ParseError::new_err(format!("document: unknown top-level field {k} (expected \"table\")")));
        }
        let mut list = Vec::new();
        if let Some(table) = doc.get_item("table")?.filter(|t| !t.is_none()) {
            let Ok(table) = table.cast::<PyDict>() else {
                return Err(ParseError::new_err("document: \"table\" must be a dict mapping hostnames to entries"));
            };
            for (i, (k, v)) in table.iter().enumerate() {
                let host: String =
                    k.extract().map_err(|_| ParseError::new_err("document: table keys must be strings"))?;
                if v.is_none() {
                    list.push(NameEntry { hostname: host, ..Default::default() });
                } else {
                    list.push(entry_from_mapping(i, Some(&host), &v)?);
                }
            }
        }
        build(py, list, cfg)
    }

    /// Builds a table from NDS proto3 JSON (or YAML) text.
    #[staticmethod]
    #[pyo3(signature = (text, *, namespace = "", domain = "cluster.local", search = None, yaml = false))]
    fn from_json(
        py: Python<'_>,
        text: &str,
        namespace: &str,
        domain: &str,
        search: Option<&Bound<'_, PyAny>>,
        yaml: bool,
    ) -> PyResult<NameTable> {
        let cfg = config(namespace, domain, search)?;
        let format = if yaml { core::Format::Yaml } else { core::Format::Json };
        let entries = py.detach(|| core::parse_document(text, format, "<string>")).map_err(to_py)?;
        build(py, entries, cfg)
    }

    /// Builds a table from a file: NDS proto3 JSON, or YAML for `.yaml`/`.yml`.
    #[staticmethod]
    #[pyo3(signature = (path, *, namespace = "", domain = "cluster.local", search = None))]
    fn from_file(
        py: Python<'_>,
        path: std::path::PathBuf,
        namespace: &str,
        domain: &str,
        search: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<NameTable> {
        let cfg = config(namespace, domain, search)?;
        let path = path.to_string_lossy().into_owned();
        let entries = py.detach(|| core::read_file(&path)).map_err(to_py)?;
        build(py, entries, cfg)
    }

    /// Builds a table from an NDS `NameTable` protobuf: its serialized bytes,
    /// a message object (anything with `SerializeToString`), or a
    /// `google.protobuf.Any` wrapping one (as an xDS response carries it).
    #[staticmethod]
    #[pyo3(signature = (message, *, namespace = "", domain = "cluster.local", search = None))]
    fn from_nds(
        py: Python<'_>,
        message: &Bound<'_, PyAny>,
        namespace: &str,
        domain: &str,
        search: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<NameTable> {
        let cfg = config(namespace, domain, search)?;
        let bytes: Vec<u8> = if let Ok(b) = message.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if message.hasattr("type_url")? && message.hasattr("value")? {
            let url: String = message.getattr("type_url")?.extract()?;
            if url != NDS_TYPE_URL {
                return Err(ParseError::new_err(format!(
                    "NDS NameTable: Any has type {url:?}, expected {NDS_TYPE_URL:?}"
                )));
            }
            message.getattr("value")?.extract()?
        } else if message.hasattr("SerializeToString")? {
            message.call_method0("SerializeToString")?.extract()?
        } else if let Ok(v) = message.extract::<Vec<u8>>() {
            v
        } else {
            return Err(ParseError::new_err("NDS NameTable: expected bytes or a protobuf message"));
        };
        let entries = py.detach(|| core::decode_name_table(&bytes)).map_err(to_py)?;
        build(py, entries, cfg)
    }

    /// Looks one name up (any case, with or without the trailing dot).
    /// Returns None when the name is unknown (a proxy forwards it upstream).
    fn lookup(&self, py: Python<'_>, name: &str) -> PyResult<Option<NameMatch>> {
        lookup_one(py, &self.inner, name)
    }

    /// Looks many names up at once; for each, None (unknown) or the tuple of
    /// addresses of `qtype` (an empty tuple is NODATA).
    #[pyo3(signature = (names, qtype = "A"))]
    fn lookup_many<'py>(
        &self,
        py: Python<'py>,
        names: &Bound<'py, PyAny>,
        qtype: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        lookup_batch(py, &self.inner, names, family(qtype)?)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, name: &str) -> bool {
        self.inner.lookup_with(name.as_bytes(), |h| h.is_some())
    }

    fn __iter__(slf: PyRef<'_, Self>) -> NameTableIter {
        NameTableIter { table: slf.inner.clone(), pos: 0 }
    }

    /// The proxy namespace the table was built for.
    #[getter]
    fn namespace(&self) -> &str {
        self.inner.namespace()
    }

    #[getter]
    fn domain(&self) -> &str {
        self.inner.domain()
    }

    #[getter]
    fn search(&self) -> Vec<String> {
        self.inner.search().to_vec()
    }

    /// Entries left out because they had no address.
    #[getter]
    fn skipped(&self) -> usize {
        self.inner.skipped()
    }

    /// (total heap bytes, bytes of the names themselves).
    #[getter]
    fn heap_bytes(&self) -> (usize, usize) {
        self.inner.heap_bytes()
    }

    fn __repr__(&self) -> String {
        format!(
            "NameTable({} entries, namespace={:?}, domain={:?})",
            self.inner.len(),
            self.inner.namespace(),
            self.inner.domain()
        )
    }
}

/// Iterates a table's entries as dicts in the NDS entry shape.
#[pyclass(module = "pymesh._native")]
#[derive(Debug)]
pub struct NameTableIter {
    table: Arc<core::NameTable>,
    pos: usize,
}

#[pymethods]
impl NameTableIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(e) = self.table.entry(self.pos) else { return Ok(None) };
        self.pos += 1;
        let d = PyDict::new(py);
        d.set_item("hostname", e.hostname)?;
        let ips = PyList::empty(py);
        for a in e.ipv4 {
            ips.append(ip_str(py, a))?;
        }
        for a in e.ipv6 {
            ips.append(ip_str(py, a))?;
        }
        d.set_item("ips", ips)?;
        d.set_item("registry", e.registry)?;
        d.set_item("shortname", e.shortname)?;
        d.set_item("namespace", e.namespace)?;
        Ok(Some(d))
    }
}

/// The table currently serving: readers never block and never see a
/// half-built table; `swap` publishes a new snapshot in one atomic step.
#[pyclass(frozen, module = "pymesh._native")]
#[derive(Debug)]
pub struct LiveNameTable {
    inner: CoreLive,
}

#[pymethods]
impl LiveNameTable {
    #[new]
    #[pyo3(signature = (table = None))]
    fn new(table: Option<PyRef<'_, NameTable>>) -> LiveNameTable {
        let inner = CoreLive::new();
        if let Some(t) = table {
            inner.store(t.inner.clone());
        }
        LiveNameTable { inner }
    }

    /// Publishes `table`; returns the new generation number.
    fn swap(&self, table: PyRef<'_, NameTable>) -> u64 {
        self.inner.store(table.inner.clone())
    }

    /// The snapshot serving now, or None before the first swap.
    #[getter]
    fn current(&self) -> Option<NameTable> {
        self.inner.load().as_ref().map(|t| NameTable { inner: t.clone() })
    }

    #[getter]
    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    /// Like `NameTable.lookup` on the current snapshot (None before the first).
    fn lookup(&self, py: Python<'_>, name: &str) -> PyResult<Option<NameMatch>> {
        match self.inner.load().as_ref() {
            Some(t) => lookup_one(py, t, name),
            None => Ok(None),
        }
    }

    /// Like `NameTable.lookup_many`, all answers from one snapshot.
    #[pyo3(signature = (names, qtype = "A"))]
    fn lookup_many<'py>(
        &self,
        py: Python<'py>,
        names: &Bound<'py, PyAny>,
        qtype: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        let fam = family(qtype)?;
        match self.inner.load().as_ref() {
            Some(t) => lookup_batch(py, t, names, fam),
            None => {
                let n = names.len()?;
                PyList::new(py, (0..n).map(|_| py.None()))
            }
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NameTable>()?;
    m.add_class::<NameMatch>()?;
    m.add_class::<NameTableIter>()?;
    m.add_class::<LiveNameTable>()?;
    Ok(())
}

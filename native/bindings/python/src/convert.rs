//! Python values to core inputs. Wrong types are reported as pymesh errors
//! naming the entry and field, like every other invalid input.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use pymesh_core::names::{NameConfig, NameEntry};

use crate::errors::{ConfigError, InvalidEntryError};

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

fn entry_err(entry: &str, field: &str, reason: impl std::fmt::Display) -> PyErr {
    InvalidEntryError::new_err(format!("entry {entry:?}: {field}: {reason}"))
}

fn opt_str(entry: &str, field: &str, v: Option<Bound<'_, PyAny>>) -> PyResult<String> {
    match v {
        None => Ok(String::new()),
        Some(v) if v.is_none() => Ok(String::new()),
        Some(v) => match v.cast::<PyString>() {
            Ok(s) => Ok(s.to_str()?.to_owned()),
            Err(_) => Err(entry_err(entry, field, format!("expected a string, got {}", type_name(&v)))),
        },
    }
}

fn str_list(entry: &str, field: &str, v: Option<Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    if v.is_none() {
        return Ok(Vec::new());
    }
    if v.is_instance_of::<PyString>() || !(v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>()) {
        return Err(entry_err(entry, field, format!("expected a list of strings, got {}", type_name(&v))));
    }
    let mut out = Vec::new();
    for (i, item) in v.try_iter()?.enumerate() {
        let item = item?;
        match item.cast::<PyString>() {
            Ok(s) => out.push(s.to_str()?.to_owned()),
            Err(_) => {
                return Err(entry_err(
                    entry,
                    &format!("{field}[{i}]"),
                    format!("expected a string, got {}", type_name(&item)),
                ))
            }
        }
    }
    Ok(out)
}

const ENTRY_KEYS: [&str; 6] = ["hostname", "ips", "registry", "shortname", "namespace", "alt_hosts"];

/// One entry from a mapping with the NDS `NameInfo` fields plus `hostname`
/// (`host` names it when the mapping is a value of a `{"table": ...}` map).
pub(crate) fn entry_from_mapping(pos: usize, host: Option<&str>, d: &Bound<'_, PyAny>) -> PyResult<NameEntry> {
    let pos_label = format!("#{pos}");
    let Ok(d) = d.cast::<PyDict>() else {
        return Err(entry_err(&pos_label, "(entry)", format!("expected a dict, got {}", type_name(d))));
    };
    let hostname = match host {
        Some(h) => h.to_owned(),
        None => opt_str(&pos_label, "hostname", d.get_item("hostname")?)?,
    };
    let label = if hostname.is_empty() { pos_label } else { hostname.clone() };
    for k in d.keys() {
        let key: String = k.extract().map_err(|_| entry_err(&label, "(entry)", "keys must be strings"))?;
        if !(ENTRY_KEYS.contains(&key.as_str()) || key == "altHosts") || (host.is_some() && key == "hostname") {
            return Err(entry_err(&label, &key, "unknown field"));
        }
    }
    let alt = match d.get_item("alt_hosts")? {
        Some(v) => Some(v),
        None => d.get_item("altHosts")?,
    };
    Ok(NameEntry {
        ips: str_list(&label, "ips", d.get_item("ips")?)?,
        registry: opt_str(&label, "registry", d.get_item("registry")?)?,
        shortname: opt_str(&label, "shortname", d.get_item("shortname")?)?,
        namespace: opt_str(&label, "namespace", d.get_item("namespace")?)?,
        alt_hosts: str_list(&label, "alt_hosts", alt)?,
        hostname,
    })
}

/// The proxy configuration from keyword arguments.
pub(crate) fn config(namespace: &str, domain: &str, search: Option<&Bound<'_, PyAny>>) -> PyResult<NameConfig> {
    let search = match search {
        None => Vec::new(),
        Some(s) if s.is_none() => Vec::new(),
        // A single string is a resolv.conf-style, space-separated list.
        Some(s) if s.is_instance_of::<PyString>() => {
            s.cast::<PyString>()?.to_str()?.split_whitespace().map(str::to_owned).collect()
        }
        Some(s) => {
            let mut out = Vec::new();
            for (i, item) in s.try_iter()?.enumerate() {
                let item = item?;
                let Ok(v) = item.cast::<PyString>() else {
                    return Err(ConfigError::new_err(format!("config: search[{i}]: expected a string")));
                };
                out.push(v.to_str()?.to_owned());
            }
            out
        }
    };
    Ok(NameConfig { namespace: namespace.to_owned(), domain: domain.to_owned(), search })
}

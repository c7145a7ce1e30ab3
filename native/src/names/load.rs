//! Reading a name table document: the proto3 JSON form of NDS `NameTable`
//! (`{"table": {"<hostname>": {"ips": [...], "registry": ..., ...}}}`) or the
//! same structure in YAML. Field names are accepted in both proto3 JSON
//! spellings (`alt_hosts` and `altHosts`). Errors name the entry and field.

use serde_json::Value;

use super::NameEntry;
use crate::error::{Error, Result};

/// Document formats a name table can be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// Guesses the format from a file name; anything not `.yaml`/`.yml` is JSON
    /// (which the YAML reader would accept too, but more slowly).
    pub fn from_path(path: &str) -> Format {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Format::Yaml
        } else {
            Format::Json
        }
    }
}

/// Parses a document into entries. `source_name` (a path, or "<string>")
/// prefixes syntax errors.
pub fn parse_document(text: &str, format: Format, source_name: &str) -> Result<Vec<NameEntry>> {
    let doc: Value = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| Error::parse(source_name, e))?,
        Format::Yaml => serde_yaml::from_str(text).map_err(|e| Error::parse(source_name, e))?,
    };
    entries_from_value(&doc, source_name)
}

/// Reads a file (format from its extension) into entries.
pub fn read_file(path: &str) -> Result<Vec<NameEntry>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_string(), source })?;
    parse_document(&text, Format::from_path(path), path)
}

/// Converts a parsed document (`{"table": {...}}`) into entries.
pub fn entries_from_value(doc: &Value, source_name: &str) -> Result<Vec<NameEntry>> {
    let Value::Object(top) = doc else {
        return Err(Error::parse(source_name, "expected an object with a \"table\" field"));
    };
    if let Some(k) = top.keys().find(|k| *k != "table") {
        return Err(Error::parse(source_name, format!("unknown top-level field {k:?} (expected \"table\")")));
    }
    let table = match top.get("table") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(t)) => t,
        Some(_) => return Err(Error::parse(source_name, "\"table\" must be an object mapping hostnames to entries")),
    };
    let mut out = Vec::with_capacity(table.len());
    for (host, info) in table {
        out.push(entry_from_value(host, info)?);
    }
    Ok(out)
}

fn entry_from_value(host: &str, info: &Value) -> Result<NameEntry> {
    let mut e = NameEntry { hostname: host.to_string(), ..Default::default() };
    let fields = match info {
        Value::Object(f) => f,
        Value::Null => return Ok(e),
        other => return Err(Error::entry(host, "(entry)", format!("expected an object, got {}", kind(other)))),
    };
    for (k, v) in fields {
        match k.as_str() {
            "ips" => e.ips = strings(host, "ips", v)?,
            "registry" => e.registry = string(host, "registry", v)?,
            "shortname" => e.shortname = string(host, "shortname", v)?,
            "namespace" => e.namespace = string(host, "namespace", v)?,
            "alt_hosts" | "altHosts" => e.alt_hosts = strings(host, "alt_hosts", v)?,
            other => return Err(Error::entry(host, other, "unknown field")),
        }
    }
    Ok(e)
}

fn string(host: &str, field: &str, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        other => Err(Error::entry(host, field, format!("expected a string, got {}", kind(other)))),
    }
}

fn strings(host: &str, field: &str, v: &Value) -> Result<Vec<String>> {
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => {
                    Err(Error::entry(host, format!("{field}[{i}]"), format!("expected a string, got {}", kind(other))))
                }
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        other => Err(Error::entry(host, field, format!("expected a list of strings, got {}", kind(other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

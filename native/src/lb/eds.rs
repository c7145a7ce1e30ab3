//! EDS: `ClusterLoadAssignment` resources on their own, as an xDS client
//! receives them separately from the `Cluster` (Envoy's EDS clusters). Each
//! assignment replaces the endpoints of one cluster the table already has
//! ([`super::LbTable::set_assignments`]); the cluster's settings stay.
//!
//! Documents: a list of assignments, one assignment, `{"assignments": [...]}`
//! or an xDS response (`resources`, each with `@type`
//! `ClusterLoadAssignment`). Field names snake_case or lowerCamelCase, as
//! proto3 JSON allows; validation and messages are the `Cluster` parser's
//! own (an inline `load_assignment` is the same message).

use std::collections::HashSet;

use serde_json::Value;

use super::cluster::ClusterAssignment;
use super::parse::assignment_from_value;
use crate::error::{Error, Result};

/// The type URL of an EDS resource.
pub const ASSIGNMENT_TYPE: &str = "envoy.config.endpoint.v3.ClusterLoadAssignment";

/// Every assignment in a document (see the module docs). Two assignments
/// for one cluster in one document are an error, as Envoy NACKs an EDS
/// response that repeats a resource.
pub fn assignments_from_value(v: &Value, source_name: &str) -> Result<Vec<ClusterAssignment>> {
    let list: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => match o.get("resources").or_else(|| o.get("assignments")) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(_) => return Err(Error::parse(source_name, "resources: expected a list")),
            None if o.contains_key("cluster_name") || o.contains_key("clusterName") || o.contains_key("endpoints") => {
                vec![v]
            }
            None => {
                return Err(Error::parse(
                    source_name,
                    "expected a ClusterLoadAssignment, a list of them, {\"assignments\": [...]} or an xDS response",
                ))
            }
        },
        _ => return Err(Error::parse(source_name, "expected a ClusterLoadAssignment or a list of them")),
    };
    let mut out = Vec::with_capacity(list.len());
    let mut names = HashSet::new();
    for (i, a) in list.into_iter().enumerate() {
        if let Some(t) = a.get("@type").and_then(Value::as_str) {
            if !t.ends_with(ASSIGNMENT_TYPE) {
                return Err(Error::cluster(format!("#{i}"), "@type", format!("{t:?} is not an {ASSIGNMENT_TYPE}")));
            }
        }
        let a = assignment_from_value(a, i)?;
        if !names.insert(a.cluster.clone()) {
            return Err(Error::cluster(&a.cluster, "cluster_name", "assigned twice in one update"));
        }
        out.push(a);
    }
    Ok(out)
}

/// Parses assignments from JSON or YAML text.
pub fn parse_assignments(text: &str, yaml: bool, source_name: &str) -> Result<Vec<ClusterAssignment>> {
    let v: Value = if yaml {
        serde_yaml::from_str(text).map_err(|e| Error::parse(source_name, e))?
    } else {
        serde_json::from_str(text).map_err(|e| Error::parse(source_name, e))?
    };
    assignments_from_value(&v, source_name)
}

/// Reads assignments from a file: YAML for `.yaml` / `.yml`, JSON otherwise.
pub fn read_assignments(path: &str) -> Result<Vec<ClusterAssignment>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    let yaml = path.ends_with(".yaml") || path.ends_with(".yml");
    parse_assignments(&text, yaml, path)
}

//! xDS input of the lbtable: Envoy `Cluster` resources (CDS) and
//! `ClusterLoadAssignment`s (EDS), in proto3 JSON as parsed into a
//! `serde_json::Value`, to validated [`ClusterSpec`](crate::lb::ClusterSpec)s
//! and [`ClusterAssignment`](crate::lb::ClusterAssignment)s. This is the
//! one parser: Python hands it dicts converted from YAML or from protobuf
//! messages (`MessageToDict(preserving_proto_field_name=True)`), the C ABI
//! hands it JSON text, so every input is validated, and rejected, alike.
//!
//! - `json`: the proto3 JSON toolkit (field access, well-known types, errors);
//! - `cluster`: the `Cluster` and the documents clusters come in;
//! - `outlier`: `OutlierDetection`;
//! - `assignment`: `ClusterLoadAssignment`s, endpoints, Istio's endpoint
//!   metadata, and EDS documents.

mod assignment;
mod cluster;
mod json;
mod outlier;

pub use assignment::{assignments_from_value, parse_assignments, read_assignments, ASSIGNMENT_TYPE, MAX_PRIORITY};
pub(crate) use cluster::finish_hash_keys;
pub use cluster::{
    cluster_from_value, clusters_from_value, http_protocol_of, parse_clusters, read_clusters, CLUSTER_TYPE,
};

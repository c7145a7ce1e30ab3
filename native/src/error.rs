//! The core's one error type. Bindings convert it once at their boundary
//! (Python: `pymesh.PymeshError` subclasses; C: a status code plus message).

use std::fmt;

/// Every failure the core reports. Each variant says what was wrong and where.
/// Callers map errors by [`Error::kind`]; new variants may be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input entry (one hostname of a name table) is invalid.
    #[error("entry {entry:?}: {field}: {reason}")]
    InvalidEntry {
        /// The entry's key as given (hostname), or its position if it has none.
        entry: String,
        /// The offending field, e.g. `ips[1]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A cluster of the load-balancing table (an Envoy `Cluster` resource) is
    /// invalid, unsupported or contradictory. Reported as an invalid entry: a
    /// cluster is an entry of the cluster table.
    #[error("cluster {cluster:?}: {field}: {reason}")]
    InvalidCluster {
        /// The cluster's name, or its position (`#3`) if it has none.
        cluster: String,
        /// The offending field as a proto3 JSON path, e.g. `load_assignment.endpoints[0].priority`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration the table is built for (namespace, domain, search list) is invalid.
    #[error("config: {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    /// A document (JSON, YAML, protobuf) could not be decoded.
    #[error("{source_name}: {reason}")]
    Parse { source_name: String, reason: String },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The error kinds as plain values, for bindings that map errors to codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidEntry,
    InvalidConfig,
    Parse,
    Io,
}

impl Error {
    pub(crate) fn entry(entry: impl fmt::Display, field: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::InvalidEntry { entry: entry.to_string(), field: field.to_string(), reason: reason.to_string() }
    }

    pub(crate) fn cluster(cluster: impl fmt::Display, field: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::InvalidCluster { cluster: cluster.to_string(), field: field.to_string(), reason: reason.to_string() }
    }

    pub(crate) fn config(field: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::InvalidConfig { field: field.to_string(), reason: reason.to_string() }
    }

    pub(crate) fn parse(source_name: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Parse { source_name: source_name.to_string(), reason: reason.to_string() }
    }

    /// The kind of this error, for mapping to codes or exception classes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidEntry { .. } | Error::InvalidCluster { .. } => ErrorKind::InvalidEntry,
            Error::InvalidConfig { .. } => ErrorKind::InvalidConfig,
            Error::Parse { .. } => ErrorKind::Parse,
            Error::Io { .. } => ErrorKind::Io,
        }
    }
}

/// Result with the core's error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

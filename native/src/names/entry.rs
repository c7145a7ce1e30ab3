//! Build inputs: one entry per hostname, with the fields of Istio's NDS
//! `NameTable.NameInfo`, and the configuration of the proxy the table serves.

use super::hostname::normalize_table_name;
use crate::error::{Error, Result};

/// The registry value Istio gives Kubernetes services. Only entries of this
/// registry in the cluster domain get the short forms (`name.namespace`, ...).
pub const REGISTRY_KUBERNETES: &str = "Kubernetes";

/// One input entry, as in NDS `NameInfo` plus its map key (`hostname`).
/// Addresses stay textual here; [`super::NameTable::build`] parses them and
/// names the entry and field of anything invalid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameEntry {
    pub hostname: String,
    pub ips: Vec<String>,
    pub registry: String,
    pub shortname: String,
    pub namespace: String,
    pub alt_hosts: Vec<String>,
}

impl NameEntry {
    /// A convenience constructor for an entry with only a hostname and addresses.
    pub fn new(hostname: impl Into<String>, ips: impl IntoIterator<Item = impl Into<String>>) -> Self {
        NameEntry { hostname: hostname.into(), ips: ips.into_iter().map(Into::into).collect(), ..Default::default() }
    }

    /// A Kubernetes service entry (`registry: Kubernetes`, with shortname and namespace).
    pub fn kubernetes(
        hostname: impl Into<String>,
        shortname: impl Into<String>,
        namespace: impl Into<String>,
        ips: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        NameEntry {
            hostname: hostname.into(),
            ips: ips.into_iter().map(Into::into).collect(),
            registry: REGISTRY_KUBERNETES.into(),
            shortname: shortname.into(),
            namespace: namespace.into(),
            alt_hosts: Vec::new(),
        }
    }

    pub(crate) fn is_kubernetes(&self) -> bool {
        self.registry == REGISTRY_KUBERNETES
    }
}

/// What the proxy serving the table knows about itself. Part of the snapshot:
/// a change means a rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameConfig {
    /// The proxy's own namespace (`POD_NAMESPACE`); bare service names resolve
    /// only for services of this namespace. Empty: no bare names.
    pub namespace: String,
    /// The cluster domain (default `cluster.local`).
    pub domain: String,
    /// The resolv.conf search list, in order.
    pub search: Vec<String>,
}

impl Default for NameConfig {
    fn default() -> Self {
        NameConfig { namespace: String::new(), domain: "cluster.local".into(), search: Vec::new() }
    }
}

/// A validated, normalised [`NameConfig`].
#[derive(Debug, Clone)]
pub(crate) struct ValidConfig {
    pub namespace: String,
    pub domain: String,
    /// `.svc.<domain>`: the suffix that marks a Kubernetes service hostname.
    pub svc_suffix: String,
    pub search: Vec<String>,
}

impl NameConfig {
    pub(crate) fn validate(&self) -> Result<ValidConfig> {
        let namespace = if self.namespace.is_empty() {
            String::new()
        } else {
            label(&self.namespace).map_err(|r| Error::config("namespace", r))?
        };
        let domain = normalize_table_name(&self.domain, false).map_err(|r| Error::config("domain", r))?;
        let mut search = Vec::with_capacity(self.search.len());
        for (i, s) in self.search.iter().enumerate() {
            let s = normalize_table_name(s, false).map_err(|r| Error::config(format!("search[{i}]"), r))?;
            // A domain listed twice would only repeat the same lookups.
            if !search.contains(&s) {
                search.push(s);
            }
        }
        let svc_suffix = format!(".svc.{domain}");
        Ok(ValidConfig { namespace, domain, svc_suffix, search })
    }
}

/// A single DNS label (namespaces are one label in Kubernetes).
pub(crate) fn label(raw: &str) -> Result<String, String> {
    let n = normalize_table_name(raw, false)?;
    if n.contains('.') {
        return Err(format!("{raw:?} must be a single label"));
    }
    Ok(n)
}

/// Ranking of registries when two entries claim the same name: a Kubernetes
/// Service wins over a ServiceEntry "decorating" the same host, as in istiod.
pub(crate) fn registry_rank(is_kubernetes: bool) -> u8 {
    if is_kubernetes {
        0
    } else {
        1
    }
}

//! The hostname-to-IP name table the DNS proxy answers from.
//!
//! Inputs have the fields of Istio's NDS `NameInfo` ([`NameEntry`]) plus the
//! proxy's namespace, cluster domain and search list ([`NameConfig`]).
//! [`NameTable::build`] validates and lays them out once; lookups then only
//! read. See `table.rs` for the lookup rules.

mod entry;
mod hostname;
mod index;
mod live;
mod load;
mod nds;
mod table;

pub use entry::{NameConfig, NameEntry, REGISTRY_KUBERNETES};
pub use hostname::{normalize_table_name, QueryName, MAX_LABEL_LEN, MAX_NAME_LEN};
pub use live::{LiveNameTable, Snapshot};
pub use load::{entries_from_value, parse_document, read_file, Format};
pub use nds::{decode_name_table, encode_name_table};
pub use table::{EntryView, Form, Hit, NameTable};

#[cfg(test)]
mod tests;

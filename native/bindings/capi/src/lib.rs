//! The C ABI of pymesh's native core (`libpymesh`, header
//! `native/include/pymesh.h`, generated from this crate by cbindgen in the
//! `header_is_up_to_date` test).
//!
//! A thin layer: it checks and converts C arguments (`args`), delegates to
//! `pymesh-core`, and converts results (`answer`) and errors (`error`) back.
//! Every exported function body runs under `error::boundary` (or
//! `error::guard` for functions that cannot fail), so a panic never unwinds
//! into C and each core error is converted to a status code in one place.
//!
//! Conventions shared by every function (repeated in the header's preamble):
//! all symbols start with `pymesh_`; handles are opaque and freed by their
//! NULL-safe `_free` function; a function that can fail returns a
//! `pymesh_status` and takes a last `char **error_message` that, when not
//! NULL, receives NULL on success or a message the caller frees with
//! `pymesh_string_free`; borrowed arguments are only read during the call.

// cbindgen writes the header's functions in the order it meets these
// modules, so they are listed in reading order for a C programmer (and a
// comment on each keeps rustfmt from sorting them).
// Status codes, messages, the panic boundary.
mod error;
// Lookup results.
mod answer;
// Argument checks and the configuration.
mod args;
// Snapshots.
mod table;
// Building entry by entry.
mod builder;
// The atomically swapped table.
mod live;
// Answering DNS query packets.
mod dns;
// Endpoint selection and redirection (the lbtable).
mod lb;
// Inspecting a cluster's endpoints.
mod lb_inspect;

pub use answer::{
    pymesh_ip, pymesh_name_answer, pymesh_name_form, pymesh_name_form_str, PYMESH_IPV4, PYMESH_IPV6,
    PYMESH_NAME_BUF_LEN,
};
pub use args::pymesh_name_config;
pub use builder::{
    pymesh_name_table_builder, pymesh_name_table_builder_add, pymesh_name_table_builder_build,
    pymesh_name_table_builder_free, pymesh_name_table_builder_new,
};
pub use dns::{pymesh_dns_answer, PYMESH_DNS_DEFAULT_TTL, PYMESH_DNS_MIN_OUT};
pub use error::{pymesh_status, pymesh_status_str, pymesh_string_free};
pub use lb::{
    pymesh_lb_endpoint, pymesh_lb_failover, pymesh_lb_outcome, pymesh_lb_pick, pymesh_lb_priority_load,
    pymesh_lb_report, pymesh_lb_request_started, pymesh_lb_set_health_check, pymesh_lb_table, pymesh_lb_table_free,
    pymesh_lb_table_len, pymesh_lb_table_load, pymesh_lb_table_load_assignments, pymesh_lb_table_load_assignments_file,
    pymesh_lb_table_load_file, pymesh_lb_table_new, pymesh_lb_table_new_failover, pymesh_lb_tick,
    pymesh_redirect_classify, pymesh_redirect_table, pymesh_redirect_table_free, pymesh_redirect_table_from_json,
    pymesh_redirect_verdict, PYMESH_LB_ADDR_LEN,
};
pub use lb_inspect::{
    pymesh_lb_endpoint_info, pymesh_lb_endpoint_list, pymesh_lb_endpoint_list_free, pymesh_lb_endpoint_list_get,
    pymesh_lb_endpoint_list_len, pymesh_lb_endpoints, pymesh_lb_health, pymesh_lb_health_status,
};
pub use live::{
    pymesh_live_name_table, pymesh_live_name_table_free, pymesh_live_name_table_generation,
    pymesh_live_name_table_lookup, pymesh_live_name_table_new, pymesh_live_name_table_store,
};
pub use table::{
    pymesh_name_table, pymesh_name_table_entry_hostname, pymesh_name_table_free, pymesh_name_table_from_file,
    pymesh_name_table_from_json, pymesh_name_table_from_nds, pymesh_name_table_from_yaml, pymesh_name_table_len,
    pymesh_name_table_lookup,
};

#[cfg(test)]
#[allow(
    clippy::undocumented_unsafe_blocks,
    reason = "tests call the C ABI as a C program would, with pointers they just made"
)]
mod tests;

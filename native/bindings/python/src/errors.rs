//! pymesh's Python exceptions, all declared here, and the one mapping from
//! core errors to them.
//!
//! Every pymesh exception inherits `PymeshError`; the Python layer's own
//! errors subclass it too, so `except pymesh.PymeshError` catches them all.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use pymesh_core::error::{Error, ErrorKind};

create_exception!(pymesh._native, PymeshError, PyException, "Base class of every error pymesh raises.");
create_exception!(
    pymesh._native,
    InvalidEntryError,
    PymeshError,
    "A table entry is invalid; the message names it and the field."
);
create_exception!(
    pymesh._native,
    ConfigError,
    PymeshError,
    "A configuration value (namespace, domain, search list, ...) is invalid."
);
create_exception!(pymesh._native, ParseError, PymeshError, "A document (JSON, YAML, protobuf) could not be decoded.");
create_exception!(pymesh._native, FileError, PymeshError, "A file could not be read.");
create_exception!(
    pymesh._native,
    UnknownClusterError,
    PymeshError,
    "A cluster or endpoint named in a call is not in the table."
);

/// `TlsConfigError(ConfigError, ValueError)`: a bad identity or mode is a
/// configuration error of pymesh and, to callers validating input, a
/// ValueError. Created once at import (two bases need a Python-level class).
static TLS_CONFIG_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn tls_config_error(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    TLS_CONFIG_ERROR
        .get_or_try_init(py, || {
            let ns = PyDict::new(py);
            ns.set_item("__module__", "pymesh._native")?;
            ns.set_item("__doc__", "An mTLS identity or policy was refused; the message names the input.")?;
            let bases = (py.get_type::<ConfigError>(), py.get_type::<PyValueError>());
            let t = py.import("builtins")?.getattr("type")?.call1(("TlsConfigError", bases, ns))?;
            Ok(t.cast_into::<PyType>()?.unbind())
        })
        .map(|t| t.bind(py))
}

/// A `TlsConfigError` with `msg`.
pub(crate) fn tls_error(py: Python<'_>, msg: String) -> PyErr {
    match tls_config_error(py) {
        Ok(t) => PyErr::from_type(t.clone(), msg),
        Err(e) => e,
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("PymeshError", py.get_type::<PymeshError>())?;
    m.add("InvalidEntryError", py.get_type::<InvalidEntryError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("ParseError", py.get_type::<ParseError>())?;
    m.add("FileError", py.get_type::<FileError>())?;
    m.add("UnknownClusterError", py.get_type::<UnknownClusterError>())?;
    m.add("TlsConfigError", tls_config_error(py)?)?;
    Ok(())
}

/// The one conversion of core errors at this boundary.
pub(crate) fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::InvalidEntry => InvalidEntryError::new_err(msg),
        ErrorKind::InvalidConfig => ConfigError::new_err(msg),
        ErrorKind::Parse => ParseError::new_err(msg),
        ErrorKind::Io => FileError::new_err(msg),
    }
}

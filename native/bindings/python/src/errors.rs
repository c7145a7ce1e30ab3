//! pymesh's Python exceptions and the one mapping from core errors to them.
//!
//! Every pymesh exception inherits `PymeshError`; the Python layer's own
//! errors subclass it too, so `except pymesh.PymeshError` catches them all.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

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

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("PymeshError", py.get_type::<PymeshError>())?;
    m.add("InvalidEntryError", py.get_type::<InvalidEntryError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("ParseError", py.get_type::<ParseError>())?;
    m.add("FileError", py.get_type::<FileError>())?;
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

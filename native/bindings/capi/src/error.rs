//! Status codes, error messages, and the one boundary every exported function
//! body runs under: a Rust panic becomes `PYMESH_ERR_PANIC` instead of
//! unwinding into C, and a core error becomes a code plus a message, here and
//! nowhere else.

use std::any::Any;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use pymesh_core::error::{Error, ErrorKind};

/// What an exported function reports.
///
/// `PYMESH_OK` and `PYMESH_NOT_FOUND` are outcomes, not errors: no message is
/// produced for them. Every `PYMESH_ERR_*` comes with a readable message
/// through the function's `error_message` out-parameter.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pymesh_status {
    /// Success.
    PYMESH_OK = 0,
    /// The name is not in the table (or a live table has no snapshot yet).
    /// Not an error: a DNS proxy forwards such a query upstream.
    PYMESH_NOT_FOUND = 1,
    /// A NULL pointer where one is not allowed, text that is not UTF-8, an
    /// index out of range, or a length too large to be real.
    PYMESH_ERR_INVALID_ARGUMENT = 2,
    /// A table entry is invalid (bad hostname, address, shortname...); the
    /// message names the entry and the field.
    PYMESH_ERR_INVALID_ENTRY = 3,
    /// The configuration (namespace, domain, search list) is invalid.
    PYMESH_ERR_INVALID_CONFIG = 4,
    /// A document (JSON, YAML, NDS protobuf) could not be decoded.
    PYMESH_ERR_PARSE = 5,
    /// A file could not be read.
    PYMESH_ERR_IO = 6,
    /// An output buffer is too small for the result.
    PYMESH_ERR_BUFFER_TOO_SMALL = 7,
    /// A bug: Rust code panicked. The panic was stopped at the boundary and
    /// nothing was changed that the caller can observe, except that a builder
    /// may hold part of an entry.
    PYMESH_ERR_PANIC = 8,
}

use pymesh_status::*;

/// Returns the name of a status code (`"PYMESH_OK"`, `"PYMESH_ERR_PARSE"`, ...),
/// or NULL for a value that is not a `pymesh_status`.
///
/// The string is static: do not free it.
#[no_mangle]
pub extern "C" fn pymesh_status_str(status: c_int) -> *const c_char {
    guard(ptr::null(), || {
        let s: &'static CStr = match status {
            0 => c"PYMESH_OK",
            1 => c"PYMESH_NOT_FOUND",
            2 => c"PYMESH_ERR_INVALID_ARGUMENT",
            3 => c"PYMESH_ERR_INVALID_ENTRY",
            4 => c"PYMESH_ERR_INVALID_CONFIG",
            5 => c"PYMESH_ERR_PARSE",
            6 => c"PYMESH_ERR_IO",
            7 => c"PYMESH_ERR_BUFFER_TOO_SMALL",
            8 => c"PYMESH_ERR_PANIC",
            _ => return ptr::null(),
        };
        s.as_ptr()
    })
}

/// Frees a message returned through an `error_message` out-parameter.
///
/// # Safety
///
/// `message` is NULL (then nothing happens) or a pointer pymesh returned
/// through `error_message` that has not been freed yet.
#[no_mangle]
pub unsafe extern "C" fn pymesh_string_free(message: *mut c_char) {
    guard((), || {
        if !message.is_null() {
            // SAFETY: by the contract above it came from `CString::into_raw` in `report`.
            drop(unsafe { CString::from_raw(message) });
        }
    })
}

/// An error on its way to C: a code and the message the caller receives.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) status: pymesh_status,
    pub(crate) message: String,
}

impl FfiError {
    pub(crate) fn invalid_argument(message: impl Into<String>) -> FfiError {
        FfiError { status: PYMESH_ERR_INVALID_ARGUMENT, message: message.into() }
    }

    pub(crate) fn buffer_too_small(message: impl Into<String>) -> FfiError {
        FfiError { status: PYMESH_ERR_BUFFER_TOO_SMALL, message: message.into() }
    }

    fn panic(payload: &(dyn Any + Send)) -> FfiError {
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        FfiError { status: PYMESH_ERR_PANIC, message: format!("internal error: Rust panicked: {what}") }
    }
}

/// The one conversion of core errors to C status codes.
impl From<Error> for FfiError {
    fn from(e: Error) -> FfiError {
        let status = match e.kind() {
            ErrorKind::InvalidEntry => PYMESH_ERR_INVALID_ENTRY,
            ErrorKind::InvalidConfig => PYMESH_ERR_INVALID_CONFIG,
            ErrorKind::Parse => PYMESH_ERR_PARSE,
            ErrorKind::Io => PYMESH_ERR_IO,
        };
        FfiError { status, message: e.to_string() }
    }
}

/// Runs `f`, the only place a panic is caught.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, FfiError> {
    // AssertUnwindSafe: after a panic the caller gets PYMESH_ERR_PANIC and
    // the handles stay valid; none of them holds an invariant a half-done
    // operation could break (tables are immutable, a builder is a list).
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| FfiError::panic(&*payload))
}

/// The boundary of every exported function that returns a status.
///
/// Clears `*error_message`, runs `f`, and on an error or a panic stores the
/// message (as a string the caller frees with `pymesh_string_free`) and
/// returns its code.
///
/// # Safety
///
/// `error_message` is NULL or valid for writing one pointer.
pub(crate) unsafe fn boundary(
    error_message: *mut *mut c_char,
    f: impl FnOnce() -> Result<pymesh_status, FfiError>,
) -> pymesh_status {
    if !error_message.is_null() {
        // SAFETY: valid for writes by the contract above.
        unsafe { error_message.write(ptr::null_mut()) };
    }
    let err = match catch(f) {
        Ok(Ok(status)) => return status,
        Ok(Err(e)) | Err(e) => e,
    };
    if !error_message.is_null() {
        // Messages are Rust strings; an interior NUL (from user input quoted
        // in a message) would end the C string early, so it is escaped.
        let text = CString::new(err.message.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: as above.
        unsafe { error_message.write(text.into_raw()) };
    }
    err.status
}

/// The boundary of exported functions that return a plain value and cannot
/// fail (`_new`, `_free`, `_len`, `_str`): a panic returns `on_panic`.
pub(crate) fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    catch(f).unwrap_or(on_panic)
}

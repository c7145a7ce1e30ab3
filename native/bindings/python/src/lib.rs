//! `pymesh._native`: the PyO3 layer over `pymesh-core`. It converts Python
//! values to core inputs, delegates, and converts results and errors back;
//! no mesh logic lives here. The GIL is released for bulk work (table builds).

use pyo3::prelude::*;

mod convert;
mod dns;
mod errors;
mod lb;
mod names;
mod relay;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    names::register(m)?;
    lb::register(m)?;
    dns::register(m)?;
    relay::register(m)?;
    Ok(())
}

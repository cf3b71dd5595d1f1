//! Python bindings for `redrafter-core`, compiled as `redrafter_rs._core`.
//!
//! Thin layer: numpy arrays are borrowed read-only (no copy), the core runs on slices, and its
//! owned `Vec`s are moved into numpy arrays (no copy). One call per decode step.
use pyo3::prelude::*;

mod convert;
mod errors;
mod kernels;
mod retrieval;
mod tree;

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "RedrafterError",
        m.py().get_type::<errors::RedrafterError>(),
    )?;
    m.add_class::<tree::PyTree>()?;
    m.add_class::<tree::PyAcceptance>()?;
    m.add_function(wrap_pyfunction!(tree::pack_beams, m)?)?;
    m.add_function(wrap_pyfunction!(tree::accept, m)?)?;
    retrieval::register(m)?;
    kernels::register(m)?;
    Ok(())
}

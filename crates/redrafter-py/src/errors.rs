//! The one exception type, and the one place core errors become Python errors.
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

create_exception!(
    redrafter_rs._core,
    RedrafterError,
    PyValueError,
    "Invalid input to a redrafter-rs operation (bad shape, dtype, token range or inconsistent sizes)."
);

/// Converts a core error into `RedrafterError` (orphan rule: no `From` impl possible here).
pub fn to_py_err(err: redrafter_core::Error) -> PyErr {
    RedrafterError::new_err(err.to_string())
}

/// A `RedrafterError` with a message built by the binding itself (dtype / layout problems).
pub fn binding_err(msg: String) -> PyErr {
    RedrafterError::new_err(msg)
}

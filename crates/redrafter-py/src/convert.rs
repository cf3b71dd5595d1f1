//! numpy <-> Rust conversions: read-only borrows in, moved buffers out.
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::errors::binding_err;

/// Borrows `obj` as a C-contiguous int64 array of `ndim` dims; errors name `arg` and `expected`.
pub fn borrow_i64<'py>(
    obj: &Bound<'py, PyAny>,
    arg: &str,
    ndim: usize,
    expected: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, i64>> {
    let untyped = obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        binding_err(format!(
            "{arg}: expected a numpy int64 array of shape {expected}, got an object of type {ty}"
        ))
    })?;
    if untyped.ndim() != ndim {
        return Err(binding_err(format!(
            "{arg}: expected a {ndim}-d array of shape {expected}, got {} dims with shape {:?}",
            untyped.ndim(),
            untyped.shape()
        )));
    }
    let typed = obj.cast::<PyArrayDyn<i64>>().map_err(|_| {
        binding_err(format!(
            "{arg}: expected dtype int64 for shape {expected}, got dtype {}",
            untyped.dtype()
        ))
    })?;
    let ro = typed
        .try_readonly()
        .map_err(|e| binding_err(format!("{arg}: {e}")))?;
    if !ro.is_c_contiguous() {
        return Err(binding_err(format!(
            "{arg}: expected a C-contiguous array (use np.ascontiguousarray) of shape {expected}"
        )));
    }
    Ok(ro)
}

/// The contiguous data of a borrowed array (contiguity was checked by `borrow_i64`).
pub fn slice_of<'a>(arr: &'a PyReadonlyArrayDyn<'_, i64>, arg: &str) -> PyResult<&'a [i64]> {
    arr.as_slice()
        .map_err(|_| binding_err(format!("{arg}: array is not contiguous")))
}

/// Moves a flat `Vec` into a numpy array of `shape` without copying the data.
pub fn into_numpy<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let arr = ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|e| binding_err(format!("internal shape error: {e}")))?;
    Ok(arr.into_pyarray(py))
}

/// An integer argument that must be `>= min`, as `usize`. Arguments are taken as `i64` so that
/// a negative value is a `RedrafterError` naming the argument, not pyo3's `OverflowError`.
pub fn int_at_least(arg: &str, value: i64, min: i64) -> PyResult<usize> {
    if value < min {
        return Err(binding_err(format!("{arg} must be >= {min}, got {value}")));
    }
    usize::try_from(value).map_err(|_| {
        binding_err(format!(
            "{arg} = {value} does not fit this platform's usize"
        ))
    })
}

/// A non-negative cap on a count, as `u32`; caps past `u32::MAX` never bind, so they saturate.
pub fn count_cap(arg: &str, value: i64) -> PyResult<u32> {
    int_at_least(arg, value, 0)?;
    Ok(u32::try_from(value).unwrap_or(u32::MAX))
}

/// A core size (a default, a count) as a Python integer; saturates past `i64::MAX`.
pub const fn int(n: usize) -> i64 {
    if n > i64::MAX as usize {
        i64::MAX
    } else {
        n as i64
    }
}

//! Linear-layer kernels (`redrafter-kernels`): `y = x @ W^T + b` into a caller-owned array.
//!
//! Called for every linear layer of every forward pass, so the layer is kept thin: arrays are
//! borrowed without copies, checked once, and the GIL is released around the compute.
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use numpy::{
    Element, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyReadwriteArray2, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use redrafter_kernels as kern;

use crate::convert::int_at_least;
use crate::errors::binding_err;

/// The process-wide pool (created on first use with one thread per available CPU).
static POOL: Mutex<Option<Arc<kern::Pool>>> = Mutex::new(None);

fn pool() -> PyResult<Arc<kern::Pool>> {
    let mut slot = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = slot.as_ref() {
        return Ok(Arc::clone(p));
    }
    let p =
        Arc::new(kern::Pool::with_available_parallelism().map_err(|e| binding_err(e.to_string()))?);
    *slot = Some(Arc::clone(&p));
    Ok(p)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// `obj` as a 2-d / 1-d numpy array of `T`; errors name `arg`, the dtype and the shape.
fn typed<'py, T: Element, D: numpy::ndarray::Dimension>(
    obj: &Bound<'py, PyAny>,
    arg: &str,
    dtype: &str,
    shape: &str,
) -> PyResult<Bound<'py, numpy::PyArray<T, D>>> {
    let untyped = obj.cast::<PyUntypedArray>().map_err(|_| {
        binding_err(format!(
            "{arg}: expected a numpy {dtype} array of shape {shape}, got an object of type {}",
            type_name(obj)
        ))
    })?;
    let ndim = D::NDIM.unwrap_or(0);
    if untyped.ndim() != ndim {
        return Err(binding_err(format!(
            "{arg}: expected a {ndim}-d array of shape {shape}, got shape {:?}",
            untyped.shape()
        )));
    }
    let arr = obj.cast::<numpy::PyArray<T, D>>().map_err(|_| {
        binding_err(format!(
            "{arg}: expected dtype {dtype} (shape {shape}), got dtype {}",
            untyped.dtype()
        ))
    })?;
    if !untyped.is_c_contiguous() {
        return Err(binding_err(format!(
            "{arg}: expected a C-contiguous array of shape {shape} (use np.ascontiguousarray)"
        )));
    }
    Ok(arr.clone())
}

/// The borrowed inputs and output of one call, shapes checked against each other.
struct Args<'py, W: Element> {
    x: PyReadonlyArray2<'py, f32>,
    w: PyReadonlyArray2<'py, W>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    out: PyReadwriteArray2<'py, f32>,
    m: usize,
    k: usize,
    n: usize,
}

fn borrow_args<'py, W: Element>(
    x: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    w_arg: &str,
    w_dtype: &str,
    bias: Option<&Bound<'py, PyAny>>,
    out: &Bound<'py, PyAny>,
) -> PyResult<Args<'py, W>> {
    let xa = typed::<f32, numpy::Ix2>(x, "x", "float32", "[M, K]")?;
    let wa = typed::<W, numpy::Ix2>(w, w_arg, w_dtype, "[N, K]")?;
    let (m, k) = (xa.shape()[0], xa.shape()[1]);
    let (n, wk) = (wa.shape()[0], wa.shape()[1]);
    if wk != k {
        return Err(binding_err(format!(
            "{w_arg}: shape {:?} does not match x of shape {:?} (expected [N, {k}])",
            wa.shape(),
            xa.shape()
        )));
    }
    let ba = match bias {
        Some(b) => {
            let ba: Bound<'py, PyArray1<f32>> = typed(b, "bias", "float32", "[N]")?;
            if ba.shape()[0] != n {
                return Err(binding_err(format!(
                    "bias: shape {:?} does not match {w_arg} of shape {:?} (expected [{n}])",
                    ba.shape(),
                    wa.shape()
                )));
            }
            Some(ba)
        }
        None => None,
    };
    let oa: Bound<'py, PyArray2<f32>> = typed(out, "out", "float32", "[M, N]")?;
    if oa.shape() != [m, n] {
        return Err(binding_err(format!(
            "out: expected shape [{m}, {n}] (rows of x, rows of {w_arg}), got {:?}",
            oa.shape()
        )));
    }
    let out = oa
        .try_readwrite()
        .map_err(|e| binding_err(format!("out: not writable or overlaps an input ({e})")))?;
    let borrow = |e: numpy::BorrowError, arg: &str| {
        binding_err(format!("{arg}: {e} (inputs must not overlap out)"))
    };
    Ok(Args {
        x: xa.try_readonly().map_err(|e| borrow(e, "x"))?,
        w: wa.try_readonly().map_err(|e| borrow(e, w_arg))?,
        bias: ba
            .map(|b| b.try_readonly().map_err(|e| borrow(e, "bias")))
            .transpose()?,
        out,
        m,
        k,
        n,
    })
}

/// Signature of `kern::linear_f32` / `kern::linear_bf16w`.
type KernelFn<W> = fn(
    &[f32],
    usize,
    usize,
    &[W],
    usize,
    Option<&[f32]>,
    &mut [f32],
    &kern::Pool,
) -> Result<(), kern::KernelError>;

/// Runs `f(x, w, bias, out, pool)` on the borrowed data without the GIL.
fn compute<W: Element + Sync>(py: Python<'_>, mut a: Args<'_, W>, f: KernelFn<W>) -> PyResult<()> {
    let contiguous = |arg: &str| binding_err(format!("{arg}: array is not contiguous"));
    let pool = pool()?;
    let (m, k, n) = (a.m, a.k, a.n);
    let x = a.x.as_slice().map_err(|_| contiguous("x"))?;
    let w = a.w.as_slice().map_err(|_| contiguous("w"))?;
    let bias = match &a.bias {
        Some(b) => Some(b.as_slice().map_err(|_| contiguous("bias"))?),
        None => None,
    };
    let y = a.out.as_slice_mut().map_err(|_| contiguous("out"))?;
    py.detach(|| f(x, m, k, w, n, bias, y, &pool))
        .map_err(|e| binding_err(e.to_string()))
}

/// `out[:] = x @ w.T + bias` (like `torch.nn.functional.linear`) with float32 weights.
///
/// x: float32 [M, K], w: float32 [N, K] (an `nn.Linear` weight as is), bias: float32 [N] or
/// None, out: writable float32 [M, N]; all C-contiguous. A row's result does not depend on M,
/// on the other rows or on the thread count (bitwise).
#[pyfunction]
#[pyo3(signature = (x, w, bias, out))]
pub fn linear_f32(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    w: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let args = borrow_args::<f32>(x, w, "w", "float32", bias, out)?;
    compute(py, args, kern::linear_f32)
}

/// `out[:] = x @ w.T + bias` with bf16 weights given as their uint16 bit patterns
/// (`weight.view(torch.int16).numpy().view(np.uint16)`), widened to float32 in registers.
/// Bitwise equal to `linear_f32` on the widened weights.
#[pyfunction]
#[pyo3(signature = (x, w_bits, bias, out))]
pub fn linear_bf16w(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    w_bits: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let args = borrow_args::<u16>(x, w_bits, "w_bits", "uint16 (bf16 bits)", bias, out)?;
    compute(py, args, kern::linear_bf16w)
}

/// Most threads `set_kernel_threads` accepts (far above any core count it is meant for).
const MAX_KERNEL_THREADS: i64 = 1024;

/// Replaces the kernels' thread pool with one of `n` threads (the caller plus `n - 1`
/// workers). `spin_us`: how long an idle worker waits spinning for the next call before it
/// sleeps (default 200).
#[pyfunction]
#[pyo3(signature = (n, spin_us = None))]
pub fn set_kernel_threads(py: Python<'_>, n: i64, spin_us: Option<i64>) -> PyResult<()> {
    if !(1..=MAX_KERNEL_THREADS).contains(&n) {
        return Err(binding_err(format!(
            "set_kernel_threads: n must be in [1, {MAX_KERNEL_THREADS}], got {n}"
        )));
    }
    let threads = int_at_least("set_kernel_threads: n", n, 1)?;
    let spin = match spin_us {
        None => kern::DEFAULT_SPIN,
        Some(us) => {
            Duration::from_micros(int_at_least("set_kernel_threads: spin_us", us, 0)? as u64)
        }
    };
    let new =
        Arc::new(kern::Pool::with_spin(threads, spin).map_err(|e| binding_err(e.to_string()))?);
    let old = POOL
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .replace(new);
    // Joining the old workers may wait for a call in flight on another thread.
    py.detach(move || drop(old));
    Ok(())
}

/// Number of threads the kernels run on.
#[pyfunction]
pub fn kernel_threads() -> PyResult<usize> {
    Ok(pool()?.threads())
}

/// The instruction set the kernels use on this CPU: "avx2-fma" or "portable".
#[pyfunction]
pub fn kernel_isa() -> &'static str {
    kern::detected_isa().name()
}

/// Adds the kernel functions to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(linear_f32, m)?)?;
    m.add_function(wrap_pyfunction!(linear_bf16w, m)?)?;
    m.add_function(wrap_pyfunction!(set_kernel_threads, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_threads, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_isa, m)?)?;
    Ok(())
}

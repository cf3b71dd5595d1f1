//! `pack_beams` / `accept` bindings and their result classes.
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use redrafter_core as core;

use crate::convert::{borrow_i64, int_at_least, into_numpy, slice_of};
use crate::errors::to_py_err;

/// Packed prefix tree of a batch of beams (result of `pack_beams`).
///
/// Arrays: `tokens` [B, N], `depth` [B, N], `parent` [B, N] (root and padding: -1),
/// `mask` [B, N, N] bool (ancestor-or-self), `unpacker` [B, W, L], `num_nodes` [B].
#[pyclass(frozen, name = "Tree", module = "redrafter_rs._core")]
pub struct PyTree {
    #[pyo3(get)]
    batch: usize,
    #[pyo3(get)]
    width: usize,
    #[pyo3(get)]
    length: usize,
    #[pyo3(get)]
    max_nodes: usize,
    #[pyo3(get)]
    tokens: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    depth: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    parent: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    mask: Py<PyArrayDyn<bool>>,
    #[pyo3(get)]
    unpacker: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    num_nodes: Py<PyArrayDyn<i64>>,
}

#[pymethods]
impl PyTree {
    fn __repr__(&self) -> String {
        format!(
            "Tree(B={}, W={}, L={}, N={})",
            self.batch, self.width, self.length, self.max_nodes
        )
    }
}

impl PyTree {
    fn from_core(py: Python<'_>, t: core::Tree) -> PyResult<Self> {
        let (b, w, l, n) = (t.batch, t.width, t.length, t.max_nodes);
        Ok(Self {
            batch: b,
            width: w,
            length: l,
            max_nodes: n,
            tokens: into_numpy(py, t.tokens, &[b, n])?.unbind(),
            depth: into_numpy(py, t.depth, &[b, n])?.unbind(),
            parent: into_numpy(py, t.parent, &[b, n])?.unbind(),
            mask: into_numpy(py, t.mask, &[b, n, n])?.unbind(),
            unpacker: into_numpy(py, t.unpacker, &[b, w, l])?.unbind(),
            num_nodes: into_numpy(py, t.num_nodes, &[b])?.unbind(),
        })
    }
}

/// Result of `accept`: `best_beam` [B], `num_accepted` [B] (draft tokens, excluding the root),
/// `path` [B, L] accepted node indices (padded with -1), `tokens` [B, L] tokens to emit
/// (accepted drafts then the bonus token, padded with -1), `bonus` [B], and the KV-cache plan:
/// `kv_gather` [B, M] tree nodes to keep (M = longest accepted path), `kv_valid` [B, M],
/// `kept` [B] (= num_accepted + 1), `last_node` [B].
#[pyclass(frozen, name = "Acceptance", module = "redrafter_rs._core")]
pub struct PyAcceptance {
    #[pyo3(get)]
    best_beam: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    num_accepted: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    path: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    tokens: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    bonus: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    kv_gather: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    kv_valid: Py<PyArrayDyn<bool>>,
    #[pyo3(get)]
    kept: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    last_node: Py<PyArrayDyn<i64>>,
}

#[pymethods]
impl PyAcceptance {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Acceptance(num_accepted={}, best_beam={})",
            self.num_accepted
                .bind(py)
                .str()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            self.best_beam
                .bind(py)
                .str()
                .map(|s| s.to_string())
                .unwrap_or_default()
        )
    }
}

impl PyAcceptance {
    fn from_core(py: Python<'_>, a: core::Acceptance, p: core::KvPlan) -> PyResult<Self> {
        let (b, l, m) = (a.batch, a.length, p.width);
        Ok(Self {
            kv_gather: into_numpy(py, p.gather, &[b, m])?.unbind(),
            kv_valid: into_numpy(py, p.valid, &[b, m])?.unbind(),
            kept: into_numpy(py, p.kept, &[b])?.unbind(),
            last_node: into_numpy(py, p.last_node, &[b])?.unbind(),
            best_beam: into_numpy(py, a.best_beam, &[b])?.unbind(),
            num_accepted: into_numpy(py, a.num_accepted, &[b])?.unbind(),
            path: into_numpy(py, a.path, &[b, l])?.unbind(),
            tokens: into_numpy(py, a.tokens, &[b, l])?.unbind(),
            bonus: into_numpy(py, a.bonus, &[b])?.unbind(),
        })
    }
}

fn dims3(shape: &[usize]) -> [usize; 3] {
    [shape[0], shape[1], shape[2]]
}

/// Packs beams [B, W, L] (int64) into a prefix tree; beams sharing a prefix share nodes.
///
/// All beams of a row must start with the same root token. With `vocab_size` (>= 1), every
/// token must be in [0, vocab_size). A beam may end early: -1 from some depth >= 1 on. A tree
/// whose [B, N, N] mask would hold more than 2^30 elements (MAX_MASK_ELEMENTS) is refused.
#[pyfunction]
#[pyo3(signature = (beams, vocab_size = None))]
pub fn pack_beams(
    py: Python<'_>,
    beams: &Bound<'_, PyAny>,
    vocab_size: Option<i64>,
) -> PyResult<PyTree> {
    let vocab_size = vocab_size
        .map(|v| int_at_least("vocab_size", v, 1))
        .transpose()?;
    let arr = borrow_i64(beams, "beams", 3, "[B, W, L]")?;
    let shape = dims3(arr.shape());
    let beams = slice_of(&arr, "beams")?;
    // The GIL is released while the core works (a caller's other threads keep running).
    let tree = py
        .detach(|| core::pack_beams(beams, shape, vocab_size))
        .map_err(to_py_err)?;
    PyTree::from_core(py, tree)
}

/// Walks the tree following the target's choice [B, N] at each node (argmax or a sample) and
/// returns the accepted path, the tokens to emit, the bonus token and the KV-cache plan for
/// every row, in one call.
#[pyfunction]
pub fn accept(
    py: Python<'_>,
    tree: &PyTree,
    beams: &Bound<'_, PyAny>,
    choice: &Bound<'_, PyAny>,
) -> PyResult<PyAcceptance> {
    let tokens = tree.tokens.bind(py).readonly();
    let depth = tree.depth.bind(py).readonly();
    let parent = tree.parent.bind(py).readonly();
    let unpacker = tree.unpacker.bind(py).readonly();
    let num_nodes = tree.num_nodes.bind(py).readonly();
    let view = core::TreeView::new(
        tree.batch,
        tree.width,
        tree.length,
        tree.max_nodes,
        slice_of(&tokens, "tree.tokens")?,
        slice_of(&depth, "tree.depth")?,
        slice_of(&parent, "tree.parent")?,
        slice_of(&unpacker, "tree.unpacker")?,
        slice_of(&num_nodes, "tree.num_nodes")?,
    )
    .map_err(to_py_err)?;
    let beams_arr = borrow_i64(
        beams,
        "beams",
        3,
        "[B, W, L] (the beams the tree was packed from)",
    )?;
    let beam_shape = dims3(beams_arr.shape());
    let beams = slice_of(&beams_arr, "beams")?;
    let choice_arr = borrow_i64(choice, "choice", 2, "[B, N]")?;
    let cs = [choice_arr.shape()[0], choice_arr.shape()[1]];
    let choice = slice_of(&choice_arr, "choice")?;
    // The GIL is released while the core works (a caller's other threads keep running).
    let (acc, plan) = py
        .detach(|| -> core::Result<_> {
            view.check_beams(beams, beam_shape)?;
            let acc = core::accept(&view, choice, cs)?;
            let plan = core::plan_kv(&acc)?;
            Ok((acc, plan))
        })
        .map_err(to_py_err)?;
    PyAcceptance::from_core(py, acc, plan)
}

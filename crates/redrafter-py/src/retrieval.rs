//! Retrieval bindings: `SuffixAutomaton` (one per request), `Datastore` (shared, read-only),
//! `retrieve` (every row of a decode step in one call) and `RETRIEVAL_DEFAULTS`. The logic
//! (defaults, datastore cursors, candidate padding) is the core's; each call here converts
//! its arguments, runs one core function without the GIL, and moves the arrays out.
use std::collections::HashMap;
use std::path::PathBuf;

use numpy::{PyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use redrafter_core as core;

use crate::convert::{borrow_i64, count_cap, int, int_at_least, into_numpy, slice_of};
use crate::errors::{binding_err, to_py_err};

/// Defaults of `SuffixAutomaton.query` and `retrieve` (a request's own text).
const OWN: core::QueryParams = core::QueryParams::DEFAULT;
/// Defaults of `Datastore.query`.
const STORE: core::QueryParams = core::QueryParams::DATASTORE;

/// Registers the retrieval classes, `retrieve` and `RETRIEVAL_DEFAULTS`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySuffixAutomaton>()?;
    m.add_class::<PyDatastore>()?;
    m.add_class::<PyCandidates>()?;
    m.add_function(wrap_pyfunction!(retrieve, m)?)?;
    m.add("RETRIEVAL_DEFAULTS", defaults(m.py())?)
}

/// `RETRIEVAL_DEFAULTS`: the core's defaults by call, then by argument name.
fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let params = |p: core::QueryParams, names: &[&str]| -> PyResult<Bound<'_, PyDict>> {
        let d = PyDict::new(py);
        let values = [
            ("k", int(p.k)),
            ("length", int(p.length)),
            ("min_match", int(p.min_match)),
            ("count_cap", i64::from(p.count_cap)),
            ("max_levels", int(p.max_levels)),
        ];
        for (name, value) in values.into_iter().filter(|(n, _)| names.contains(n)) {
            d.set_item(name, value)?;
        }
        Ok(d)
    };
    let every = ["k", "length", "min_match", "count_cap", "max_levels"];
    let count = PyDict::new(py);
    count.set_item("cap", i64::from(core::UNCAPPED))?;
    let out = PyDict::new(py);
    out.set_item("query", params(OWN, &every)?)?;
    out.set_item("datastore_query", params(STORE, &every)?)?;
    out.set_item("count", count)?;
    out.set_item("draft", params(core::QueryParams::DRAFT, &every[2..])?)?;
    Ok(out)
}

/// Query parameters from the Python integers: each must be >= 0 (`count_cap` saturates at
/// 2^32 - 1), and `k * length` is bounded by `MAX_QUERY_TOKENS` (checked here first, so that
/// this error comes before any about the other arguments).
fn params(
    k: i64,
    length: i64,
    min_match: i64,
    cap: i64,
    max_levels: i64,
) -> PyResult<core::QueryParams> {
    let p = core::QueryParams {
        k: int_at_least("k", k, 0)?,
        length: int_at_least("length", length, 0)?,
        min_match: int_at_least("min_match", min_match, 0)?,
        count_cap: count_cap("count_cap", cap)?,
        max_levels: int_at_least("max_levels", max_levels, 0)?,
    };
    p.check().map_err(to_py_err)?;
    Ok(p)
}

/// Borrows a 1-d int64 array and runs `f` on its data without the GIL.
fn with_tokens<T: Send>(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    arg: &str,
    f: impl FnOnce(&[i64]) -> core::Result<T> + Send,
) -> PyResult<T> {
    let arr = borrow_i64(obj, arg, 1, "[T]")?;
    let tokens = slice_of(&arr, arg)?;
    py.detach(|| f(tokens)).map_err(to_py_err)
}

/// Retrieval candidates (see `SuffixAutomaton.query` and `retrieve`).
///
/// Single query: `tokens` [K', length] (padded with -1), `lengths`, `match_len`, `count` [K'],
/// `num` a 0-d array (K'). Batch (`retrieve`): `tokens` [B, K, length], the others [B, K]
/// (0 where a row has fewer candidates), `num` [B].
#[pyclass(frozen, name = "Candidates", module = "redrafter_rs._core")]
pub struct PyCandidates {
    #[pyo3(get)]
    tokens: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    lengths: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    match_len: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    count: Py<PyArrayDyn<i64>>,
    #[pyo3(get)]
    num: Py<PyArrayDyn<i64>>,
}

#[pymethods]
impl PyCandidates {
    fn __repr__(&self, py: Python<'_>) -> String {
        let shape = self.tokens.bind(py).shape().to_vec();
        format!("Candidates(tokens shape {shape:?})")
    }
}

impl PyCandidates {
    /// Moves the core's arrays into numpy arrays (no copy).
    fn new(py: Python<'_>, c: core::CandidateArrays) -> PyResult<Self> {
        let slots = c.slot_shape();
        let tokens = [&slots[..], &[c.length]].concat();
        let rows: Vec<usize> = c.batch.into_iter().collect();
        Ok(Self {
            tokens: into_numpy(py, c.tokens, &tokens)?.unbind(),
            lengths: into_numpy(py, c.lengths, &slots)?.unbind(),
            match_len: into_numpy(py, c.match_len, &slots)?.unbind(),
            count: into_numpy(py, c.count, &slots)?.unbind(),
            num: into_numpy(py, c.num, &rows)?.unbind(),
        })
    }
}

/// Incremental suffix automaton over one request's tokens (prompt, then generated tokens).
///
/// `extend` appends tokens (amortised O(1) each); `query` proposes continuations of the
/// text's end from its earlier occurrences, ranked by (match length, frequency).
#[pyclass(name = "SuffixAutomaton", module = "redrafter_rs._core")]
pub struct PySuffixAutomaton {
    /// The automaton and its datastore cursor.
    index: core::RequestIndex,
}

#[pymethods]
impl PySuffixAutomaton {
    #[new]
    #[pyo3(signature = (tokens = None))]
    fn new(py: Python<'_>, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let index = match tokens {
            None => core::RequestIndex::new(),
            Some(t) => with_tokens(py, t, "tokens", core::RequestIndex::from_tokens)?,
        };
        Ok(Self { index })
    }

    /// Appends tokens (int64 [T], all >= 0).
    fn extend(&mut self, py: Python<'_>, tokens: &Bound<'_, PyAny>) -> PyResult<()> {
        let index = &mut self.index;
        with_tokens(py, tokens, "tokens", |s| index.extend(s))
    }

    /// Up to `k` continuations of up to `length` tokens. Without `context`: of this text's own
    /// end (from its earlier occurrences, repeating periodically into the future); with
    /// `context` (int64 [T]): of that context's end, from this text. Every integer must be
    /// >= 0, and k * length at most MAX_QUERY_TOKENS (2^24). Defaults:
    /// RETRIEVAL_DEFAULTS["query"].
    #[pyo3(signature = (
        k = int(OWN.k),
        length = int(OWN.length),
        *,
        context = None,
        min_match = int(OWN.min_match),
        count_cap = i64::from(OWN.count_cap),
        max_levels = int(OWN.max_levels),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn query(
        &self,
        py: Python<'_>,
        k: i64,
        length: i64,
        context: Option<&Bound<'_, PyAny>>,
        min_match: i64,
        count_cap: i64,
        max_levels: i64,
    ) -> PyResult<PyCandidates> {
        let p = params(k, length, min_match, count_cap, max_levels)?;
        let index = &self.index;
        let found = match context {
            None => py
                .detach(|| index.query_packed(None, &p))
                .map_err(to_py_err)?,
            Some(c) => with_tokens(py, c, "context", |s| index.query_packed(Some(s), &p))?,
        };
        PyCandidates::new(py, found)
    }

    /// Occurrences of `pattern` (int64 [T]) in the text, at most `cap` (>= 0; default
    /// RETRIEVAL_DEFAULTS["count"]["cap"]).
    #[pyo3(signature = (pattern, cap = i64::from(core::UNCAPPED)))]
    fn count(&self, py: Python<'_>, pattern: &Bound<'_, PyAny>, cap: i64) -> PyResult<u32> {
        let cap = count_cap("cap", cap)?;
        let sam = self.index.automaton();
        with_tokens(py, pattern, "pattern", |s| Ok(sam.count(s, cap)))
    }

    /// The indexed tokens (a copy), int64 [T].
    fn tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
        let sam = self.index.automaton();
        into_numpy(py, sam.tokens().to_vec(), &[sam.len()])
    }

    #[getter]
    fn num_states(&self) -> usize {
        self.index.automaton().num_states()
    }

    fn __len__(&self) -> usize {
        self.index.automaton().len()
    }

    fn __repr__(&self) -> String {
        let sam = self.index.automaton();
        format!(
            "SuffixAutomaton(tokens={}, states={})",
            sam.len(),
            sam.num_states()
        )
    }
}

/// A shared, read-only retrieval datastore: a frozen suffix automaton over a token corpus,
/// saved in a versioned, checksummed binary file (see `redrafter-core`'s `datastore` module).
#[pyclass(frozen, name = "Datastore", module = "redrafter_rs._core")]
pub struct PyDatastore {
    inner: core::Datastore,
}

#[pymethods]
impl PyDatastore {
    /// Indexes a corpus (int64 [T]); negative ids separate documents.
    #[staticmethod]
    fn build(py: Python<'_>, tokens: &Bound<'_, PyAny>) -> PyResult<Self> {
        let inner = with_tokens(py, tokens, "tokens", core::Datastore::build)?;
        Ok(Self { inner })
    }

    /// Reads a datastore file; a missing, foreign, truncated or corrupt file raises
    /// `RedrafterError` naming the file and the problem.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py
            .detach(|| core::Datastore::load(&path))
            .map_err(to_py_err)?;
        Ok(Self { inner })
    }

    /// Writes the datastore file atomically.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save(&path)).map_err(to_py_err)
    }

    /// Up to `k` continuations of `context` (int64 [T]) from the corpus. Every integer must be
    /// >= 0, and k * length at most MAX_QUERY_TOKENS (2^24). Defaults:
    /// RETRIEVAL_DEFAULTS["datastore_query"].
    #[pyo3(signature = (
        context,
        k = int(STORE.k),
        length = int(STORE.length),
        *,
        min_match = int(STORE.min_match),
        count_cap = i64::from(STORE.count_cap),
        max_levels = int(STORE.max_levels),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn query(
        &self,
        py: Python<'_>,
        context: &Bound<'_, PyAny>,
        k: i64,
        length: i64,
        min_match: i64,
        count_cap: i64,
        max_levels: i64,
    ) -> PyResult<PyCandidates> {
        let p = params(k, length, min_match, count_cap, max_levels)?;
        let found = with_tokens(py, context, "context", |s| self.inner.query_packed(s, &p))?;
        PyCandidates::new(py, found)
    }

    /// Occurrences of `pattern` (int64 [T]) in the corpus, at most `cap` (>= 0; default
    /// RETRIEVAL_DEFAULTS["count"]["cap"]).
    #[pyo3(signature = (pattern, cap = i64::from(core::UNCAPPED)))]
    fn count(&self, py: Python<'_>, pattern: &Bound<'_, PyAny>, cap: i64) -> PyResult<u32> {
        let cap = count_cap("cap", cap)?;
        with_tokens(py, pattern, "pattern", |s| Ok(self.inner.count(s, cap)))
    }

    #[getter]
    fn num_tokens(&self) -> u64 {
        self.inner.num_tokens()
    }

    #[getter]
    fn num_docs(&self) -> u64 {
        self.inner.num_docs()
    }

    #[getter]
    fn num_states(&self) -> usize {
        self.inner.num_states()
    }

    fn __len__(&self) -> usize {
        self.inner.num_tokens() as usize
    }

    fn __repr__(&self) -> String {
        format!(
            "Datastore(tokens={}, docs={}, states={})",
            self.inner.num_tokens(),
            self.inner.num_docs(),
            self.inner.num_states()
        )
    }
}

/// Candidates for every row of a decode step in one call: row b continues `automata[b]`'s
/// text from its own earlier occurrences and, with `datastore`, from the corpus (a cursor per
/// automaton follows its new tokens, amortised O(1) each). Both lists are merged by (match
/// length, count), own text first on ties, duplicates dropped. Returns `Candidates` with
/// `tokens` [B, k, length]. Every integer must be >= 0, and B * k * length at most
/// MAX_QUERY_TOKENS (2^24). Defaults: RETRIEVAL_DEFAULTS["query"].
#[pyfunction]
#[pyo3(signature = (
    automata,
    k,
    length,
    *,
    datastore = None,
    min_match = int(OWN.min_match),
    count_cap = i64::from(OWN.count_cap),
    max_levels = int(OWN.max_levels),
))]
#[allow(clippy::too_many_arguments)]
pub fn retrieve(
    py: Python<'_>,
    automata: &Bound<'_, PyAny>,
    k: i64,
    length: i64,
    datastore: Option<&Bound<'_, PyDatastore>>,
    min_match: i64,
    count_cap: i64,
    max_levels: i64,
) -> PyResult<PyCandidates> {
    let p = params(k, length, min_match, count_cap, max_levels)?;
    // Each distinct automaton is borrowed once; `rows[b]` says which one row b continues (a
    // list may name one automaton several times).
    let mut held: Vec<PyRefMut<'_, PySuffixAutomaton>> = Vec::new();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut rows: Vec<usize> = Vec::new();
    for (b, obj) in automata.try_iter()?.enumerate() {
        let obj = obj?;
        let cell = obj
            .cast::<PySuffixAutomaton>()
            .map_err(|_| binding_err(format!("automata[{b}]: expected a SuffixAutomaton")))?;
        let key = cell.as_ptr() as usize;
        let slot = match seen.get(&key) {
            Some(&slot) => slot,
            None => {
                let row = cell
                    .try_borrow_mut()
                    .map_err(|_| binding_err(format!("automata[{b}]: in use elsewhere")))?;
                held.push(row);
                seen.insert(key, held.len() - 1);
                held.len() - 1
            }
        };
        rows.push(slot);
    }
    let mut requests: Vec<&mut core::RequestIndex> =
        held.iter_mut().map(|r| &mut r.index).collect();
    let store = datastore.map(|d| &d.get().inner);
    let found = py
        .detach(|| core::retrieve(&mut requests, &rows, store, &p))
        .map_err(to_py_err)?;
    PyCandidates::new(py, found)
}

//! Retrieval bindings: `SuffixAutomaton` (one per request), `Datastore` (shared, read-only)
//! and `retrieve` (every row of a decode step in one call).
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use numpy::{PyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use redrafter_core as core;

use crate::convert::{borrow_i64, count_cap, int_at_least, into_numpy, slice_of};
use crate::errors::{binding_err, to_py_err};

/// Distinguishes datastores, so a request's cursor is never used with another one.
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// Query parameters from the Python integers: each must be >= 0 (`count_cap` saturates at
/// 2^32 - 1), and `k * length` is bounded by `MAX_QUERY_TOKENS`.
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

/// `vec![value; len]` that raises `RedrafterError` instead of aborting when memory is short.
fn filled<T: Clone>(value: T, len: usize, what: &str) -> PyResult<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        binding_err(format!(
            "cannot allocate {what} ({len} elements): out of memory"
        ))
    })?;
    v.resize(len, value);
    Ok(v)
}

/// Borrows a 1-d int64 array and runs `f` on its data.
fn with_tokens<T>(
    obj: &Bound<'_, PyAny>,
    arg: &str,
    f: impl FnOnce(&[i64]) -> core::Result<T>,
) -> PyResult<T> {
    let arr = borrow_i64(obj, arg, 1, "[T]")?;
    f(slice_of(&arr, arg)?).map_err(to_py_err)
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

/// Flat candidate arrays for `rows` rows of `k` slots of `length` tokens.
struct Packed {
    tokens: Vec<i64>,
    lengths: Vec<i64>,
    match_len: Vec<i64>,
    count: Vec<i64>,
    num: Vec<i64>,
}

impl Packed {
    /// Room for `rows * k` candidates of `length` tokens: at most `MAX_QUERY_TOKENS` slots
    /// (counting `k` and `length` as at least 1), else `RedrafterError`.
    fn new(rows: usize, k: usize, length: usize) -> PyResult<Self> {
        let dims = [rows as u128, k.max(1) as u128, length.max(1) as u128];
        let requested = dims.iter().try_fold(1u128, |a, &d| a.checked_mul(d));
        let limit = core::MAX_QUERY_TOKENS;
        if requested.is_none_or(|n| n > limit as u128) {
            return Err(to_py_err(core::Error::TooLarge {
                arg: "k * length",
                what: format!(
                    "the candidates of {rows} rows, k = {k} candidates of length = {length} tokens"
                ),
                requested,
                limit,
                limit_name: "MAX_QUERY_TOKENS",
            }));
        }
        // The bound above keeps every product below 2^24.
        let slots = rows * k;
        Ok(Self {
            tokens: filled(-1, slots * length, "the candidate tokens")?,
            lengths: filled(0, slots, "the candidate lengths")?,
            match_len: filled(0, slots, "the candidate match lengths")?,
            count: filled(0, slots, "the candidate counts")?,
            num: filled(0, rows, "the candidate numbers")?,
        })
    }

    fn put(&mut self, row: usize, k: usize, length: usize, cands: &[core::Candidate]) {
        for (j, c) in cands.iter().take(k).enumerate() {
            let slot = row * k + j;
            let n = c.tokens.len().min(length);
            self.tokens[slot * length..slot * length + n].copy_from_slice(&c.tokens[..n]);
            self.lengths[slot] = n as i64;
            self.match_len[slot] = c.match_len as i64;
            self.count[slot] = i64::from(c.count);
        }
        self.num[row] = cands.len().min(k) as i64;
    }

    fn into_py(self, py: Python<'_>, dims: &[usize], length: usize) -> PyResult<PyCandidates> {
        let mut token_dims = dims.to_vec();
        token_dims.push(length);
        Ok(PyCandidates {
            tokens: into_numpy(py, self.tokens, &token_dims)?.unbind(),
            lengths: into_numpy(py, self.lengths, dims)?.unbind(),
            match_len: into_numpy(py, self.match_len, dims)?.unbind(),
            count: into_numpy(py, self.count, dims)?.unbind(),
            num: into_numpy(py, self.num, &dims[..dims.len() - 1])?.unbind(),
        })
    }
}

/// One query's candidates as a `Candidates` with K' = the number found.
fn single(py: Python<'_>, cands: &[core::Candidate], length: usize) -> PyResult<PyCandidates> {
    let mut packed = Packed::new(1, cands.len(), length)?;
    packed.put(0, cands.len(), length, cands);
    packed.into_py(py, &[cands.len()], length)
}

/// Incremental suffix automaton over one request's tokens (prompt, then generated tokens).
///
/// `extend` appends tokens (amortised O(1) each); `query` proposes continuations of the
/// text's end from its earlier occurrences, ranked by (match length, frequency).
#[pyclass(name = "SuffixAutomaton", module = "redrafter_rs._core")]
pub struct PySuffixAutomaton {
    sam: core::SuffixAutomaton,
    /// Datastore cursor: (datastore id, cursor, tokens of this text fed to it).
    store: Option<(u64, core::Cursor, usize)>,
}

#[pymethods]
impl PySuffixAutomaton {
    #[new]
    #[pyo3(signature = (tokens = None))]
    fn new(tokens: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let mut sam = core::SuffixAutomaton::new();
        if let Some(t) = tokens {
            with_tokens(t, "tokens", |s| sam.extend(s))?;
        }
        Ok(Self { sam, store: None })
    }

    /// Appends tokens (int64 [T], all >= 0).
    fn extend(&mut self, tokens: &Bound<'_, PyAny>) -> PyResult<()> {
        let sam = &mut self.sam;
        with_tokens(tokens, "tokens", |s| sam.extend(s))
    }

    /// Up to `k` continuations of up to `length` tokens. Without `context`: of this text's own
    /// end (from its earlier occurrences, repeating periodically into the future); with
    /// `context` (int64 [T]): of that context's end, from this text. Every integer must be
    /// >= 0, and k * length at most MAX_QUERY_TOKENS (2^24).
    #[pyo3(signature = (k = 4, length = 4, *, context = None, min_match = 1, count_cap = 16, max_levels = 8))]
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
        let cands = match context {
            None => self.sam.query(&p).map_err(to_py_err)?,
            Some(c) => with_tokens(c, "context", |s| self.sam.query_context(s, &p))?,
        };
        single(py, &cands, p.length)
    }

    /// Occurrences of `pattern` (int64 [T]) in the text, at most `cap` (>= 0).
    #[pyo3(signature = (pattern, cap = i64::from(u32::MAX)))]
    fn count(&self, pattern: &Bound<'_, PyAny>, cap: i64) -> PyResult<u32> {
        let cap = count_cap("cap", cap)?;
        with_tokens(pattern, "pattern", |s| Ok(self.sam.count(s, cap)))
    }

    /// The indexed tokens (a copy), int64 [T].
    fn tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
        into_numpy(py, self.sam.tokens().to_vec(), &[self.sam.len()])
    }

    #[getter]
    fn num_states(&self) -> usize {
        self.sam.num_states()
    }

    fn __len__(&self) -> usize {
        self.sam.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "SuffixAutomaton(tokens={}, states={})",
            self.sam.len(),
            self.sam.num_states()
        )
    }
}

/// A shared, read-only retrieval datastore: a frozen suffix automaton over a token corpus,
/// saved in a versioned, checksummed binary file (see `redrafter-core`'s `datastore` module).
#[pyclass(frozen, name = "Datastore", module = "redrafter_rs._core")]
pub struct PyDatastore {
    inner: core::Datastore,
    id: u64,
}

impl PyDatastore {
    fn wrap(inner: core::Datastore) -> Self {
        Self {
            inner,
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
        }
    }
}

#[pymethods]
impl PyDatastore {
    /// Indexes a corpus (int64 [T]); negative ids separate documents.
    #[staticmethod]
    fn build(py: Python<'_>, tokens: &Bound<'_, PyAny>) -> PyResult<Self> {
        let arr = borrow_i64(tokens, "tokens", 1, "[T]")?;
        let data = slice_of(&arr, "tokens")?;
        let inner = py
            .detach(|| core::Datastore::build(data))
            .map_err(to_py_err)?;
        Ok(Self::wrap(inner))
    }

    /// Reads a datastore file; a missing, foreign, truncated or corrupt file raises
    /// `RedrafterError` naming the file and the problem.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py
            .detach(|| core::Datastore::load(&path))
            .map_err(to_py_err)?;
        Ok(Self::wrap(inner))
    }

    /// Writes the datastore file atomically.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save(&path)).map_err(to_py_err)
    }

    /// Up to `k` continuations of `context` (int64 [T]) from the corpus. Every integer must be
    /// >= 0, and k * length at most MAX_QUERY_TOKENS (2^24).
    #[pyo3(signature = (context, k = 4, length = 4, *, min_match = 1, count_cap = i64::from(u32::MAX), max_levels = 8))]
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
        let cands = with_tokens(context, "context", |s| self.inner.query(s, &p))?;
        single(py, &cands, p.length)
    }

    /// Occurrences of `pattern` (int64 [T]) in the corpus, at most `cap` (>= 0).
    #[pyo3(signature = (pattern, cap = i64::from(u32::MAX)))]
    fn count(&self, pattern: &Bound<'_, PyAny>, cap: i64) -> PyResult<u32> {
        let cap = count_cap("cap", cap)?;
        with_tokens(pattern, "pattern", |s| Ok(self.inner.count(s, cap)))
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
/// MAX_QUERY_TOKENS (2^24).
#[pyfunction]
#[pyo3(signature = (automata, k, length, *, datastore = None, min_match = 1, count_cap = 16, max_levels = 8))]
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
    let (k, length) = (p.k, p.length);
    let rows: Vec<Bound<'_, PyAny>> = automata.try_iter()?.collect::<PyResult<_>>()?;
    let store = datastore.map(|d| d.get());
    let mut packed = Packed::new(rows.len(), k, length)?;
    for (b, obj) in rows.iter().enumerate() {
        let cell = obj
            .cast::<PySuffixAutomaton>()
            .map_err(|_| binding_err(format!("automata[{b}]: expected a SuffixAutomaton")))?;
        let mut row = cell
            .try_borrow_mut()
            .map_err(|_| binding_err(format!("automata[{b}]: in use elsewhere")))?;
        let own = row.sam.query(&p).map_err(to_py_err)?;
        let cands = match store {
            None => own,
            Some(ds) => {
                let found = row.store_query(ds, &p)?;
                core::merge_candidates(vec![own, found], k)
            }
        };
        packed.put(b, k, length, &cands);
    }
    packed.into_py(py, &[rows.len(), k], length)
}

impl PySuffixAutomaton {
    /// Catches this text's datastore cursor up with the text, then queries at it.
    fn store_query(
        &mut self,
        ds: &PyDatastore,
        p: &core::QueryParams,
    ) -> PyResult<Vec<core::Candidate>> {
        let n = self.sam.len();
        let (mut cursor, mut fed) = match self.store {
            Some((id, c, fed)) if id == ds.id && fed <= n => (c, fed),
            _ => (core::Cursor::default(), 0),
        };
        let new = &self.sam.tokens()[fed..];
        ds.inner.advance(&mut cursor, new).map_err(to_py_err)?;
        fed = n;
        self.store = Some((ds.id, cursor, fed));
        ds.inner.query_at(&cursor, p).map_err(to_py_err)
    }
}

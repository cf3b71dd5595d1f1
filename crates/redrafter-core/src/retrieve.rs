//! One decode step of retrieval: a request's text and its place in a datastore
//! ([`RequestIndex`]), every row of a batch in one call ([`retrieve`]), and candidate lists
//! packed into padded flat arrays ([`CandidateArrays`]) that a binding moves out as they are.
//!
//! ```
//! use redrafter_core::{retrieve, Datastore, QueryParams, RequestIndex};
//!
//! let store = Datastore::build(&[1, 2, 3, 4, -1, 8, 9, 5])?;
//! let mut requests = vec![RequestIndex::from_tokens(&[5, 6, 7, 5, 6])?, RequestIndex::new()];
//! requests[1].extend(&[0, 1, 2])?;
//! let p = QueryParams { k: 2, length: 3, ..QueryParams::DEFAULT };
//! // rows name requests: a request may fill several rows.
//! let c = retrieve(&mut requests, &[0, 1, 0], Some(&store), &p)?;
//! assert_eq!((c.batch, c.k, c.length), (Some(3), 2, 3));
//! assert_eq!(c.num, [1, 1, 1]);
//! assert_eq!(c.tokens[..6], [7, 5, 6, -1, -1, -1]); // row 0: its own text, periodic
//! assert_eq!(c.tokens[6..9], [3, 4, -1]); // row 1: the datastore, up to the separator
//! assert_eq!(c.lengths, [3, 0, 2, 0, 3, 0]);
//! # Ok::<(), redrafter_core::Error>(())
//! ```

use std::borrow::BorrowMut;

use crate::datastore::{Cursor, Datastore};
use crate::error::{check_limit, try_filled, Error, Result};
use crate::sam::{merge_candidates, Candidate, QueryParams, SuffixAutomaton, MAX_QUERY_TOKENS};

/// Candidates packed into flat, padded arrays.
///
/// One query ([`CandidateArrays::single`]): `batch` is `None`, `k` is the number found `K'`;
/// `tokens` is `[K', length]`, `lengths` / `match_len` / `count` are `[K']`, `num` holds `K'`
/// (a 0-d array). A batch ([`retrieve`]): `batch` is `Some(B)`; `tokens` is `[B, k, length]`,
/// the others `[B, k]`, `num` is `[B]`. Tokens past a candidate's end are -1; slots past a
/// row's `num` candidates hold -1 tokens and zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateArrays {
    /// Rows of a batch; `None` for one query.
    pub batch: Option<usize>,
    /// Candidate slots per row.
    pub k: usize,
    /// Tokens per slot.
    pub length: usize,
    /// Candidate tokens, padded with -1.
    pub tokens: Vec<i64>,
    /// Real tokens per candidate.
    pub lengths: Vec<i64>,
    /// Length of the context suffix each candidate continues.
    pub match_len: Vec<i64>,
    /// Occurrences of (matched suffix + first token), capped at `count_cap`.
    pub count: Vec<i64>,
    /// Candidates per row.
    pub num: Vec<i64>,
}

impl CandidateArrays {
    /// One query's candidates, `K'` = `cands.len()` slots of `length` tokens (longer candidates
    /// are cut).
    ///
    /// Errors: [`Error::TooLarge`] (naming `"k * length"`) when `K' * length` exceeds
    /// [`MAX_QUERY_TOKENS`], [`Error::OutOfMemory`] when the arrays cannot be allocated.
    pub fn single(cands: &[Candidate], length: usize) -> Result<Self> {
        let mut out = Self::padded(1, cands.len(), length)?;
        out.put(0, cands);
        Ok(out)
    }

    /// The shape of `lengths`, `match_len` and `count`: `[K']` or `[B, k]` (`tokens` adds
    /// `length`, `num` drops the last dimension).
    pub fn slot_shape(&self) -> Vec<usize> {
        self.batch.into_iter().chain([self.k]).collect()
    }

    /// A batch of `rows` rows of `k` empty slots of `length` tokens.
    fn batch(rows: usize, k: usize, length: usize) -> Result<Self> {
        let mut out = Self::padded(rows, k, length)?;
        out.batch = Some(rows);
        Ok(out)
    }

    /// Room for `rows * k` candidates of `length` tokens: at most [`MAX_QUERY_TOKENS`] slots
    /// (counting `k` and `length` as at least 1).
    fn padded(rows: usize, k: usize, length: usize) -> Result<Self> {
        check_limit(
            "k * length",
            || {
                format!(
                    "the candidates of {rows} rows, k = {k} candidates of length = {length} tokens"
                )
            },
            &[rows, k.max(1), length.max(1)],
            MAX_QUERY_TOKENS,
            "MAX_QUERY_TOKENS",
        )?;
        // Below the limit, `rows * k` and `rows * k * length` cannot overflow.
        let slots = rows * k;
        let arg = "k * length";
        Ok(Self {
            batch: None,
            k,
            length,
            tokens: try_filled(arg, "the candidate tokens", -1, slots * length)?,
            lengths: try_filled(arg, "the candidate lengths", 0, slots)?,
            match_len: try_filled(arg, "the candidate match lengths", 0, slots)?,
            count: try_filled(arg, "the candidate counts", 0, slots)?,
            num: try_filled(arg, "the candidate numbers", 0, rows)?,
        })
    }

    /// Fills row `row` (< the rows allocated) with up to `k` of `cands`.
    fn put(&mut self, row: usize, cands: &[Candidate]) {
        let (k, length) = (self.k, self.length);
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
}

/// Where a request's text stands in one datastore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoreCursor {
    /// The datastore's identity.
    store: u64,
    /// The text's longest suffix that occurs in the datastore.
    cursor: Cursor,
    /// Tokens of the text the cursor has followed.
    fed: usize,
}

/// A request's retrieval index: a [`SuffixAutomaton`] over its text (prompt, then generated
/// tokens) and a cursor that follows the text in the last [`Datastore`] it was queried with,
/// so that each query feeds the datastore only the tokens added since (amortised `O(1)` each).
/// Querying another datastore starts a new cursor from the text's beginning.
#[derive(Debug, Clone, Default)]
pub struct RequestIndex {
    sam: SuffixAutomaton,
    store: Option<StoreCursor>,
}

impl RequestIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An index over `tokens` (all >= 0).
    pub fn from_tokens(tokens: &[i64]) -> Result<Self> {
        let mut index = Self::new();
        index.extend(tokens)?;
        Ok(index)
    }

    /// Appends `tokens`; see [`SuffixAutomaton::extend`] (the index is unchanged on error).
    pub fn extend(&mut self, tokens: &[i64]) -> Result<()> {
        self.sam.extend(tokens)
    }

    /// The automaton over the text.
    pub fn automaton(&self) -> &SuffixAutomaton {
        &self.sam
    }

    /// One query, packed ([`CandidateArrays::single`]): continuations of the text's own end
    /// ([`SuffixAutomaton::query`]) or, with `context`, of that context's end from the text
    /// ([`SuffixAutomaton::query_context`]).
    ///
    /// Errors: those of the query.
    pub fn query_packed(
        &self,
        context: Option<&[i64]>,
        params: &QueryParams,
    ) -> Result<CandidateArrays> {
        let cands = match context {
            None => self.sam.query(params)?,
            Some(c) => self.sam.query_context(c, params)?,
        };
        CandidateArrays::single(&cands, params.length)
    }

    /// Continuations of the text's own end from its earlier occurrences and, with `store`,
    /// from the datastore at this text's cursor (caught up with the text first); both lists
    /// merged by [`merge_candidates`] (own text first on ties).
    ///
    /// Errors: [`Error::TooLarge`] when `k * length` exceeds [`MAX_QUERY_TOKENS`].
    pub fn candidates(
        &mut self,
        store: Option<&Datastore>,
        params: &QueryParams,
    ) -> Result<Vec<Candidate>> {
        let own = self.sam.query(params)?;
        match store {
            None => Ok(own),
            Some(ds) => {
                let found = self.store_query(ds, params)?;
                Ok(merge_candidates(vec![own, found], params.k))
            }
        }
    }

    /// Catches this text's cursor in `ds` up with the text, then queries at it.
    fn store_query(&mut self, ds: &Datastore, params: &QueryParams) -> Result<Vec<Candidate>> {
        let text = self.sam.tokens();
        let (mut cursor, fed) = match self.store {
            Some(s) if s.store == ds.id() && s.fed <= text.len() => (s.cursor, s.fed),
            _ => (Cursor::default(), 0),
        };
        ds.advance(&mut cursor, &text[fed..])?;
        self.store = Some(StoreCursor {
            store: ds.id(),
            cursor,
            fed: text.len(),
        });
        ds.query_at(&cursor, params)
    }
}

impl Datastore {
    /// One query of the corpus, packed ([`CandidateArrays::single`]); see
    /// [`Datastore::query`].
    pub fn query_packed(&self, context: &[i64], params: &QueryParams) -> Result<CandidateArrays> {
        CandidateArrays::single(&self.query(context, params)?, params.length)
    }
}

/// Candidates for every row of a decode step: row `b` holds
/// [`RequestIndex::candidates`] of `requests[rows[b]]` (a request may fill several rows; its
/// cursor is caught up once), packed as a batch of `rows.len()` rows of `k` slots.
///
/// Errors: [`Error::TooLarge`] (naming `"k * length"`) when `k * length`, or
/// `rows.len() * k * length` for the output, exceeds [`MAX_QUERY_TOKENS`];
/// [`Error::Inconsistent`] (naming `"rows"`) for a row naming no request.
pub fn retrieve<R: BorrowMut<RequestIndex>>(
    requests: &mut [R],
    rows: &[usize],
    store: Option<&Datastore>,
    params: &QueryParams,
) -> Result<CandidateArrays> {
    params.check()?;
    if let Some((b, &r)) = rows.iter().enumerate().find(|&(_, &r)| r >= requests.len()) {
        return Err(Error::Inconsistent {
            arg: "rows",
            message: format!("rows[{b}] = {r}, but there are {} requests", requests.len()),
        });
    }
    let mut out = CandidateArrays::batch(rows.len(), params.k, params.length)?;
    for (b, &r) in rows.iter().enumerate() {
        let cands = requests[r].borrow_mut().candidates(store, params)?;
        out.put(b, &cands);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: usize, length: usize) -> QueryParams {
        QueryParams {
            k,
            length,
            ..QueryParams::DEFAULT
        }
    }

    fn cand(tokens: &[i64], match_len: usize, count: u32) -> Candidate {
        Candidate {
            tokens: tokens.to_vec(),
            match_len,
            count,
        }
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let d = QueryParams::default();
        assert_eq!(d, QueryParams::DEFAULT);
        assert_eq!(
            (d.k, d.length, d.min_match, d.count_cap, d.max_levels),
            (4, 4, 1, 16, 8)
        );
        let s = QueryParams::DATASTORE;
        assert_eq!(
            s,
            QueryParams {
                count_cap: u32::MAX,
                ..d
            }
        );
        assert_eq!(QueryParams::DRAFT, QueryParams { min_match: 2, ..d });
    }

    #[test]
    fn single_pads_and_cuts() {
        let cands = [cand(&[5, 6, 7], 2, 3), cand(&[8], 1, 1)];
        let a = CandidateArrays::single(&cands, 2).unwrap();
        assert_eq!((a.batch, a.k, a.length), (None, 2, 2));
        assert_eq!(a.slot_shape(), [2]);
        assert_eq!(a.tokens, [5, 6, 8, -1]);
        assert_eq!(a.lengths, [2, 1]);
        assert_eq!(a.match_len, [2, 1]);
        assert_eq!(a.count, [3, 1]);
        assert_eq!(a.num, [2]);
        let none = CandidateArrays::single(&[], 4).unwrap();
        assert_eq!(
            (none.tokens.len(), none.lengths.len(), none.num.clone()),
            (0, 0, vec![0])
        );
        assert_eq!(none.slot_shape(), [0]);
    }

    #[test]
    fn batch_rows_are_padded_and_bounded() {
        let mut a = CandidateArrays::batch(3, 2, 3).unwrap();
        a.put(
            1,
            &[
                cand(&[1, 2, 3, 4], 5, 6),
                cand(&[7], 1, 1),
                cand(&[9], 1, 1),
            ],
        );
        assert_eq!(a.slot_shape(), [3, 2]);
        assert_eq!(a.num, [0, 2, 0]);
        assert_eq!(a.tokens[6..12], [1, 2, 3, 7, -1, -1]);
        assert!(a.tokens[..6]
            .iter()
            .chain(&a.tokens[12..])
            .all(|&t| t == -1));
        assert_eq!(a.lengths, [0, 0, 3, 1, 0, 0]);
        assert_eq!(a.match_len, [0, 0, 5, 1, 0, 0]);
        assert_eq!(a.count, [0, 0, 6, 1, 0, 0]);
        // zero-sized dimensions
        let empty = CandidateArrays::batch(0, 4, 4).unwrap();
        assert_eq!((empty.tokens.len(), empty.num.len()), (0, 0));
        let no_slots = CandidateArrays::batch(2, 0, 4).unwrap();
        assert_eq!(
            (no_slots.tokens.len(), no_slots.num.clone()),
            (0, vec![0, 0])
        );
    }

    #[test]
    fn oversized_batches_name_rows_and_the_limit() {
        let e = CandidateArrays::batch(3, 4, 1 << 21).unwrap_err();
        assert_eq!(
            e.to_string(),
            "k * length: the candidates of 3 rows, k = 4 candidates of length = 2097152 tokens \
             would hold 25165824 elements, more than the limit of 16777216 (MAX_QUERY_TOKENS)"
        );
        let huge = CandidateArrays::batch(usize::MAX, usize::MAX, usize::MAX).unwrap_err();
        assert!(
            huge.to_string().contains("more than 2^128 elements"),
            "{huge}"
        );
        // k and length count as at least 1
        assert!(CandidateArrays::batch(MAX_QUERY_TOKENS + 1, 0, 0).is_err());
        assert!(CandidateArrays::batch(1, MAX_QUERY_TOKENS + 1, 0).is_err());
        assert!(CandidateArrays::batch(2, 1 << 12, 1 << 11).is_ok());
        let mut requests = vec![RequestIndex::new(); 3];
        let e = retrieve(&mut requests, &[0, 1, 2], None, &p(4, 1 << 21)).unwrap_err();
        assert!(e.to_string().contains("3 rows"), "{e}");
        // one query's own bound comes first
        let e = retrieve(&mut requests, &[], None, &p(1, MAX_QUERY_TOKENS + 1)).unwrap_err();
        assert!(e.to_string().contains("a query for k = 1"), "{e}");
    }

    #[test]
    fn request_query_packed_matches_the_automaton() {
        let text = [1, 2, 3, 1, 2, 3, 1, 2];
        let index = RequestIndex::from_tokens(&text).unwrap();
        let sam = SuffixAutomaton::from_tokens(&text).unwrap();
        let params = p(2, 5);
        let own = index.query_packed(None, &params).unwrap();
        let want = sam.query(&params).unwrap();
        assert_eq!(own, CandidateArrays::single(&want, 5).unwrap());
        assert_eq!(own.tokens[..5], [3, 1, 2, 3, 1]);
        let ctx = index.query_packed(Some(&[9, 3]), &params).unwrap();
        let want = sam.query_context(&[9, 3], &params).unwrap();
        assert_eq!(ctx, CandidateArrays::single(&want, 5).unwrap());
        let e = index.query_packed(Some(&[-2]), &params).unwrap_err();
        assert!(matches!(e, Error::TokenRange { arg: "context", .. }), "{e}");
    }

    #[test]
    fn cursor_follows_the_text_incrementally() {
        let ds = Datastore::build(&[4, 5, 6, 7, -1, 5, 6, 9]).unwrap();
        let params = p(3, 2);
        let mut index = RequestIndex::new();
        assert!(index.candidates(Some(&ds), &params).unwrap().is_empty());
        let c = index.store.unwrap();
        assert_eq!((c.store, c.fed, c.cursor), (ds.id(), 0, Cursor::default()));
        index.extend(&[1, 5]).unwrap();
        let got = index.candidates(Some(&ds), &params).unwrap();
        assert_eq!(got, ds.query(&[1, 5], &params).unwrap());
        assert_eq!(index.store.unwrap().fed, 2);
        index.extend(&[6]).unwrap();
        let got = index.candidates(Some(&ds), &params).unwrap();
        assert_eq!(got, ds.query(&[1, 5, 6], &params).unwrap());
        let c = index.store.unwrap();
        assert_eq!((c.fed, c.cursor.matched()), (3, 2));
        // a query with nothing new leaves the cursor where it is
        index.candidates(Some(&ds), &params).unwrap();
        assert_eq!(index.store, Some(c));
        // without a datastore the cursor is kept for later
        index.candidates(None, &params).unwrap();
        assert_eq!(index.store, Some(c));
    }

    #[test]
    fn another_datastore_restarts_the_cursor() {
        let a = Datastore::build(&[1, 2, 3]).unwrap();
        let b = Datastore::build(&[1, 2, 3]).unwrap();
        assert_eq!(a, b); // same contents ...
        assert_ne!(a.id(), b.id()); // ... different datastores
        assert_eq!(a.clone().id(), a.id());
        let params = p(2, 2);
        let mut index = RequestIndex::from_tokens(&[1, 2]).unwrap();
        index.candidates(Some(&a), &params).unwrap();
        assert_eq!(index.store.unwrap().store, a.id());
        index.extend(&[3, 1]).unwrap();
        let got = index.candidates(Some(&b), &params).unwrap();
        assert_eq!(got, b.query(&[1, 2, 3, 1], &params).unwrap());
        let c = index.store.unwrap();
        assert_eq!((c.store, c.fed, c.cursor.matched()), (b.id(), 4, 1));
        // A stale cursor (fed past the text) is never trusted.
        index.store = Some(StoreCursor { fed: 99, ..c });
        let again = index.candidates(Some(&b), &params).unwrap();
        assert_eq!(again, got);
        assert_eq!(index.store, Some(c));
    }

    #[test]
    fn candidates_merge_own_text_and_datastore() {
        // own text: "7 8" followed by 9; corpus: "7 8" followed by 10 (twice)
        let ds = Datastore::build(&[7, 8, 10, -1, 7, 8, 10]).unwrap();
        let mut index = RequestIndex::from_tokens(&[7, 8, 9, 7, 8]).unwrap();
        let params = p(3, 1);
        let got = index.candidates(Some(&ds), &params).unwrap();
        let own = index.automaton().query(&params).unwrap();
        let store = ds.query(&[7, 8, 9, 7, 8], &params).unwrap();
        assert_eq!(got, merge_candidates(vec![own, store], 3));
        let firsts: Vec<i64> = got.iter().map(|c| c.tokens[0]).collect();
        assert_eq!(firsts, [10, 9]); // (match length, count): 2 occurrences beat 1
    }

    #[test]
    fn retrieve_matches_row_by_row_queries() {
        let ds = Datastore::build(&[1, 2, 3, 4, -1, 5, 6, 7]).unwrap();
        let texts: [&[i64]; 4] = [&[1, 2, 3, 1, 2], &[4, 4, 4, 4], &[], &[9, 5, 6]];
        let params = p(3, 4);
        for store in [None, Some(&ds)] {
            let mut requests: Vec<RequestIndex> = texts
                .iter()
                .map(|t| RequestIndex::from_tokens(t).unwrap())
                .collect();
            let rows = [0, 1, 2, 3];
            let batch = retrieve(&mut requests, &rows, store, &params).unwrap();
            assert_eq!((batch.batch, batch.k, batch.length), (Some(4), 3, 4));
            assert_eq!(batch.slot_shape(), [4, 3]);
            for (b, t) in texts.iter().enumerate() {
                let mut alone = RequestIndex::from_tokens(t).unwrap();
                let cands = alone.candidates(store, &params).unwrap();
                let one = CandidateArrays::single(&cands, 4).unwrap();
                let n = cands.len();
                assert_eq!(batch.num[b], n as i64);
                assert_eq!(batch.tokens[b * 12..b * 12 + n * 4], one.tokens[..]);
                assert_eq!(batch.lengths[b * 3..b * 3 + n], one.lengths[..]);
                assert_eq!(batch.match_len[b * 3..b * 3 + n], one.match_len[..]);
                assert_eq!(batch.count[b * 3..b * 3 + n], one.count[..]);
                assert!(batch.tokens[b * 12 + n * 4..(b + 1) * 12]
                    .iter()
                    .all(|&t| t == -1));
            }
        }
    }

    #[test]
    fn retrieve_rows_may_repeat_a_request() {
        let ds = Datastore::build(&[1, 2, 3]).unwrap();
        let mut requests = [RequestIndex::from_tokens(&[0, 1, 2]).unwrap()];
        let params = p(2, 2);
        let once = retrieve(&mut requests, &[0], Some(&ds), &params).unwrap();
        let twice = retrieve(&mut requests, &[0, 0], Some(&ds), &params).unwrap();
        assert_eq!(twice.num, [once.num[0]; 2]);
        assert_eq!(twice.tokens, [once.tokens.clone(), once.tokens].concat());
        // by `&mut`, as a binding holds them
        let mut a = RequestIndex::from_tokens(&[3, 3]).unwrap();
        let mut refs = [&mut a];
        assert_eq!(retrieve(&mut refs, &[0], None, &params).unwrap().num, [1]);
    }

    #[test]
    fn retrieve_refuses_rows_naming_no_request() {
        let mut requests = [RequestIndex::new(), RequestIndex::new()];
        let e = retrieve(&mut requests, &[1, 2], None, &p(1, 1)).unwrap_err();
        assert_eq!(
            e,
            Error::Inconsistent {
                arg: "rows",
                message: "rows[1] = 2, but there are 2 requests".into()
            }
        );
        let mut none: [RequestIndex; 0] = [];
        assert!(retrieve(&mut none, &[0], None, &p(1, 1)).is_err());
        assert_eq!(retrieve(&mut none, &[], None, &p(1, 1)).unwrap().num, []);
    }

    #[test]
    fn datastore_query_packed_matches_query() {
        let ds = Datastore::build(&[1, 2, 3, 4, -1, 1, 2, 5]).unwrap();
        let params = p(3, 3);
        let got = ds.query_packed(&[0, 1, 2], &params).unwrap();
        let want = ds.query(&[0, 1, 2], &params).unwrap();
        assert_eq!(got, CandidateArrays::single(&want, 3).unwrap());
        assert_eq!(got.tokens, [3, 4, -1, 5, -1, -1]);
        assert!(ds.query_packed(&[-1], &params).is_err());
        assert!(ds.query_packed(&[1], &p(2, MAX_QUERY_TOKENS)).is_err());
    }
}

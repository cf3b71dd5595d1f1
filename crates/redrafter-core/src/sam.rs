//! Incremental suffix automaton over token ids: retrieval drafts (SAM-Decoding style).
//!
//! A [`SuffixAutomaton`] holds every substring of a token sequence (a request's prompt and the
//! tokens generated so far). [`SuffixAutomaton::extend`] appends tokens in amortised `O(1)`
//! each (Blumer et al. / Crochemore's online construction; transitions live in one hash table
//! keyed by `(state, token)`, so the alphabet size does not matter). [`SuffixAutomaton::query`]
//! finds the longest suffix of the text that also occurs earlier and proposes what followed
//! those earlier occurrences as draft continuations.
//!
//! # Query rule (shared with the frozen [`crate::Datastore`])
//!
//! 1. Match: the longest suffix `s` of the context that occurs in the indexed text with at
//!    least one token after it (for [`SuffixAutomaton::query`]: the longest suffix of the text
//!    that also ends earlier). `m = |s|`; nothing is proposed when `m < min_match`.
//! 2. Level: all suffixes of `s` that occur exactly where `s` occurs form one automaton state.
//!    Its continuations `s·c` are ranked by frequency, then by first occurrence:
//!    `(count(s·c) desc, first_end(s·c) asc)` (`count` capped at `count_cap`).
//! 3. Each continuation token `c` not proposed yet starts a candidate, extended greedily with
//!    the most frequent next token under the same ranking until `length` tokens or until the
//!    text offers no continuation. For a query of the automaton's own text, a continuation that
//!    runs into the end of the text goes on periodically (`x_{j+i} = x_i`): an occurrence of
//!    `s` that ends `j` tokens before the end means the text just repeated with period `j`.
//! 4. While fewer than `k` candidates were found, move to the next shorter suffix whose set of
//!    occurrences is larger (the suffix link), at most `max_levels` levels, never below
//!    `min_match`. Candidates therefore come out ranked by (match length desc, count desc).
//!
//! Counts: the number of occurrences of a state's strings is the number of text prefixes in its
//! suffix-link subtree; it is counted at query time by a walk that stops at `count_cap` (and
//! after `16 * count_cap + 512` steps, where it is a lower bound), so extending stays `O(1)`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{check_limit, fmt_index, try_reserve, Error, Result};

/// "No state" (the root's suffix link, an empty list).
pub(crate) const NONE: u32 = u32::MAX;
/// The initial state (the empty string).
pub(crate) const ROOT: u32 = 0;
/// Most tokens one automaton (or datastore) holds: states stay below `2^32 - 1`.
pub const MAX_TOKENS: usize = (1 << 31) - 2;
/// Most candidate tokens one query may ask for: `k`, `length` and `k * length` are each at most
/// `2^24` (the Python binding applies the bound to a whole batch, `rows * k * length`). Past
/// it a query returns [`Error::TooLarge`] instead of trying to build (or, for the periodic
/// continuation of an automaton's own text, actually producing) an output of that size. Real
/// queries ask for a few candidates of a few tokens.
pub const MAX_QUERY_TOKENS: usize = 1 << 24;

/// Tunables of a retrieval query (see the module docs for the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryParams {
    /// `K`: candidates returned at most.
    pub k: usize,
    /// Tokens per candidate, at most (a candidate stops early where its text ends).
    pub length: usize,
    /// Shortest suffix match that proposes anything (0 acts as 1).
    pub min_match: usize,
    /// Occurrences are counted up to this value (ranking only).
    pub count_cap: u32,
    /// Suffix-link levels visited at most.
    pub max_levels: usize,
}

impl QueryParams {
    /// Checks `max(k, 1) * max(length, 1) <= MAX_QUERY_TOKENS` ([`Error::TooLarge`] naming
    /// `"k * length"`); every query calls it.
    pub fn check(&self) -> Result<()> {
        let (k, length) = (self.k, self.length);
        check_limit(
            "k * length",
            || format!("a query for k = {k} candidates of length = {length} tokens"),
            &[k.max(1), length.max(1)],
            MAX_QUERY_TOKENS,
            "MAX_QUERY_TOKENS",
        )
        .map(|_| ())
    }
}

/// A count cap that never binds (counts saturate at `u32::MAX` anyway): the default cap of
/// `count`, and of a datastore query (whose counts were precomputed at build time).
pub const UNCAPPED: u32 = u32::MAX;

/// The retrieval defaults, defined here once: the Python binding's signature defaults and
/// `RetrievalConfig`'s fields read them (as `_core.RETRIEVAL_DEFAULTS`).
impl QueryParams {
    /// Defaults of a query of a request's own text (`SuffixAutomaton.query`, `retrieve`):
    /// 4 candidates of 4 tokens, from a match of at least 1 token, counting occurrences up to
    /// 16 (a count is a walk at query time, see the module docs), at most 8 levels.
    pub const DEFAULT: Self = Self {
        k: 4,
        length: 4,
        min_match: 1,
        count_cap: 16,
        max_levels: 8,
    };
    /// Defaults of a datastore query: [`QueryParams::DEFAULT`], but counts are not capped
    /// (they were precomputed at build time).
    pub const DATASTORE: Self = Self {
        count_cap: UNCAPPED,
        ..Self::DEFAULT
    };
    /// Defaults of the retrieval drafter (Python's `RetrievalConfig`; its `k` and `length`
    /// follow from the beam shape): [`QueryParams::DEFAULT`] with a match of at least 2 tokens.
    pub const DRAFT: Self = Self {
        min_match: 2,
        ..Self::DEFAULT
    };
}

impl Default for QueryParams {
    /// [`QueryParams::DEFAULT`].
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One proposed continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The continuation: 1 to `length` tokens.
    pub tokens: Vec<i64>,
    /// Length of the context suffix it continues.
    pub match_len: usize,
    /// Occurrences of (matched suffix + first token), capped at `count_cap`.
    pub count: u32,
}

/// Read access shared by the online automaton and the frozen datastore.
pub(crate) trait Graph {
    /// Length of the longest string of state `s`.
    fn state_len(&self, s: u32) -> usize;
    /// Suffix link of `s` (`NONE` for the root).
    fn link(&self, s: u32) -> u32;
    /// End position of the first occurrence of `s`'s strings.
    fn first_end(&self, s: u32) -> u32;
    /// Transition on `token`.
    fn next(&self, s: u32, token: i64) -> Option<u32>;
    /// Calls `f(token, target)` for every transition of `s` on a token >= 0.
    fn for_each_edge(&self, s: u32, f: &mut dyn FnMut(i64, u32));
    /// Occurrences of `s`'s strings, at most `cap`.
    fn count(&self, s: u32, cap: u32, scratch: &mut Vec<u32>) -> u32;
}

/// A ranked continuation: (count, first end, token, target state).
type Child = (u32, u32, i64, u32);

/// Continuations of `s` in rank order: count desc, first end asc, token asc.
fn ranked<G: Graph>(g: &G, s: u32, cap: u32, scratch: &mut Vec<u32>, out: &mut Vec<Child>) {
    out.clear();
    let mut edges = Vec::new();
    g.for_each_edge(s, &mut |t, u| edges.push((t, u)));
    for (t, u) in edges {
        out.push((g.count(u, cap, scratch), g.first_end(u), t, u));
    }
    out.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
}

/// The best continuation of `s` under the ranking (no counting when there is only one).
fn best_child<G: Graph>(g: &G, s: u32, cap: u32, scratch: &mut Vec<u32>) -> Option<(i64, u32)> {
    let mut edges: Vec<(i64, u32)> = Vec::new();
    g.for_each_edge(s, &mut |t, u| edges.push((t, u)));
    if edges.len() <= 1 {
        return edges.pop();
    }
    edges
        .into_iter()
        .map(|(t, u)| (g.count(u, cap, scratch), g.first_end(u), t, u))
        .min_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)))
        .map(|(_, _, t, u)| (t, u))
}

/// Candidate tokens starting with `token` (state `target`), greedily extended.
fn extend_path<G: Graph>(
    g: &G,
    token: i64,
    target: u32,
    p: &QueryParams,
    periodic: bool,
    scratch: &mut Vec<u32>,
) -> Vec<i64> {
    // `length` is only an upper bound: most candidates stop early.
    let mut tokens = Vec::with_capacity(p.length.min(64));
    tokens.push(token);
    let mut state = target;
    while tokens.len() < p.length {
        match best_child(g, state, p.count_cap, scratch) {
            Some((t, u)) => {
                tokens.push(t);
                state = u;
            }
            None => {
                if periodic {
                    let period = tokens.len();
                    for i in period..p.length {
                        tokens.push(tokens[i - period]);
                    }
                }
                break;
            }
        }
    }
    tokens
}

/// Candidates from state `start` matched with length `matched` (see the module docs).
pub(crate) fn collect<G: Graph>(
    g: &G,
    start: u32,
    matched: usize,
    periodic: bool,
    p: &QueryParams,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    if p.k == 0 || p.length == 0 {
        return out;
    }
    let min_match = p.min_match.max(1);
    let (mut scratch, mut kids) = (Vec::new(), Vec::new());
    let (mut state, mut m) = (start, matched);
    for _ in 0..p.max_levels {
        if state == NONE || m < min_match || out.len() >= p.k {
            break;
        }
        ranked(g, state, p.count_cap, &mut scratch, &mut kids);
        for &(count, _, token, target) in &kids {
            if out.len() >= p.k {
                break;
            }
            if out.iter().any(|c| c.tokens[0] == token) {
                continue;
            }
            let tokens = extend_path(g, token, target, p, periodic, &mut scratch);
            out.push(Candidate {
                tokens,
                match_len: m,
                count,
            });
        }
        state = g.link(state);
        m = if state == NONE { 0 } else { g.state_len(state) };
    }
    out
}

/// Walks `context` through the automaton: the state and length of its longest suffix that
/// occurs in the indexed text. Tokens must be >= 0 (checked by the callers).
pub(crate) fn match_suffix<G: Graph>(g: &G, context: &[i64]) -> (u32, usize) {
    let (mut s, mut l) = (ROOT, 0usize);
    for &t in context {
        advance(g, &mut s, &mut l, t);
    }
    (s, l)
}

/// One matching step: follow `t`, falling back along suffix links (amortised `O(1)`).
pub(crate) fn advance<G: Graph>(g: &G, s: &mut u32, l: &mut usize, t: i64) {
    loop {
        if let Some(n) = g.next(*s, t) {
            *s = n;
            *l += 1;
            return;
        }
        if *s == ROOT {
            *l = 0;
            return;
        }
        *s = g.link(*s);
        // A suffix link's state is shorter than the match in a well-formed automaton; `min`
        // keeps a corrupt one (a loaded file) from growing the match past the tokens seen.
        *l = g.state_len(*s).min(*l);
    }
}

/// Merges candidate lists from several sources: ranked by (match length desc, count desc),
/// earlier lists first on ties, identical token sequences once, at most `k`.
pub fn merge_candidates(lists: Vec<Vec<Candidate>>, k: usize) -> Vec<Candidate> {
    let mut all: Vec<Candidate> = lists.into_iter().flatten().collect();
    all.sort_by(|a, b| b.match_len.cmp(&a.match_len).then(b.count.cmp(&a.count)));
    let mut out: Vec<Candidate> = Vec::with_capacity(k.min(all.len()));
    for c in all {
        if out.len() >= k {
            break;
        }
        if !out.iter().any(|o| o.tokens == c.tokens) {
            out.push(c);
        }
    }
    out
}

/// Checks that every token is >= 0; `arg` names the argument in the error.
pub(crate) fn check_tokens(arg: &'static str, tokens: &[i64]) -> Result<()> {
    match tokens.iter().position(|&t| t < 0) {
        None => Ok(()),
        Some(i) => Err(Error::TokenRange {
            arg,
            index: fmt_index(&[i]),
            value: tokens[i],
            vocab_size: None,
        }),
    }
}

/// Fast hasher for `(state, token)` keys (multiply-rotate; keys are not attacker-chosen
/// strings, and a collision costs time, never correctness).
#[derive(Default, Clone, Copy)]
pub(crate) struct TokenHasher(u64);

impl TokenHasher {
    fn mix(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(26) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.mix(u64::from(b));
        }
    }
    fn write_u32(&mut self, x: u32) {
        self.mix(u64::from(x));
    }
    fn write_u64(&mut self, x: u64) {
        self.mix(x);
    }
    fn write_i64(&mut self, x: i64) {
        self.mix(x as u64);
    }
}

type EdgeIndex = HashMap<(u32, i64), u32, BuildHasherDefault<TokenHasher>>;

/// One automaton state. `child` / `next_sibling` / `prev_sibling` thread the suffix-link
/// tree (for counting); `first_edge` threads its transitions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct State {
    pub(crate) len: u32,
    pub(crate) link: u32,
    pub(crate) first_end: u32,
    /// A prefix state (created for a text position, not a clone): one occurrence of its own.
    pub(crate) own: bool,
    pub(crate) first_edge: u32,
    child: u32,
    next_sibling: u32,
    prev_sibling: u32,
}

/// One transition, in its source state's list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edge {
    pub(crate) token: i64,
    pub(crate) target: u32,
    pub(crate) next: u32,
}

/// Online suffix automaton over token ids (see the module docs).
///
/// ```
/// use redrafter_core::{QueryParams, SuffixAutomaton};
///
/// let mut sam = SuffixAutomaton::new();
/// sam.extend(&[5, 6, 7, 8, 5, 6])?;
/// // "5 6" occurred before, followed by "7 8 5 6".
/// let params = QueryParams { k: 2, length: 3, ..QueryParams::default() };
/// let cands = sam.query(&params)?;
/// assert_eq!(cands[0].tokens, [7, 8, 5]);
/// assert_eq!(cands[0].match_len, 2);
/// # Ok::<(), redrafter_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SuffixAutomaton {
    text: Vec<i64>,
    pub(crate) states: Vec<State>,
    pub(crate) edges: Vec<Edge>,
    index: EdgeIndex,
    last: u32,
}

impl Default for SuffixAutomaton {
    fn default() -> Self {
        Self::new()
    }
}

impl SuffixAutomaton {
    /// An empty automaton (one state: the empty string).
    pub fn new() -> Self {
        let mut sam = Self {
            text: Vec::new(),
            states: Vec::new(),
            edges: Vec::new(),
            index: EdgeIndex::default(),
            last: ROOT,
        };
        sam.new_state(0, 0, false);
        sam
    }

    /// An automaton over `tokens` (all >= 0).
    pub fn from_tokens(tokens: &[i64]) -> Result<Self> {
        let mut sam = Self::new();
        sam.extend(tokens)?;
        Ok(sam)
    }

    /// Appends `tokens` (amortised `O(1)` each).
    ///
    /// Errors: [`Error::TokenRange`] (naming `"tokens"`) for a negative token, [`Error::Shape`]
    /// past [`MAX_TOKENS`]; the automaton is unchanged on error.
    pub fn extend(&mut self, tokens: &[i64]) -> Result<()> {
        check_tokens("tokens", tokens)?;
        self.reserve_tokens(tokens.len())?;
        for &t in tokens {
            self.push(t);
        }
        Ok(())
    }

    /// Reserves room for `additional` more tokens (states, transitions and their index), so
    /// that extending by that many never reallocates.
    ///
    /// Errors: [`Error::Shape`] past [`MAX_TOKENS`], [`Error::OutOfMemory`] when the memory
    /// cannot be reserved (the automaton is unchanged apart from spare capacity).
    pub fn reserve(&mut self, additional: usize) -> Result<()> {
        self.reserve_tokens(additional)?;
        let edges = additional.saturating_mul(3);
        try_reserve(&mut self.edges, "tokens", "automaton transitions", edges)?;
        self.index
            .try_reserve(edges)
            .map_err(|_| Error::OutOfMemory {
                arg: "tokens",
                what: "the automaton's transition index",
                elements: edges,
                bytes: edges.saturating_mul(std::mem::size_of::<((u32, i64), u32)>()),
            })
    }

    /// Checks the size limit and reserves room for `extra` more tokens.
    pub(crate) fn reserve_tokens(&mut self, extra: usize) -> Result<()> {
        let total = self.text.len().saturating_add(extra);
        if total > MAX_TOKENS {
            return Err(Error::Shape {
                arg: "tokens",
                expected: format!("at most {MAX_TOKENS} tokens in one automaton"),
                got: format!("{total} tokens"),
            });
        }
        try_reserve(&mut self.text, "tokens", "the automaton's text", extra)?;
        let states = extra.saturating_mul(2);
        try_reserve(&mut self.states, "tokens", "automaton states", states)
    }

    /// Tokens indexed so far.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether no token was added yet.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The indexed tokens.
    pub fn tokens(&self) -> &[i64] {
        &self.text
    }

    /// Number of states (at most `2 * len + 1`).
    pub fn num_states(&self) -> usize {
        self.states.len()
    }

    /// Number of transitions (at most `3 * len`).
    pub fn num_edges(&self) -> usize {
        self.edges.len()
    }

    /// Candidates continuing the text's own end (module docs, with periodic extension).
    ///
    /// Errors: [`Error::TooLarge`] when `k * length` exceeds [`MAX_QUERY_TOKENS`].
    pub fn query(&self, params: &QueryParams) -> Result<Vec<Candidate>> {
        params.check()?;
        let start = self.states[self.last as usize].link;
        if start == NONE {
            return Ok(Vec::new()); // empty text
        }
        Ok(collect(self, start, self.state_len(start), true, params))
    }

    /// Candidates continuing `context` with what followed it in this automaton's text.
    ///
    /// Errors: [`Error::TokenRange`] (naming `"context"`) for a negative token,
    /// [`Error::TooLarge`] when `k * length` exceeds [`MAX_QUERY_TOKENS`].
    pub fn query_context(&self, context: &[i64], params: &QueryParams) -> Result<Vec<Candidate>> {
        params.check()?;
        check_tokens("context", context)?;
        let (s, l) = match_suffix(self, context);
        Ok(collect(self, s, l, false, params))
    }

    /// Occurrences of `pattern` in the text, at most `cap` (0 if it does not occur).
    pub fn count(&self, pattern: &[i64], cap: u32) -> u32 {
        let mut s = ROOT;
        for &t in pattern {
            match self.next(s, t) {
                Some(n) => s = n,
                None => return 0,
            }
        }
        Graph::count(self, s, cap, &mut Vec::new())
    }

    /// Appends one token (negative tokens are allowed here: document separators of a
    /// datastore). The caller has checked the size limit.
    pub(crate) fn push(&mut self, c: i64) {
        let pos = self.text.len() as u32;
        self.text.push(c);
        let cur = self.new_state(self.states[self.last as usize].len + 1, pos, true);
        let mut p = self.last;
        loop {
            if p == NONE {
                self.set_link(cur, ROOT);
                break;
            }
            if let Some(q) = Graph::next(self, p, c) {
                if self.states[p as usize].len + 1 == self.states[q as usize].len {
                    self.set_link(cur, q);
                } else {
                    let clone = self.split(p, q, c);
                    self.set_link(cur, clone);
                }
                break;
            }
            self.add_edge(p, c, cur);
            p = self.states[p as usize].link;
        }
        self.last = cur;
    }

    /// Clones `q` as the state of length `len(p) + 1` and redirects `p`'s chain to it.
    fn split(&mut self, mut p: u32, q: u32, c: i64) -> u32 {
        let len = self.states[p as usize].len + 1;
        let clone = self.new_state(len, self.states[q as usize].first_end, false);
        let mut e = self.states[q as usize].first_edge;
        while e != NONE {
            let edge = self.edges[e as usize];
            self.add_edge(clone, edge.token, edge.target);
            e = edge.next;
        }
        let parent = self.states[q as usize].link;
        self.set_link(clone, parent);
        self.set_link(q, clone);
        while p != NONE {
            match self.index.get(&(p, c)) {
                Some(&id) if self.edges[id as usize].target == q => {
                    self.edges[id as usize].target = clone;
                    p = self.states[p as usize].link;
                }
                _ => break,
            }
        }
        clone
    }

    fn new_state(&mut self, len: u32, first_end: u32, own: bool) -> u32 {
        let id = self.states.len() as u32;
        self.states.push(State {
            len,
            link: NONE,
            first_end,
            own,
            first_edge: NONE,
            child: NONE,
            next_sibling: NONE,
            prev_sibling: NONE,
        });
        id
    }

    fn add_edge(&mut self, s: u32, token: i64, target: u32) {
        let id = self.edges.len() as u32;
        self.edges.push(Edge {
            token,
            target,
            next: self.states[s as usize].first_edge,
        });
        self.states[s as usize].first_edge = id;
        self.index.insert((s, token), id);
    }

    /// Sets `link(child) = parent`, keeping the suffix-link tree's child lists (`O(1)`).
    fn set_link(&mut self, child: u32, parent: u32) {
        let old = self.states[child as usize];
        if old.link != NONE {
            if old.prev_sibling != NONE {
                self.states[old.prev_sibling as usize].next_sibling = old.next_sibling;
            } else {
                self.states[old.link as usize].child = old.next_sibling;
            }
            if old.next_sibling != NONE {
                self.states[old.next_sibling as usize].prev_sibling = old.prev_sibling;
            }
        }
        let head = self.states[parent as usize].child;
        if head != NONE {
            self.states[head as usize].prev_sibling = child;
        }
        let st = &mut self.states[child as usize];
        st.link = parent;
        st.prev_sibling = NONE;
        st.next_sibling = head;
        self.states[parent as usize].child = child;
    }
}

impl Graph for SuffixAutomaton {
    fn state_len(&self, s: u32) -> usize {
        self.states[s as usize].len as usize
    }

    fn link(&self, s: u32) -> u32 {
        self.states[s as usize].link
    }

    fn first_end(&self, s: u32) -> u32 {
        self.states[s as usize].first_end
    }

    fn next(&self, s: u32, token: i64) -> Option<u32> {
        self.index
            .get(&(s, token))
            .map(|&id| self.edges[id as usize].target)
    }

    fn for_each_edge(&self, s: u32, f: &mut dyn FnMut(i64, u32)) {
        let mut e = self.states[s as usize].first_edge;
        while e != NONE {
            let edge = self.edges[e as usize];
            if edge.token >= 0 {
                f(edge.token, edge.target);
            }
            e = edge.next;
        }
    }

    /// Prefix states in the suffix-link subtree of `s`, counted depth-first up to `cap`
    /// (children are counted when first seen; the walk takes at most `16 * cap + 512` steps).
    fn count(&self, s: u32, cap: u32, stack: &mut Vec<u32>) -> u32 {
        let mut n = u32::from(self.states[s as usize].own);
        let mut budget = (cap as usize).saturating_mul(16).saturating_add(512);
        stack.clear();
        stack.push(s);
        while let Some(v) = stack.pop() {
            let mut c = self.states[v as usize].child;
            while c != NONE {
                if n >= cap || budget == 0 {
                    return n.min(cap);
                }
                budget -= 1;
                let st = &self.states[c as usize];
                n += u32::from(st.own);
                if st.child != NONE {
                    stack.push(c);
                }
                c = st.next_sibling;
            }
        }
        n.min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(k: usize, length: usize) -> QueryParams {
        QueryParams {
            k,
            length,
            ..QueryParams::default()
        }
    }

    #[test]
    fn empty_and_single_token() {
        let sam = SuffixAutomaton::new();
        assert!(sam.is_empty());
        assert!(sam.query(&params(4, 4)).unwrap().is_empty());
        let sam = SuffixAutomaton::from_tokens(&[3]).unwrap();
        assert_eq!(sam.len(), 1);
        assert!(sam.query(&params(4, 4)).unwrap().is_empty());
    }

    #[test]
    fn all_same_tokens_continue_periodically() {
        let sam = SuffixAutomaton::from_tokens(&[7; 50]).unwrap();
        let c = sam.query(&params(3, 5)).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].tokens, [7; 5]);
        assert_eq!(c[0].match_len, 49);
        assert_eq!(sam.count(&[7, 7], 100), 49);
        assert_eq!(sam.count(&[7, 7], 10), 10);
    }

    #[test]
    fn periodic_phrase() {
        // "1 2 3" repeated: the suffix "1 2 3 1 2" occurred 3 tokens earlier.
        let sam = SuffixAutomaton::from_tokens(&[1, 2, 3, 1, 2, 3, 1, 2]).unwrap();
        let c = sam.query(&params(1, 7)).unwrap();
        assert_eq!(c[0].tokens, [3, 1, 2, 3, 1, 2, 3]);
        assert_eq!(c[0].match_len, 5);
    }

    #[test]
    fn ranked_by_match_length_then_count() {
        // after "9": 4 (twice), 5 (once); the longest match "8 9" is followed by 5.
        let text = [9, 4, 0, 9, 4, 1, 8, 9, 5, 2, 8, 9];
        let sam = SuffixAutomaton::from_tokens(&text).unwrap();
        let c = sam.query(&params(3, 2)).unwrap();
        assert_eq!(c[0].tokens, [5, 2]);
        assert_eq!((c[0].match_len, c[0].count), (2, 1));
        assert_eq!(c[1].tokens[0], 4);
        assert_eq!((c[1].match_len, c[1].count), (1, 2));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn negative_tokens_are_refused_and_leave_the_automaton_unchanged() {
        let mut sam = SuffixAutomaton::from_tokens(&[1, 2]).unwrap();
        let err = sam.extend(&[3, -4]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tokens[1] = -4 is out of range: expected a token id >= 0"
        );
        assert_eq!(sam.tokens(), [1, 2]);
        assert!(sam.query_context(&[-1], &params(1, 1)).is_err());
    }

    #[test]
    fn oversized_queries_are_refused() {
        let sam = SuffixAutomaton::from_tokens(&[7; 8]).unwrap();
        let e = sam.query(&params(1, MAX_QUERY_TOKENS + 1)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::TooLarge {
                    arg: "k * length",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("(MAX_QUERY_TOKENS)"), "{e}");
        assert!(sam.query_context(&[7], &params(usize::MAX, 2)).is_err());
        assert!(sam.query(&params(0, usize::MAX)).is_err());
        assert!(sam.query(&params(MAX_QUERY_TOKENS + 1, 0)).is_err());
        assert_eq!(sam.query(&params(0, MAX_QUERY_TOKENS)).unwrap(), []);
        let c = sam.query(&params(1, MAX_QUERY_TOKENS)).unwrap();
        assert_eq!(c[0].tokens.len(), MAX_QUERY_TOKENS); // periodic: the whole length
    }

    #[test]
    fn impossible_reservations_are_errors() {
        let mut sam = SuffixAutomaton::from_tokens(&[1, 2]).unwrap();
        assert!(matches!(
            sam.reserve(MAX_TOKENS),
            Err(Error::Shape { arg: "tokens", .. })
        ));
        assert_eq!(sam.tokens(), [1, 2]);
    }

    #[test]
    fn merge_ranks_and_dedups() {
        let c = |t: &[i64], m, n| Candidate {
            tokens: t.to_vec(),
            match_len: m,
            count: n,
        };
        let merged = merge_candidates(
            vec![
                vec![c(&[1, 2], 3, 1), c(&[4], 1, 9)],
                vec![c(&[1, 2], 5, 2), c(&[7], 3, 4)],
            ],
            3,
        );
        assert_eq!(merged, [c(&[1, 2], 5, 2), c(&[7], 3, 4), c(&[4], 1, 9)]);
    }

    #[test]
    fn hasher_spreads_keys() {
        let h = |k: (u32, i64)| {
            let mut s = TokenHasher::default();
            std::hash::Hash::hash(&k, &mut s);
            s.finish()
        };
        let low: std::collections::HashSet<u64> = (0..1024).map(|t| h((1, t)) & 1023).collect();
        assert!(low.len() > 600, "{}", low.len());
    }
}

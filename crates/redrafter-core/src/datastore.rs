//! A shared, read-only retrieval datastore: a frozen suffix automaton over a token corpus.
//!
//! [`Datastore::build`] indexes a corpus once (negative ids separate documents, so no
//! continuation crosses a document boundary); [`Datastore::save`] / [`Datastore::load`] keep it
//! on disk. Queries follow the rule of [`crate::SuffixAutomaton`] (module `sam`), with exact
//! occurrence counts precomputed at build time and transitions found by binary search. A
//! [`Cursor`] follows a growing context in amortised `O(1)` per token.
//!
//! # File format, version 1 (all integers little-endian)
//!
//! | offset   | bytes      | field                                                          |
//! |----------|------------|----------------------------------------------------------------|
//! | 0        | 8          | magic `b"RRSAMDS\0"`                                           |
//! | 8        | 4          | format version, u32 = 1                                        |
//! | 12       | 4          | flags, u32 = 0 (reserved)                                      |
//! | 16       | 8          | `T`: corpus tokens, separators included (u64)                  |
//! | 24       | 8          | `D`: documents (u64)                                           |
//! | 32       | 8          | `S`: states (u64), state 0 is the root                         |
//! | 40       | 8          | `E`: transitions (u64)                                         |
//! | 48       | 8 E        | `edge_token` i64 \[E\]: per state, sorted ascending (-1 = separator) |
//! |          | 4 E        | `edge_target` u32 \[E\]                                        |
//! |          | 4 (S + 1)  | `edge_start` u32 \[S + 1\]: state s owns edges `edge_start[s]..edge_start[s+1]` |
//! |          | 4 S        | `len` u32 \[S\]: longest string of the state                   |
//! |          | 4 S        | `link` u32 \[S\]: suffix link (root: `0xFFFF_FFFF`)            |
//! |          | 4 S        | `first_end` u32 \[S\]: end position of the first occurrence    |
//! |          | 4 S        | `count` u32 \[S\]: occurrences (saturating)                    |
//! | size - 4 | 4          | CRC-32 (IEEE 802.3, as zlib's `crc32`) of every byte before it |
//!
//! File size: `56 + 12 E + 20 S` bytes. The `i64` array starts at offset 48, so every array
//! is aligned to its element size. Loading checks, in order: the magic, the version, the size
//! the header implies, the checksum, then the structure (suffix links shorten, transitions are
//! sorted and lengthen, indices are in range). Any failure is an [`Error::Datastore`] naming
//! the file and the problem; no input makes the loader or a query panic.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{try_filled, try_with_capacity, Error, Result};
use crate::sam::{
    advance, check_tokens, collect, match_suffix, Candidate, Graph, QueryParams, SuffixAutomaton,
    MAX_TOKENS, NONE, ROOT,
};

/// First 8 bytes of every datastore file.
pub const MAGIC: [u8; 8] = *b"RRSAMDS\0";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 48;
const SEPARATOR: i64 = -1;

/// Identifies each datastore built or loaded by this process, so that a
/// [`crate::RequestIndex`]'s cursor is never used with another one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A frozen suffix automaton over a token corpus (see the module docs).
///
/// Equality compares the contents. Each datastore built or loaded also has an identity, which
/// a clone shares (it is immutable, so a clone is the same index).
#[derive(Debug, Clone)]
pub struct Datastore {
    id: u64,
    num_tokens: u64,
    num_docs: u64,
    edge_token: Vec<i64>,
    edge_target: Vec<u32>,
    edge_start: Vec<u32>,
    len: Vec<u32>,
    link: Vec<u32>,
    first_end: Vec<u32>,
    count: Vec<u32>,
}

/// Where a growing context stands in a [`Datastore`]: the state of its longest suffix that
/// occurs in the corpus, and that suffix's length. `Cursor::default()` is the empty context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    state: u32,
    matched: usize,
}

impl Cursor {
    /// Length of the context's longest suffix that occurs in the corpus.
    pub fn matched(&self) -> usize {
        self.matched
    }
}

/// Everything of a [`Datastore`] but its identity.
type Contents<'a> = ([u64; 2], [&'a [u32]; 6], &'a [i64]);

impl Datastore {
    fn contents(&self) -> Contents<'_> {
        let u32s = [
            &self.edge_target[..],
            &self.edge_start,
            &self.len,
            &self.link,
            &self.first_end,
            &self.count,
        ];
        ([self.num_tokens, self.num_docs], u32s, &self.edge_token)
    }
}

impl PartialEq for Datastore {
    fn eq(&self, other: &Self) -> bool {
        self.contents() == other.contents()
    }
}

impl Eq for Datastore {}

impl Datastore {
    /// Indexes `tokens`; negative ids separate documents (all become `-1`).
    ///
    /// Errors: [`Error::Shape`] past [`crate::MAX_TOKENS`] tokens, [`Error::OutOfMemory`]
    /// when the automaton's or the frozen arrays' memory cannot be reserved.
    pub fn build(tokens: &[i64]) -> Result<Self> {
        let mut sam = SuffixAutomaton::new();
        sam.reserve_tokens(tokens.len())?;
        let mut docs = 0u64;
        let mut in_doc = false;
        for &t in tokens {
            let t = if t < 0 { SEPARATOR } else { t };
            if t >= 0 && !in_doc {
                docs += 1;
            }
            in_doc = t >= 0;
            sam.push(t);
        }
        Self::freeze(&sam, docs)
    }

    /// Copies an automaton into the frozen layout, with exact occurrence counts.
    fn freeze(sam: &SuffixAutomaton, num_docs: u64) -> Result<Self> {
        let n = sam.states.len();
        let e = sam.edges.len();
        let arg = "tokens";
        let mut edge_token = try_with_capacity(arg, "datastore.edge_token", e)?;
        let mut edge_target = try_with_capacity(arg, "datastore.edge_target", e)?;
        let mut edge_start = try_with_capacity(arg, "datastore.edge_start", n.saturating_add(1))?;
        let mut row: Vec<(i64, u32)> = Vec::new();
        for st in &sam.states {
            edge_start.push(edge_token.len() as u32);
            row.clear();
            let mut e = st.first_edge;
            while e != NONE {
                let edge = sam.edges[e as usize];
                row.push((edge.token, edge.target));
                e = edge.next;
            }
            row.sort_unstable();
            for &(t, u) in &row {
                edge_token.push(t);
                edge_target.push(u);
            }
        }
        edge_start.push(edge_token.len() as u32);
        // Occurrences: each prefix state counts once for itself and every suffix-link ancestor;
        // push counts up in order of decreasing length (a counting sort by length).
        let max_len = sam.states.iter().map(|s| s.len as usize).max().unwrap_or(0);
        // max_len <= MAX_TOKENS, so this cannot saturate.
        let mut by_len = try_filled(arg, "the state order", 0usize, max_len.saturating_add(2))?;
        for st in &sam.states {
            by_len[st.len as usize + 1] += 1;
        }
        for i in 1..by_len.len() {
            by_len[i] += by_len[i - 1];
        }
        let mut order = try_filled(arg, "the state order", 0u32, n)?;
        for (i, st) in sam.states.iter().enumerate() {
            order[by_len[st.len as usize]] = i as u32;
            by_len[st.len as usize] += 1;
        }
        drop(by_len);
        let mut counts: Vec<u64> = try_with_capacity(arg, "the occurrence counts", n)?;
        counts.extend(sam.states.iter().map(|s| u64::from(s.own)));
        for &s in order.iter().rev() {
            let link = sam.states[s as usize].link;
            if link != NONE {
                counts[link as usize] += counts[s as usize];
            }
        }
        drop(order);
        let per_state =
            |what: &'static str, f: fn(&crate::sam::State) -> u32| -> Result<Vec<u32>> {
                let mut v = try_with_capacity(arg, what, n)?;
                v.extend(sam.states.iter().map(f));
                Ok(v)
            };
        let mut count = try_with_capacity(arg, "datastore.count", n)?;
        count.extend(counts.iter().map(|&c| u32::try_from(c).unwrap_or(u32::MAX)));
        Ok(Self {
            id: next_id(),
            num_tokens: sam.len() as u64,
            num_docs,
            edge_token,
            edge_target,
            edge_start,
            len: per_state("datastore.len", |s| s.len)?,
            link: per_state("datastore.link", |s| s.link)?,
            first_end: per_state("datastore.first_end", |s| s.first_end)?,
            count,
        })
    }

    /// Corpus tokens, separators included.
    pub fn num_tokens(&self) -> u64 {
        self.num_tokens
    }

    /// Documents in the corpus (maximal runs of non-negative tokens).
    pub fn num_docs(&self) -> u64 {
        self.num_docs
    }

    /// Automaton states.
    pub fn num_states(&self) -> usize {
        self.len.len()
    }

    /// Automaton transitions.
    pub fn num_edges(&self) -> usize {
        self.edge_token.len()
    }

    /// Occurrences of `pattern` in the corpus, at most `cap`.
    pub fn count(&self, pattern: &[i64], cap: u32) -> u32 {
        let mut s = ROOT;
        for &t in pattern {
            match Graph::next(self, s, t) {
                Some(u) => s = u,
                None => return 0,
            }
        }
        self.count[s as usize].min(cap)
    }

    /// Candidates continuing `context` with what followed it in the corpus.
    ///
    /// Errors: [`Error::TokenRange`] (naming `"context"`) for a negative token,
    /// [`Error::TooLarge`] when `k * length` exceeds [`crate::MAX_QUERY_TOKENS`].
    pub fn query(&self, context: &[i64], params: &QueryParams) -> Result<Vec<Candidate>> {
        params.check()?;
        check_tokens("context", context)?;
        let (s, l) = match_suffix(self, context);
        Ok(collect(self, s, l, false, params))
    }

    /// Moves `cursor` past `tokens` (amortised `O(1)` each).
    ///
    /// Errors: [`Error::TokenRange`] (naming `"tokens"`) for a negative token,
    /// [`Error::Inconsistent`] (naming `"cursor"`) for a cursor of another datastore.
    pub fn advance(&self, cursor: &mut Cursor, tokens: &[i64]) -> Result<()> {
        check_tokens("tokens", tokens)?;
        self.check_cursor(cursor)?;
        for &t in tokens {
            advance(self, &mut cursor.state, &mut cursor.matched, t);
        }
        Ok(())
    }

    /// Candidates continuing the context `cursor` has followed.
    ///
    /// Errors: [`Error::Inconsistent`] (naming `"cursor"`) for a cursor of another datastore,
    /// [`Error::TooLarge`] when `k * length` exceeds [`crate::MAX_QUERY_TOKENS`].
    pub fn query_at(&self, cursor: &Cursor, params: &QueryParams) -> Result<Vec<Candidate>> {
        params.check()?;
        self.check_cursor(cursor)?;
        Ok(collect(self, cursor.state, cursor.matched, false, params))
    }

    /// This datastore's identity (shared by its clones).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn check_cursor(&self, cursor: &Cursor) -> Result<()> {
        let s = cursor.state as usize;
        if s < self.len.len() && cursor.matched <= self.len[s] as usize {
            return Ok(());
        }
        Err(Error::Inconsistent {
            arg: "cursor",
            message: format!(
                "state {} (matched {}) does not belong to this datastore ({} states)",
                cursor.state,
                cursor.matched,
                self.len.len()
            ),
        })
    }

    // ---- the file format ------------------------------------------------------------------

    /// The file contents (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let (s, e) = (self.len.len(), self.edge_token.len());
        let mut out = Vec::with_capacity(56 + 12 * e + 20 * s);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for x in [self.num_tokens, self.num_docs, s as u64, e as u64] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for &t in &self.edge_token {
            out.extend_from_slice(&t.to_le_bytes());
        }
        for arr in [
            &self.edge_target,
            &self.edge_start,
            &self.len,
            &self.link,
            &self.first_end,
            &self.count,
        ] {
            for &x in arr.iter() {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses file contents; `origin` names the file in errors.
    ///
    /// Errors: [`Error::Datastore`] for anything but a valid version-1 datastore.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let fail = |message: String| Error::Datastore {
            path: origin.to_string(),
            message,
        };
        if bytes.len() < HEADER_BYTES + 4 {
            return Err(fail(format!(
                "truncated: {} bytes, shorter than the {}-byte header and checksum",
                bytes.len(),
                HEADER_BYTES + 4
            )));
        }
        let mut r = Reader {
            bytes,
            pos: 0,
            origin,
        };
        if r.take(8)? != MAGIC {
            return Err(fail(
                "not a redrafter-rs datastore (bad magic bytes; expected \"RRSAMDS\\0\")".into(),
            ));
        }
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(fail(format!(
                "unsupported format version {version} (this build reads version {FORMAT_VERSION})"
            )));
        }
        let flags = r.u32()?;
        let (num_tokens, num_docs) = (r.u64()?, r.u64()?);
        let (s64, e64) = (r.u64()?, r.u64()?);
        let expected = s64
            .checked_mul(20)
            .and_then(|x| e64.checked_mul(12).and_then(|y| x.checked_add(y)))
            .and_then(|x| x.checked_add(56));
        if expected != Some(bytes.len() as u64) {
            return Err(fail(format!(
                "truncated or oversized: the header ({s64} states, {e64} transitions) implies {} \
                 bytes, the file has {}",
                expected.map_or("too many".to_string(), |x| x.to_string()),
                bytes.len()
            )));
        }
        let body = bytes.len() - 4;
        let stored = u32::from_le_bytes([
            bytes[body],
            bytes[body + 1],
            bytes[body + 2],
            bytes[body + 3],
        ]);
        let computed = crc32(&bytes[..body]);
        if stored != computed {
            return Err(fail(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file \
                 is corrupt"
            )));
        }
        if flags != 0 {
            return Err(fail(format!("unsupported flags {flags:#x} (expected 0)")));
        }
        // The size check bounds both counts by the file size, so these fit in usize; every
        // array read below is checked against the bytes that remain before it allocates.
        let (s, e) = (s64 as usize, e64 as usize);
        let ds = Self {
            id: next_id(),
            num_tokens,
            num_docs,
            edge_token: r.i64s(e, "edge_token")?,
            edge_target: r.u32s(e, "edge_target")?,
            edge_start: r.u32s(s.saturating_add(1), "edge_start")?,
            len: r.u32s(s, "len")?,
            link: r.u32s(s, "link")?,
            first_end: r.u32s(s, "first_end")?,
            count: r.u32s(s, "count")?,
        };
        ds.validate()
            .map_err(|m| fail(format!("inconsistent content: {m}")))?;
        Ok(ds)
    }

    /// Structural checks that make every query terminate without panicking.
    fn validate(&self) -> std::result::Result<(), String> {
        let (s, e) = (self.len.len(), self.edge_token.len());
        if s == 0 || s >= NONE as usize || e > u32::MAX as usize {
            return Err(format!("{s} states / {e} transitions is out of range"));
        }
        if self.num_tokens > MAX_TOKENS as u64 || self.num_docs > self.num_tokens {
            return Err(format!(
                "{} tokens / {} documents is out of range (at most {MAX_TOKENS} tokens, and no \
                 more documents than tokens)",
                self.num_tokens, self.num_docs
            ));
        }
        if self.len[0] != 0 || self.link[0] != NONE {
            return Err("state 0 is not the root (len 0, no suffix link)".into());
        }
        for v in 1..s {
            let l = self.link[v] as usize;
            if l >= s || self.len[l] >= self.len[v] {
                return Err(format!("suffix link of state {v} is invalid"));
            }
        }
        if self.edge_start[0] != 0 || self.edge_start[s] as usize != e {
            return Err("edge_start does not span the transitions".into());
        }
        for v in 0..s {
            let (a, b) = (self.edge_start[v] as usize, self.edge_start[v + 1] as usize);
            if a > b || b > e {
                return Err(format!("edge_start of state {v} is not monotone"));
            }
            for i in a..b {
                let target = self.edge_target[i] as usize;
                if target >= s || self.len[target] <= self.len[v] {
                    return Err(format!("transition {i} of state {v} is invalid"));
                }
                if i > a && self.edge_token[i - 1] >= self.edge_token[i] {
                    return Err(format!("transitions of state {v} are not sorted"));
                }
            }
        }
        Ok(())
    }

    /// Writes the file atomically (a temporary file next to `path`, then a rename).
    ///
    /// Errors: [`Error::Datastore`] naming `path` when it cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        let fail = |what: &str, e: std::io::Error| Error::Datastore {
            path: path.display().to_string(),
            message: format!("cannot {what}: {e}"),
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp);
        std::fs::write(&tmp, self.to_bytes()).map_err(|e| fail("write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail("rename the temporary file", e)
        })
    }

    /// Reads and checks a file written by [`Datastore::save`].
    ///
    /// Errors: [`Error::Datastore`] naming `path` (unreadable, or see [`Datastore::from_bytes`]).
    pub fn load(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::Datastore {
            path: origin.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_bytes(&bytes, &origin)
    }
}

impl Graph for Datastore {
    fn state_len(&self, s: u32) -> usize {
        self.len[s as usize] as usize
    }

    fn link(&self, s: u32) -> u32 {
        self.link[s as usize]
    }

    fn first_end(&self, s: u32) -> u32 {
        self.first_end[s as usize]
    }

    fn next(&self, s: u32, token: i64) -> Option<u32> {
        let (a, b) = self.edge_range(s);
        let i = self.edge_token[a..b].binary_search(&token).ok()?;
        Some(self.edge_target[a + i])
    }

    fn for_each_edge(&self, s: u32, f: &mut dyn FnMut(i64, u32)) {
        let (a, b) = self.edge_range(s);
        for i in a..b {
            if self.edge_token[i] >= 0 {
                f(self.edge_token[i], self.edge_target[i]);
            }
        }
    }

    fn count(&self, s: u32, cap: u32, _scratch: &mut Vec<u32>) -> u32 {
        self.count[s as usize].min(cap)
    }
}

impl Datastore {
    fn edge_range(&self, s: u32) -> (usize, usize) {
        let s = s as usize;
        (self.edge_start[s] as usize, self.edge_start[s + 1] as usize)
    }
}

/// Sequential little-endian reads that fail instead of panicking. An array's length is
/// checked against the bytes that remain before anything is allocated for it, so a length
/// field can never ask for more memory than the buffer itself holds.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Names the buffer in errors.
    origin: &'a str,
}

impl<'a> Reader<'a> {
    /// The next `n` bytes, or a "truncated" error naming `what`.
    fn take_for(&mut self, n: Option<usize>, what: &str) -> Result<&'a [u8]> {
        let remaining = self.bytes.len() - self.pos;
        match n.filter(|&n| n <= remaining) {
            Some(n) => {
                let out = &self.bytes[self.pos..self.pos + n];
                self.pos += n;
                Ok(out)
            }
            None => Err(Error::Datastore {
                path: self.origin.to_string(),
                message: format!(
                    "truncated: {what} needs {} bytes at offset {}, only {remaining} remain",
                    n.map_or("more than 2^64".to_string(), |n| n.to_string()),
                    self.pos
                ),
            }),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        self.take_for(Some(n), "the header")
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(le_i64(self.take(8)?) as u64)
    }

    /// `n` little-endian `u32`s (the array `what`).
    fn u32s(&mut self, n: usize, what: &'static str) -> Result<Vec<u32>> {
        let bytes = self.take_for(n.checked_mul(4), what)?;
        let mut out = try_with_capacity("datastore", what, n)?;
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(out)
    }

    /// `n` little-endian `i64`s (the array `what`).
    fn i64s(&mut self, n: usize, what: &'static str) -> Result<Vec<i64>> {
        let bytes = self.take_for(n.checked_mul(8), what)?;
        let mut out = try_with_capacity("datastore", what, n)?;
        out.extend(bytes.chunks_exact(8).map(le_i64));
        Ok(out)
    }
}

fn le_i64(b: &[u8]) -> i64 {
    i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// CRC-32 lookup tables for slice-by-8 (reflected polynomial 0xEDB88320).
const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            t[s][i] = (t[s - 1][i] >> 8) ^ t[0][(t[s - 1][i] & 0xFF) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

/// CRC-32 (IEEE 802.3; the value of zlib's `crc32`), eight bytes per step.
pub fn crc32(bytes: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut crc = !0u32;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xFF) as usize]
            ^ t[2][((hi >> 8) & 0xFF) as usize]
            ^ t[1][((hi >> 16) & 0xFF) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    fn corpus() -> Datastore {
        Datastore::build(&[1, 2, 3, 4, -1, 1, 2, 5, -7, 1, 2, 3, 6]).unwrap()
    }

    #[test]
    fn counts_and_documents() {
        let ds = corpus();
        assert_eq!(ds.num_docs(), 3);
        assert_eq!(ds.num_tokens(), 13);
        assert_eq!(ds.count(&[1, 2], 99), 3);
        assert_eq!(ds.count(&[1, 2, 3], 99), 2);
        assert_eq!(ds.count(&[1, 2], 2), 2);
        assert_eq!(ds.count(&[4, 1], 99), 0); // across a separator
    }

    #[test]
    fn query_ranks_by_count_and_stops_at_documents() {
        let ds = corpus();
        let p = QueryParams {
            k: 3,
            length: 3,
            ..QueryParams::default()
        };
        let c = ds.query(&[9, 1, 2], &p).unwrap();
        assert_eq!(c[0].tokens, [3, 4]); // "1 2 3" twice; "4" ends its document
        assert_eq!((c[0].match_len, c[0].count), (2, 2));
        assert_eq!(c[1].tokens, [5]);
        assert_eq!(c.len(), 2);
        let mut cur = Cursor::default();
        ds.advance(&mut cur, &[9, 1, 2]).unwrap();
        assert_eq!(cur.matched(), 2);
        assert_eq!(ds.query_at(&cur, &p).unwrap(), c);
    }

    #[test]
    fn roundtrip_and_corruption() {
        let ds = corpus();
        let bytes = ds.to_bytes();
        assert_eq!(bytes.len(), 56 + 12 * ds.num_edges() + 20 * ds.num_states());
        assert_eq!(Datastore::from_bytes(&bytes, "x").unwrap(), ds);
        let mut bad = bytes.clone();
        bad[60] ^= 1;
        let err = Datastore::from_bytes(&bad, "x.ds").unwrap_err().to_string();
        assert!(
            err.starts_with("datastore x.ds: checksum mismatch"),
            "{err}"
        );
        let err = Datastore::from_bytes(&bytes[..bytes.len() - 1], "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated or oversized"), "{err}");
        let mut bad = bytes.clone();
        bad[8] = 2;
        let err = Datastore::from_bytes(&bad, "x").unwrap_err().to_string();
        assert!(err.contains("unsupported format version 2"), "{err}");
        let err = Datastore::from_bytes(
            b"hello world, this is not a datastore at all, not at all!!!!!!!",
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bad magic"), "{err}");
    }

    /// Rewrites the checksum after a mutation, so the parser gets past it.
    fn reseal(bytes: &mut [u8]) {
        let body = bytes.len() - 4;
        let crc = crc32(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
    }

    /// The load error of the corpus's file with the header word at byte `at` set to `value`
    /// (checksum recomputed).
    fn header_edit_error(at: usize, value: u64) -> String {
        let mut bad = corpus().to_bytes();
        bad[at..at + 8].copy_from_slice(&value.to_le_bytes());
        reseal(&mut bad);
        Datastore::from_bytes(&bad, "x").unwrap_err().to_string()
    }

    #[test]
    fn huge_header_counts_are_refused_before_allocating() {
        for (at, value) in [(32, u64::MAX), (40, u64::MAX), (32, 1 << 40), (40, 1 << 61)] {
            let err = header_edit_error(at, value);
            assert!(err.contains("truncated or oversized"), "{err}");
        }
    }

    #[test]
    fn header_token_counts_are_checked() {
        for (at, value) in [(16, u64::MAX), (24, 14)] {
            let err = header_edit_error(at, value);
            assert!(err.contains("documents is out of range"), "{err}");
        }
    }

    #[test]
    fn reader_refuses_lengths_past_the_end() {
        let bytes = [0u8; 16];
        let mut r = Reader {
            bytes: &bytes,
            pos: 4,
            origin: "buf",
        };
        let err = r.u32s(usize::MAX, "len").unwrap_err().to_string();
        assert!(
            err.contains("truncated: len needs more than 2^64 bytes"),
            "{err}"
        );
        let err = r.i64s(2, "edge_token").unwrap_err().to_string();
        assert_eq!(
            err,
            "datastore buf: truncated: edge_token needs 16 bytes at offset 4, only 12 remain"
        );
        assert_eq!(r.u32s(3, "len").unwrap(), [0, 0, 0]);
    }

    #[test]
    fn a_valid_checksum_over_bad_structure_is_still_refused() {
        let ds = corpus();
        let mut bytes = ds.to_bytes();
        let s = ds.num_states();
        let e = ds.num_edges();
        // point the first suffix link (state 1) at itself
        let link_at = 48 + 12 * e + 4 * (s + 1) + 4 * s + 4;
        bytes[link_at..link_at + 4].copy_from_slice(&1u32.to_le_bytes());
        let body = bytes.len() - 4;
        let crc = crc32(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        let err = Datastore::from_bytes(&bytes, "x").unwrap_err().to_string();
        assert!(err.contains("inconsistent content"), "{err}");
    }
}

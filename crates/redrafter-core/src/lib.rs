//! Pure-Rust core of `redrafter_rs`: the beam/prefix-tree bookkeeping and the
//! lossless acceptance rule of ReDrafter speculative decoding.
//!
//! Every function works on flat row-major `i64` slices plus an explicit shape,
//! validates its input with typed [`Error`]s and never panics on caller input. Sizes that the
//! input asks for are bounded ([`MAX_MASK_ELEMENTS`], [`MAX_QUERY_TOKENS`], [`MAX_TOKENS`]) and
//! reserved fallibly, so an oversized request is an [`Error`], never an aborted process.
//!
//! * [`pack_beams`] turns `W` draft beams of `L` tokens per batch row into a packed
//!   prefix [`Tree`] (shared prefixes become shared nodes), with the ancestor
//!   attention mask and the unpacker that maps every beam token to its node.
//! * [`accept`] takes the target model's choice at every node and returns the
//!   longest accepted draft prefix plus the bonus token ([`Acceptance`]).
//!
//! ```
//! use redrafter_core::{accept, pack_beams};
//!
//! // One row, three beams of four tokens; all start with the root token 91.
//! let beams = [91, 92, 93, 95, 91, 92, 94, 96, 91, 92, 93, 97];
//! let tree = pack_beams(&beams, [1, 3, 4], None)?;
//! assert_eq!(tree.tokens, [91, 92, 93, 95, 94, 96, 97]); // 7 nodes instead of 12
//! assert_eq!(tree.unpacker[4..8], [0, 1, 4, 5]); // beam 1 -> nodes
//!
//! // The target's chosen next token at each of the 7 nodes.
//! let choice = [92, 94, 0, 0, 96, 7, 0];
//! let acc = accept(&tree.view(), &choice, [1, 7])?;
//! assert_eq!(acc.best_beam, [1]);
//! assert_eq!(acc.num_accepted, [3]); // 92, 94, 96 accepted
//! assert_eq!(acc.tokens, [92, 94, 96, 7]); // ... plus the bonus token 7
//! # Ok::<(), redrafter_core::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod accept;
mod check;
mod datastore;
mod error;
mod kv;
mod retrieve;
mod sam;
mod tree;

pub use accept::{accept, Acceptance};
pub use datastore::{crc32, Cursor, Datastore, FORMAT_VERSION, MAGIC};
pub use error::{Error, Result};
pub use kv::{plan_kv, KvPlan};
pub use retrieve::{retrieve, CandidateArrays, RequestIndex};
pub use sam::{
    merge_candidates, Candidate, QueryParams, SuffixAutomaton, MAX_QUERY_TOKENS, MAX_TOKENS,
    UNCAPPED,
};
pub use tree::{pack_beams, Tree, TreeView, BEAM_END, MAX_MASK_ELEMENTS};

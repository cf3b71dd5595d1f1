//! Lossless acceptance: the longest draft prefix the target agrees with.
//!
//! The target model runs once over the packed tree and yields, at every node, its
//! chosen next token (`choice`: an argmax for greedy decoding, or a sample). A draft
//! token is accepted when it equals the target's choice at its parent node. The
//! bonus token is the target's choice at the last accepted node, so every step
//! emits `num_accepted + 1` tokens, all of them the target's own.

use crate::error::{check_len, fmt_index, try_filled, Error, Result};
use crate::tree::TreeView;

/// Result of [`accept`] for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    /// `B`: batch rows.
    pub batch: usize,
    /// `L`: tokens per beam.
    pub length: usize,
    /// `[B]` smallest beam index whose first `num_accepted + 1` tokens are the accepted path.
    pub best_beam: Vec<i64>,
    /// `[B]` number of accepted draft tokens (`0..=L-1`); the root is not counted.
    pub num_accepted: Vec<i64>,
    /// `[B, L]` node indices root..last accepted node (`num_accepted + 1` entries), rest -1.
    pub path: Vec<i64>,
    /// `[B, L]` tokens to emit: accepted drafts `beams[best, 1..=n]`, then the bonus; rest -1.
    pub tokens: Vec<i64>,
    /// `[B]` the target's choice at the last accepted node.
    pub bonus: Vec<i64>,
}

impl Acceptance {
    /// An all-padding result for `batch` rows of `length` tokens, or
    /// [`Error::OutOfMemory`] (an overflowing `batch * length` is refused the same way).
    fn empty(batch: usize, length: usize) -> Result<Self> {
        let cells = batch.saturating_mul(length);
        Ok(Acceptance {
            batch,
            length,
            best_beam: try_filled("tree", "acceptance.best_beam", 0, batch)?,
            num_accepted: try_filled("tree", "acceptance.num_accepted", 0, batch)?,
            path: try_filled("tree", "acceptance.path", -1, cells)?,
            tokens: try_filled("tree", "acceptance.tokens", -1, cells)?,
            bonus: try_filled("tree", "acceptance.bonus", 0, batch)?,
        })
    }
}

/// Finds, per row, the longest beam prefix the target agrees with.
///
/// `choice` is flat `[B, N]` int64: the target's chosen next token at each packed
/// node. Walking from the root, the walk moves to the child of node `c` whose token
/// equals `choice[b, c]` while one exists; the bonus is `choice[b, last]`. Ties
/// between beams that reach the same node go to the smallest beam index.
///
/// Errors: [`Error::Shape`] (naming `"choice"` or a `"tree.*"` array) on wrong
/// shapes, [`Error::TokenRange`] for a negative choice at a real node,
/// [`Error::Inconsistent`] when the tree's indices are out of range, [`Error::OutOfMemory`]
/// when the result cannot be allocated. Never panics.
pub fn accept(tree: &TreeView<'_>, choice: &[i64], choice_shape: [usize; 2]) -> Result<Acceptance> {
    tree.validate_shapes()?;
    check_choice_shape(tree, choice, choice_shape)?;
    let mut out = Acceptance::empty(tree.batch, tree.length)?;
    for b in 0..tree.batch {
        let row = RowView::new(tree, choice, b)?;
        row.accept_into(&mut out, b);
    }
    Ok(out)
}

/// Checks `choice_shape == [B, N]` and `choice.len() == B * N`.
fn check_choice_shape(tree: &TreeView<'_>, choice: &[i64], shape: [usize; 2]) -> Result<()> {
    let dims = [tree.batch, tree.max_nodes];
    if shape != dims {
        return Err(Error::Shape {
            arg: "choice",
            expected: format!("[B, N] = {}", fmt_index(&dims)),
            got: fmt_index(&shape),
        });
    }
    check_len("choice", "[B, N]", &dims, choice.len())
}

/// One validated row: every index it holds is in range, so indexing cannot panic.
struct RowView<'a> {
    /// `L`.
    length: usize,
    /// `[n]` tokens of the row's real nodes.
    tokens: &'a [i64],
    /// `[n]` the target's choice at the row's real nodes.
    choice: &'a [i64],
    /// `[W, L]` unpacker of the row, each value checked to lie in `0..n`.
    unpacker: &'a [i64],
}

impl<'a> RowView<'a> {
    /// Slices row `b` out of the view and checks it.
    fn new(tree: &TreeView<'a>, choice: &'a [i64], b: usize) -> Result<Self> {
        let n = real_nodes(tree, b)?;
        let start = b * tree.max_nodes;
        let row_len = tree.width * tree.length;
        let row = RowView {
            length: tree.length,
            tokens: &tree.tokens[start..start + n],
            choice: &choice[start..start + n],
            unpacker: &tree.unpacker[b * row_len..(b + 1) * row_len],
        };
        row.check_unpacker(b, n)?;
        row.check_choice(b)?;
        Ok(row)
    }

    /// Checks every unpacker value is a real node and every beam starts at the root.
    fn check_unpacker(&self, b: usize, n: usize) -> Result<()> {
        let l = self.length;
        // Negative values wrap to huge u64s, so one comparison covers both ends.
        let in_range = |&u: &i64| (u as u64) < n as u64;
        let roots_ok = self.unpacker.iter().step_by(l).all(|&u| u == 0);
        if roots_ok && self.unpacker.iter().all(in_range) {
            return Ok(()); // fast path; below only builds the message
        }
        let bad = |(flat, u): &(usize, &i64)| {
            if flat % l == 0 {
                **u != 0
            } else {
                !in_range(u)
            }
        };
        let (flat, &u) = self
            .unpacker
            .iter()
            .enumerate()
            .find(bad)
            .unwrap_or((0, &0));
        let want = if flat % l == 0 {
            "the root 0".to_string()
        } else {
            format!("in 0..{n}")
        };
        Err(Error::Inconsistent {
            arg: "tree.unpacker",
            message: format!(
                "tree.unpacker{} = {u}, expected {want} (num_nodes[{b}] = {n})",
                fmt_index(&[b, flat / l, flat % l])
            ),
        })
    }

    /// Checks the choice at every real node is a token id (>= 0).
    fn check_choice(&self, b: usize) -> Result<()> {
        match self.choice.iter().position(|&c| c < 0) {
            Some(i) => Err(Error::TokenRange {
                arg: "choice",
                index: fmt_index(&[b, i]),
                value: self.choice[i],
                vocab_size: None,
            }),
            None => Ok(()),
        }
    }

    /// Number of leading draft tokens of beam `u` (`[L]` node ids) the target accepts. A
    /// beam that ended early repeats its last node (children always follow their parent),
    /// so the walk stops there.
    fn matches(&self, u: &[i64]) -> usize {
        let mut k = 0;
        while k + 1 < u.len()
            && u[k + 1] > u[k]
            && self.tokens[u[k + 1] as usize] == self.choice[u[k] as usize]
        {
            k += 1;
        }
        k
    }

    /// Picks the first beam with the most accepted tokens and writes row `b` of `out`.
    fn accept_into(&self, out: &mut Acceptance, b: usize) {
        let (mut best, mut best_n) = (0, 0);
        for (w, u) in self.unpacker.chunks_exact(self.length).enumerate() {
            let n = self.matches(u);
            if n > best_n {
                (best, best_n) = (w, n);
                if n + 1 == self.length {
                    break; // nothing can beat a fully accepted beam
                }
            }
        }
        let u = &self.unpacker[best * self.length..(best + 1) * self.length]; // [L]
        let l = self.length;
        let path = &mut out.path[b * l..(b + 1) * l]; // [L]
        let tokens = &mut out.tokens[b * l..(b + 1) * l]; // [L]
        path[..=best_n].copy_from_slice(&u[..=best_n]);
        for k in 1..=best_n {
            tokens[k - 1] = self.tokens[u[k] as usize];
        }
        let bonus = self.choice[u[best_n] as usize];
        tokens[best_n] = bonus;
        out.best_beam[b] = best as i64;
        out.num_accepted[b] = best_n as i64;
        out.bonus[b] = bonus;
    }
}

/// `num_nodes[b]`, checked to lie in `1..=N`.
fn real_nodes(tree: &TreeView<'_>, b: usize) -> Result<usize> {
    let n = tree.num_nodes[b];
    if n < 1 || n as u64 > tree.max_nodes as u64 {
        return Err(Error::Inconsistent {
            arg: "tree.num_nodes",
            message: format!(
                "tree.num_nodes[{b}] = {n}, expected in 1..={} (max_nodes)",
                tree.max_nodes
            ),
        });
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::pack_beams;

    const BEAMS: [i64; 12] = [91, 92, 93, 95, 91, 92, 94, 96, 91, 92, 93, 97];

    #[test]
    fn nothing_accepted() {
        let t = pack_beams(&BEAMS, [1, 3, 4], None).unwrap();
        let choice = [50, 51, 52, 53, 54, 55, 56];
        let a = accept(&t.view(), &choice, [1, 7]).unwrap();
        assert_eq!((a.best_beam[0], a.num_accepted[0], a.bonus[0]), (0, 0, 50));
        assert_eq!(a.path, [0, -1, -1, -1]);
        assert_eq!(a.tokens, [50, -1, -1, -1]);
    }

    #[test]
    fn ended_beams_stop_acceptance() {
        // Beam 1 ends at node 1 (92). The target's choice at node 1 is 92 again, which an
        // ended beam must not "accept" by comparing its repeated last node with itself.
        let beams = [91, 93, 94, 91, 92, -1];
        let t = pack_beams(&beams, [1, 2, 3], None).unwrap();
        assert_eq!(t.tokens, [91, 93, 94, 92]);
        let a = accept(&t.view(), &[92, 0, 0, 92], [1, 4]).unwrap();
        assert_eq!((a.best_beam[0], a.num_accepted[0], a.bonus[0]), (1, 1, 92));
        assert_eq!(a.path, [0, 3, -1]);
        assert_eq!(a.tokens, [92, 92, -1]);
        t.view().check_beams(&beams, [1, 2, 3]).unwrap();
    }

    #[test]
    fn partial_then_full() {
        let t = pack_beams(&BEAMS, [1, 3, 4], None).unwrap();
        // root->92, 92->94 (beam 1), 94->99 (mismatch with 96).
        let choice = [92, 94, 0, 0, 99, 0, 0];
        let a = accept(&t.view(), &choice, [1, 7]).unwrap();
        assert_eq!((a.best_beam[0], a.num_accepted[0], a.bonus[0]), (1, 2, 99));
        assert_eq!(a.path, [0, 1, 4, -1]);
        assert_eq!(a.tokens, [92, 94, 99, -1]);
        // 93 -> 97 accepts all of beam 2; the bonus is the choice at the leaf (node 6).
        let choice = [92, 93, 97, 0, 0, 0, 42];
        let a = accept(&t.view(), &choice, [1, 7]).unwrap();
        assert_eq!((a.best_beam[0], a.num_accepted[0], a.bonus[0]), (2, 3, 42));
        assert_eq!(a.path, [0, 1, 2, 6]);
        assert_eq!(a.tokens, [92, 93, 97, 42]);
    }

    #[test]
    fn tampered_view_is_inconsistent() {
        let t = pack_beams(&BEAMS, [1, 3, 4], None).unwrap();
        let mut unp = t.unpacker.clone();
        unp[5] = 7;
        let mut v = t.view();
        v.unpacker = &unp;
        let e = accept(&v, &[0; 7], [1, 7]).unwrap_err();
        assert!(matches!(
            e,
            Error::Inconsistent {
                arg: "tree.unpacker",
                ..
            }
        ));
    }
}

//! KV-cache compaction plan after acceptance, for a batch with ragged acceptance.
//!
//! After verification every row's cache holds the context followed by the `N` tree
//! slots. Row `b` keeps `num_accepted[b] + 1` of them (its accepted path, root
//! first). The plan moves those into the first `M = max_b (num_accepted[b] + 1)`
//! tree slots; rows that accepted fewer tokens get invalid (masked) slots at the end
//! of that window. Its cost is `O(B * L)`, never `O(context)`.

use crate::accept::Acceptance;
use crate::error::{try_with_capacity, Error, Result};

/// Per-row cache bookkeeping for one step (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPlan {
    /// `B`: batch rows.
    pub batch: usize,
    /// `M`: tree slots kept per row (the longest accepted path, root included).
    pub width: usize,
    /// `[B, M]` tree-node index to gather into kept slot `j`; slots past a row's path
    /// repeat its last node, so every index is valid.
    pub gather: Vec<i64>,
    /// `[B, M]` whether kept slot `j` of row `b` holds an accepted token.
    pub valid: Vec<bool>,
    /// `[B]` tokens kept per row (`num_accepted + 1`).
    pub kept: Vec<i64>,
    /// `[B]` node index of the last accepted token (its hidden state is the next `h`).
    pub last_node: Vec<i64>,
}

/// Builds the compaction plan from an [`Acceptance`].
///
/// Errors: [`Error::Inconsistent`] (naming `"acceptance"`) when the acceptance's
/// arrays disagree with each other (wrong lengths, `num_accepted` out of `0..L`, or a
/// negative path index), [`Error::OutOfMemory`] when the plan cannot be allocated. Never
/// panics.
pub fn plan_kv(acc: &Acceptance) -> Result<KvPlan> {
    let (b, l) = (acc.batch, acc.length);
    check_acceptance(acc)?;
    let width = acc
        .num_accepted
        .iter()
        .map(|&n| n as usize + 1)
        .max()
        .unwrap_or(1);
    // width <= L and B * L == path.len() were checked, so this cannot saturate.
    let cells = b.saturating_mul(width);
    let mut plan = KvPlan {
        batch: b,
        width,
        gather: try_with_capacity("acceptance", "kv_gather", cells)?,
        valid: try_with_capacity("acceptance", "kv_valid", cells)?,
        kept: try_with_capacity("acceptance", "kept", b)?,
        last_node: try_with_capacity("acceptance", "last_node", b)?,
    };
    for row in 0..b {
        let kept = acc.num_accepted[row] as usize + 1;
        let path = &acc.path[row * l..row * l + kept];
        let last = path[kept - 1];
        plan.gather.extend_from_slice(path);
        plan.gather.extend(std::iter::repeat_n(last, width - kept));
        plan.valid.extend((0..width).map(|j| j < kept));
        plan.kept.push(kept as i64);
        plan.last_node.push(last);
    }
    Ok(plan)
}

fn inconsistent(message: String) -> Error {
    Error::Inconsistent {
        arg: "acceptance",
        message,
    }
}

fn check_acceptance(acc: &Acceptance) -> Result<()> {
    let (b, l) = (acc.batch, acc.length);
    if l == 0 || acc.num_accepted.len() != b || b.checked_mul(l) != Some(acc.path.len()) {
        return Err(inconsistent(format!(
            "expected num_accepted [{b}] and path [{b}, {l}] with L >= 1, got {} and {} elements",
            acc.num_accepted.len(),
            acc.path.len()
        )));
    }
    for (row, &n) in acc.num_accepted.iter().enumerate() {
        if n < 0 || n as usize >= l {
            return Err(inconsistent(format!(
                "num_accepted[{row}] = {n} is outside [0, {l})"
            )));
        }
        let path = &acc.path[row * l..row * l + n as usize + 1];
        if let Some(bad) = path.iter().find(|&&p| p < 0) {
            return Err(inconsistent(format!(
                "path[{row}] holds {bad} within its accepted length {}",
                n + 1
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{accept, pack_beams};

    #[test]
    fn ragged_rows_share_the_longest_width() {
        // row 0 accepts 2 drafts on beam 1, row 1 accepts nothing
        let beams = [
            91, 92, 93, 95, 91, 92, 94, 96, 91, 92, 93, 97, //
            5, 6, 7, 8, 5, 9, 9, 9, 5, 6, 7, 1,
        ];
        let tree = pack_beams(&beams, [2, 3, 4], None).unwrap();
        let n = tree.max_nodes;
        let mut choice = vec![0; 2 * n];
        choice[..5].copy_from_slice(&[92, 94, 0, 0, 5]); // 92, 94 accepted, bonus 5
        choice[n] = 42; // row 1: root wants 42, no child
        let acc = accept(&tree.view(), &choice, [2, n]).unwrap();
        let plan = plan_kv(&acc).unwrap();
        assert_eq!(plan.width, 3);
        assert_eq!(plan.gather, [0, 1, 4, 0, 0, 0]);
        assert_eq!(plan.valid, [true, true, true, true, false, false]);
        assert_eq!(plan.kept, [3, 1]);
        assert_eq!(plan.last_node, [4, 0]);
    }

    #[test]
    fn tampered_acceptance_is_an_error_not_a_panic() {
        let tree = pack_beams(&[1, 2, 1, 3], [1, 2, 2], None).unwrap();
        let acc = accept(&tree.view(), &[2, 0, 0], [1, 3]).unwrap();
        let mut bad = acc.clone();
        bad.num_accepted[0] = 2;
        assert!(matches!(plan_kv(&bad), Err(Error::Inconsistent { .. })));
        let mut bad = acc.clone();
        bad.path[1] = -1;
        assert!(matches!(plan_kv(&bad), Err(Error::Inconsistent { .. })));
        let mut bad = acc;
        bad.path.pop();
        assert!(matches!(plan_kv(&bad), Err(Error::Inconsistent { .. })));
    }
}

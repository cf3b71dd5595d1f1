//! Beams to prefix tree ("dynamic tree attention").
//!
//! The drafter proposes `W` beams of `L` tokens per batch row; all beams of a row
//! start with the same root token (the last token the target emitted). Beams often
//! share prefixes, so the verifier only needs each distinct prefix once.
//! [`pack_beams`] de-duplicates the prefixes into a packed tree and returns
//! everything the verifier needs: packed tokens, depths (position offsets), parents,
//! the ancestor attention mask and the unpacker mapping each beam token to its node.

use crate::error::{
    check_len, check_limit, check_nonempty, fmt_index, try_filled, try_with_capacity, Error, Result,
};

/// Padding token that ends a beam early (see [`pack_beams`]).
pub const BEAM_END: i64 = -1;

/// Most elements the `[B, N, N]` ancestor mask of [`pack_beams`] may hold: `2^30`, one GiB of
/// `bool`s (`B * N^2` with `N` the largest row's node count).
///
/// The mask grows with the square of the node count, so a modest input can ask for an
/// impossible one: a single beam of `10^6` tokens is `10^6` nodes and a `10^12`-element mask.
/// Real draft trees are far below the limit (`B = 256` rows of `N = 2048` nodes fill it),
/// while the ordinary allocator would abort the process on such a request. Past the limit
/// [`pack_beams`] returns [`Error::TooLarge`] naming the limit and the requested size.
pub const MAX_MASK_ELEMENTS: usize = 1 << 30;

/// Packed prefix tree for a batch of beams. Row `b` has `num_nodes[b]` real nodes,
/// padded to `max_nodes` (`N`).
///
/// Nodes are numbered in row-major (beam-major, then depth) order of first
/// occurrence: node 0 is the root and every parent index is smaller than its
/// children's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// `B`: batch rows.
    pub batch: usize,
    /// `W`: beams per row.
    pub width: usize,
    /// `L`: tokens per beam (root included).
    pub length: usize,
    /// `N = max_b num_nodes[b]`.
    pub max_nodes: usize,
    /// `[B, N]` packed unique-prefix tokens; padding = 0.
    pub tokens: Vec<i64>,
    /// `[B, N]` depth in the tree (root = 0); padding = 0.
    pub depth: Vec<i64>,
    /// `[B, N]` parent node index; root = -1; padding = -1.
    pub parent: Vec<i64>,
    /// `[B, N, N]` `mask[b, i, j]` = node `j` is an ancestor of node `i` or `j == i`.
    /// Padding nodes see only themselves.
    pub mask: Vec<bool>,
    /// `[B, W, L]` node index of `beams[b, w, k]`: `tokens[b, unpacker[b, w, k]] == beams[b, w, k]`;
    /// past a beam's end ([`BEAM_END`]), the beam's last real node.
    pub unpacker: Vec<i64>,
    /// `[B]` number of real nodes per row.
    pub num_nodes: Vec<i64>,
}

impl Tree {
    /// Borrows the arrays that [`crate::accept`] needs.
    pub fn view(&self) -> TreeView<'_> {
        TreeView {
            batch: self.batch,
            width: self.width,
            length: self.length,
            max_nodes: self.max_nodes,
            tokens: &self.tokens,
            depth: &self.depth,
            parent: &self.parent,
            unpacker: &self.unpacker,
            num_nodes: &self.num_nodes,
        }
    }
}

/// Borrowed view of a tree's arrays (the Python binding builds one from numpy
/// slices). The mask is not needed.
///
/// The fields are public, so a view may be built without [`TreeView::new`];
/// [`crate::accept`] re-validates everything it reads and never panics.
#[derive(Debug, Clone, Copy)]
pub struct TreeView<'a> {
    /// `B`: batch rows.
    pub batch: usize,
    /// `W`: beams per row.
    pub width: usize,
    /// `L`: tokens per beam.
    pub length: usize,
    /// `N`: padded node count per row.
    pub max_nodes: usize,
    /// `[B, N]` packed tokens.
    pub tokens: &'a [i64],
    /// `[B, N]` node depths.
    pub depth: &'a [i64],
    /// `[B, N]` parent indices.
    pub parent: &'a [i64],
    /// `[B, W, L]` node index of each beam token.
    pub unpacker: &'a [i64],
    /// `[B]` real nodes per row.
    pub num_nodes: &'a [i64],
}

impl<'a> TreeView<'a> {
    /// Builds a view, checking `B, W, L >= 1` ([`Error::EmptyDim`]) and every slice
    /// length against the dims ([`Error::Shape`] naming e.g. `"tree.tokens"`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: usize,
        width: usize,
        length: usize,
        max_nodes: usize,
        tokens: &'a [i64],
        depth: &'a [i64],
        parent: &'a [i64],
        unpacker: &'a [i64],
        num_nodes: &'a [i64],
    ) -> Result<Self> {
        let view = TreeView {
            batch,
            width,
            length,
            max_nodes,
            tokens,
            depth,
            parent,
            unpacker,
            num_nodes,
        };
        view.validate_shapes()?;
        Ok(view)
    }

    /// Checks the dims and slice lengths (not the contents).
    pub(crate) fn validate_shapes(&self) -> Result<()> {
        let (b, w, l, n) = (self.batch, self.width, self.length, self.max_nodes);
        check_nonempty("tree", &[("B", b), ("W", w), ("L", l)])?;
        check_len("tree.tokens", "[B, N]", &[b, n], self.tokens.len())?;
        check_len("tree.depth", "[B, N]", &[b, n], self.depth.len())?;
        check_len("tree.parent", "[B, N]", &[b, n], self.parent.len())?;
        check_len(
            "tree.unpacker",
            "[B, W, L]",
            &[b, w, l],
            self.unpacker.len(),
        )?;
        check_len("tree.num_nodes", "[B]", &[b], self.num_nodes.len())
    }
}

/// Packs a batch of beams into a prefix tree.
///
/// `beams` is flat row-major `[B, W, L]` int64 with `shape = [B, W, L]`.
/// Beam token `(w, k)` maps to the node of the first beam `w' <= w` with
/// `beams[w', :k+1] == beams[w, :k+1]`.
///
/// A beam may end early: [`BEAM_END`] (`-1`) at depth `k >= 1` and at every later depth.
/// Its padded positions map to the beam's last real node and create no node, so a tree
/// whose branches have different depths (a best-nodes draft tree) costs only its nodes;
/// [`crate::accept`] never accepts past a beam's end.
///
/// Errors: [`Error::EmptyDim`] if a dim is 0, [`Error::Shape`] if
/// `beams.len() != B * W * L`, [`Error::TokenRange`] for a negative token or one
/// `>= V` when `vocab_size = Some(V)`, [`Error::RootMismatch`] when the beams of a
/// row do not share `beams[b, 0, 0]`, [`Error::TooLarge`] when the mask would hold more than
/// [`MAX_MASK_ELEMENTS`] elements, [`Error::OutOfMemory`] when an output cannot be allocated.
/// Never panics, and never aborts on a size the input asks for.
pub fn pack_beams(beams: &[i64], shape: [usize; 3], vocab_size: Option<usize>) -> Result<Tree> {
    validate_beams(beams, shape, vocab_size)?;
    let [batch, width, length] = shape;
    // `beams.len() == B * W * L` was checked, so these products cannot overflow.
    let row_len = width * length;
    if row_len > max_row_nodes(batch) {
        // A row could be past the mask limit: count its nodes first, in O(W L log W), so the
        // builder's sibling scans (O(W^2) for a wide fan-out) only run on trees that are kept.
        let mut widest = 0;
        for row in beams.chunks_exact(row_len) {
            widest = widest.max(count_nodes(row, width, length)?);
        }
        mask_len(batch, widest)?;
    }
    let mut builder = RowBuilder::with_capacity(row_len)?;
    let mut unpacker = try_filled("beams", "tree.unpacker", 0i64, beams.len())?; // [B, W, L]
                                                                                 // [B, W*L]: flat index of the first occurrence of node i
    let mut origin = try_filled("beams", "the node origins", 0usize, beams.len())?;
    let mut num_nodes = try_filled("beams", "tree.num_nodes", 0i64, batch)?; // [B]
    let rows = beams
        .chunks_exact(row_len)
        .zip(unpacker.chunks_exact_mut(row_len))
        .zip(origin.chunks_exact_mut(row_len));
    for (count, ((row, unp), orig)) in num_nodes.iter_mut().zip(rows) {
        *count = builder.build_row(row, length, unp, orig) as i64;
    }
    let max_nodes = num_nodes.iter().copied().max().unwrap_or(0) as usize;
    let mask_len = mask_len(batch, max_nodes)?;
    let nodes = batch * max_nodes; // <= B * W * L
    let mut tree = Tree {
        batch,
        width,
        length,
        max_nodes,
        tokens: try_filled("beams", "tree.tokens", 0, nodes)?,
        depth: try_filled("beams", "tree.depth", 0, nodes)?,
        parent: try_filled("beams", "tree.parent", -1, nodes)?,
        mask: try_filled("beams", "tree.mask", false, mask_len)?,
        unpacker,
        num_nodes,
    };
    for (b, row) in beams.chunks_exact(row_len).enumerate() {
        fill_row(&mut tree, b, row, &origin);
    }
    Ok(tree)
}

/// The most nodes a row of a `batch`-row tree may have within [`MAX_MASK_ELEMENTS`].
fn max_row_nodes(batch: usize) -> usize {
    (MAX_MASK_ELEMENTS / batch.max(1)).isqrt()
}

/// The node count of one row (`[W, L]`, validated) without building it: sorted beams share
/// their longest common prefix with the previous one, every other token is a new node.
fn count_nodes(row: &[i64], width: usize, length: usize) -> Result<usize> {
    let beam = |w: usize| {
        let b = &row[w * length..(w + 1) * length];
        &b[..b.iter().position(|&t| t == BEAM_END).unwrap_or(length)]
    };
    let mut order = try_with_capacity("beams", "the node count's scratch", width)?;
    order.extend(0..width);
    order.sort_unstable_by(|&a, &b| beam(a).cmp(beam(b)));
    let mut nodes = 0;
    let mut previous: &[i64] = &[];
    for &w in &order {
        let current = beam(w);
        let shared = current
            .iter()
            .zip(previous)
            .take_while(|(a, b)| a == b)
            .count();
        nodes += current.len() - shared;
        previous = current;
    }
    Ok(nodes)
}

/// `B * N * N`, or [`Error::TooLarge`] past [`MAX_MASK_ELEMENTS`].
fn mask_len(batch: usize, max_nodes: usize) -> Result<usize> {
    check_limit(
        "beams",
        || format!("the [B, N, N] ancestor mask (B = {batch}, N = {max_nodes} nodes)"),
        &[batch, max_nodes, max_nodes],
        MAX_MASK_ELEMENTS,
        "MAX_MASK_ELEMENTS",
    )
}

/// Checks dims, length, token range and shared roots of `beams`.
fn validate_beams(beams: &[i64], shape: [usize; 3], vocab_size: Option<usize>) -> Result<()> {
    let [batch, width, length] = shape;
    check_nonempty("beams", &[("B", batch), ("W", width), ("L", length)])?;
    check_len("beams", "[B, W, L]", &shape, beams.len())?;
    let limit = vocab_size.map_or(i128::MAX, |v| v as i128);
    let index = |flat: usize| {
        fmt_index(&[
            flat / (width * length),
            flat / length % width,
            flat % length,
        ])
    };
    let end_ok = |flat: usize| flat % length > 0; // a beam may end after its root
    let bad = |(flat, &t): (usize, &i64)| {
        (t < 0 && !(t == BEAM_END && end_ok(flat))) || i128::from(t) >= limit
    };
    if let Some((flat, &value)) = beams.iter().enumerate().find(|&x| bad(x)) {
        return Err(Error::TokenRange {
            arg: "beams",
            index: index(flat),
            value,
            vocab_size,
        });
    }
    let resumed = |flat: usize| end_ok(flat) && beams[flat - 1] == BEAM_END && beams[flat] >= 0;
    if let Some(flat) = (0..beams.len()).find(|&f| resumed(f)) {
        return Err(Error::Inconsistent {
            arg: "beams",
            message: format!(
                "beams{} = {} follows the beam's end ({BEAM_END}): an ended beam stays {BEAM_END}",
                index(flat),
                beams[flat]
            ),
        });
    }
    check_roots(beams, shape)
}

/// Checks `beams[b, w, 0] == beams[b, 0, 0]` for every row and beam.
fn check_roots(beams: &[i64], [batch, width, length]: [usize; 3]) -> Result<()> {
    for b in 0..batch {
        let root = beams[b * width * length]; // beams[b, 0, 0]
        for w in 1..width {
            let got = beams[(b * width + w) * length]; // beams[b, w, 0]
            if got != root {
                return Err(Error::RootMismatch {
                    row: b,
                    beam: w,
                    expected: root,
                    got,
                });
            }
        }
    }
    Ok(())
}

/// Marker for "no node" in the builder's linked lists.
const NONE: usize = usize::MAX;

/// Reusable scratch for building one row's tree: an intrusive first-child /
/// next-sibling list, so no per-node allocation happens.
struct RowBuilder {
    /// `[W*L]` first child of each node (NONE if a leaf).
    first_child: Vec<usize>,
    /// `[W*L]` next sibling of each node (NONE if last).
    next_sibling: Vec<usize>,
    /// `[W*L]` token of each node.
    token: Vec<i64>,
}

impl RowBuilder {
    /// Scratch for rows of up to `cap` nodes.
    fn with_capacity(cap: usize) -> Result<Self> {
        Ok(RowBuilder {
            first_child: try_filled("beams", "the tree builder's scratch", NONE, cap)?,
            next_sibling: try_filled("beams", "the tree builder's scratch", NONE, cap)?,
            token: try_filled("beams", "the tree builder's scratch", 0, cap)?,
        })
    }

    /// Builds one row. `beams` is `[W, L]`; writes `unpacker` (`[W, L]`) and
    /// `origin[i]` = flat `w * L + k` of node `i`'s first occurrence. Returns the
    /// node count.
    fn build_row(
        &mut self,
        beams: &[i64],
        length: usize,
        unpacker: &mut [i64],
        origin: &mut [usize],
    ) -> usize {
        let mut count = self.create(NONE, beams[0], 0, origin, 0);
        for (w, beam) in beams.chunks_exact(length).enumerate() {
            let mut node = 0; // every beam starts at the root
            let mut fresh = false; // beam already diverged from all earlier beams
            unpacker[w * length] = 0;
            for k in 1..length {
                if beam[k] == BEAM_END {
                    unpacker[w * length + k] = node as i64; // ended: stays at its last node
                    continue;
                }
                let found = if fresh {
                    NONE
                } else {
                    self.find_child(node, beam[k])
                };
                node = if found != NONE {
                    found
                } else {
                    fresh = true;
                    count = self.create(node, beam[k], w * length + k, origin, count);
                    count - 1
                };
                unpacker[w * length + k] = node as i64;
            }
        }
        count
    }

    /// The child of `parent` holding `token`, or NONE.
    fn find_child(&self, parent: usize, token: i64) -> usize {
        let mut c = self.first_child[parent];
        while c != NONE && self.token[c] != token {
            c = self.next_sibling[c];
        }
        c
    }

    /// Appends node `id` under `parent` (NONE for the root); returns `id + 1`.
    fn create(
        &mut self,
        parent: usize,
        token: i64,
        flat: usize,
        origin: &mut [usize],
        id: usize,
    ) -> usize {
        origin[id] = flat;
        self.token[id] = token;
        self.first_child[id] = NONE;
        self.next_sibling[id] = NONE;
        if parent != NONE {
            self.next_sibling[id] = self.first_child[parent];
            self.first_child[parent] = id;
        }
        id + 1
    }
}

/// Fills row `b` of tokens/depth/parent/mask from the node origins.
/// `beams` is the row's `[W, L]` block; `origin` is `[B, W*L]`.
fn fill_row(tree: &mut Tree, b: usize, beams: &[i64], origin: &[usize]) {
    let (n_pad, length, row_len) = (tree.max_nodes, tree.length, tree.width * tree.length);
    let count = tree.num_nodes[b] as usize;
    let origin = &origin[b * row_len..b * row_len + count];
    let unpacker = &tree.unpacker[b * row_len..(b + 1) * row_len]; // [W, L]
    let tokens = &mut tree.tokens[b * n_pad..(b + 1) * n_pad]; // [N]
    let depth = &mut tree.depth[b * n_pad..(b + 1) * n_pad]; // [N]
    let parent = &mut tree.parent[b * n_pad..(b + 1) * n_pad]; // [N]
    for (i, &flat) in origin.iter().enumerate() {
        tokens[i] = beams[flat];
        depth[i] = (flat % length) as i64;
        // A non-root node first occurs at k >= 1; its parent is the node one step up the same beam.
        parent[i] = if i == 0 { -1 } else { unpacker[flat - 1] };
    }
    let mask = &mut tree.mask[b * n_pad * n_pad..(b + 1) * n_pad * n_pad]; // [N, N]
    fill_mask(mask, parent, count, n_pad);
}

/// Writes an `[N, N]` ancestor mask: row `i` = row `parent[i]` plus the diagonal.
/// Parents precede children, so each parent row is complete before it is copied.
fn fill_mask(mask: &mut [bool], parent: &[i64], count: usize, n_pad: usize) {
    for i in 0..n_pad {
        if i > 0 && i < count {
            let p = parent[i] as usize;
            mask.copy_within(p * n_pad..p * n_pad + p + 1, i * n_pad);
        }
        mask[i * n_pad + i] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders row `b` of the mask as lines of '0'/'1'.
    fn mask_rows(t: &Tree, b: usize) -> Vec<String> {
        let n = t.max_nodes;
        (0..n)
            .map(|i| {
                let row = &t.mask[(b * n + i) * n..(b * n + i + 1) * n];
                row.iter().map(|&m| if m { '1' } else { '0' }).collect()
            })
            .collect()
    }

    #[test]
    fn hand_worked_example() {
        let beams = [91, 92, 93, 95, 91, 92, 94, 96, 91, 92, 93, 97];
        let t = pack_beams(&beams, [1, 3, 4], None).unwrap();
        assert_eq!(t.max_nodes, 7);
        assert_eq!(t.tokens, [91, 92, 93, 95, 94, 96, 97]);
        assert_eq!(t.depth, [0, 1, 2, 3, 2, 3, 3]);
        assert_eq!(t.parent, [-1, 0, 1, 2, 1, 4, 2]);
        assert_eq!(t.unpacker, [0, 1, 2, 3, 0, 1, 4, 5, 0, 1, 2, 6]);
        assert_eq!(t.num_nodes, [7]);
        let expected = [
            "1000000", "1100000", "1110000", "1111000", "1100100", "1100110", "1110001",
        ];
        assert_eq!(mask_rows(&t, 0), expected);
    }

    #[test]
    fn single_node() {
        let t = pack_beams(&[5], [1, 1, 1], Some(6)).unwrap();
        assert_eq!((t.max_nodes, t.tokens.clone()), (1, vec![5]));
        assert_eq!((t.parent.clone(), t.mask.clone()), (vec![-1], vec![true]));
    }

    #[test]
    fn padding_rows() {
        // Row 0: two identical beams (3 nodes); row 1: distinct beams (5 nodes).
        let beams = [1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 7, 8];
        let t = pack_beams(&beams, [2, 2, 3], None).unwrap();
        assert_eq!(t.num_nodes, [3, 5]);
        assert_eq!(t.tokens, [1, 2, 3, 0, 0, 4, 5, 6, 7, 8]);
        assert_eq!(t.depth, [0, 1, 2, 0, 0, 0, 1, 2, 1, 2]);
        assert_eq!(t.parent, [-1, 0, 1, -1, -1, -1, 0, 1, 0, 3]);
        assert_eq!(
            mask_rows(&t, 0),
            ["10000", "11000", "11100", "00010", "00001"]
        );
        assert_eq!(
            mask_rows(&t, 1),
            ["10000", "11000", "11100", "10010", "10011"]
        );
    }

    #[test]
    fn validation_errors() {
        let e = pack_beams(&[], [1, 0, 3], None).unwrap_err();
        assert_eq!(
            e,
            Error::EmptyDim {
                arg: "beams",
                dim: "W"
            }
        );
        let e = pack_beams(&[1, 2], [1, 1, 3], None).unwrap_err();
        assert!(matches!(e, Error::Shape { arg: "beams", .. }));
        let e = pack_beams(&[1, 2, 1, 9], [1, 2, 2], Some(9)).unwrap_err();
        assert_eq!(
            e,
            Error::TokenRange {
                arg: "beams",
                index: "[0, 1, 1]".into(),
                value: 9,
                vocab_size: Some(9)
            }
        );
        let e = pack_beams(&[1, 2, 3, 2], [1, 2, 2], None).unwrap_err();
        assert_eq!(
            e,
            Error::RootMismatch {
                row: 0,
                beam: 1,
                expected: 1,
                got: 3
            }
        );
    }

    #[test]
    fn counting_nodes_agrees_with_building_the_tree() {
        let rows: [&[i64]; 4] = [
            &[1, 2, 3, 1, 2, 4, 1, 5, 3, 1, 2, 3],
            &[7, -1, -1, 7, 8, -1, 7, 8, 9, 7, 9, -1],
            &[4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4],
            &[0, 3, 2, 0, 2, 3, 0, 3, 3, 0, 2, 2],
        ];
        for row in rows {
            let tree = pack_beams(row, [1, 4, 3], None).unwrap();
            assert_eq!(
                count_nodes(row, 4, 3).unwrap() as i64,
                tree.num_nodes[0],
                "{row:?}"
            );
        }
    }

    #[test]
    fn a_wide_fan_out_past_the_limit_is_refused_before_building() {
        // 10^6 beams that all diverge after the root: building would scan siblings O(W^2).
        let width = 1_000_000;
        let beams: Vec<i64> = (0..width as i64).flat_map(|w| [0, w]).collect();
        let start = std::time::Instant::now();
        let e = pack_beams(&beams, [1, width, 2], None).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
        assert!(e.to_string().contains("N = 1000001 nodes"), "{e}");
        assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
    }

    #[test]
    fn a_mask_past_the_limit_is_an_error() {
        // One beam of 40000 tokens is a chain of 40000 nodes: a 1.6e9-element mask.
        let beams = vec![3i64; 40_000];
        let e = pack_beams(&beams, [1, 1, 40_000], None).unwrap_err();
        assert_eq!(
            e,
            Error::TooLarge {
                arg: "beams",
                what: "the [B, N, N] ancestor mask (B = 1, N = 40000 nodes)".into(),
                requested: Some(1_600_000_000),
                limit: MAX_MASK_ELEMENTS,
                limit_name: "MAX_MASK_ELEMENTS",
            }
        );
        assert!(e.to_string().contains(
            "would hold 1600000000 elements, more than the limit of 1073741824 (MAX_MASK_ELEMENTS)"
        ));
        // Just under the limit in elements per row, with ended beams keeping N small.
        let mut beams = vec![BEAM_END; 2 * 40_000];
        beams[0] = 1;
        beams[40_000] = 1;
        let t = pack_beams(&beams, [1, 2, 40_000], None).unwrap();
        assert_eq!((t.max_nodes, t.mask.len()), (1, 1));
    }

    #[test]
    fn ragged_beams_end_early() {
        // Beam 0: 91 92 93 95; beam 1 ends after 94; beam 2 ends at the root's child 98.
        let beams = [91, 92, 93, 95, 91, 94, -1, -1, 91, 98, -1, -1];
        let t = pack_beams(&beams, [1, 3, 4], Some(100)).unwrap();
        assert_eq!(t.num_nodes, [6]);
        assert_eq!(t.tokens, [91, 92, 93, 95, 94, 98]);
        assert_eq!(t.depth, [0, 1, 2, 3, 1, 1]);
        assert_eq!(t.parent, [-1, 0, 1, 2, 0, 0]);
        assert_eq!(t.unpacker, [0, 1, 2, 3, 0, 4, 4, 4, 0, 5, 5, 5]);
        let expected = ["100000", "110000", "111000", "111100", "100010", "100001"];
        assert_eq!(mask_rows(&t, 0), expected);
        // A beam that is only its root adds nothing.
        let t = pack_beams(&[7, 8, 7, -1], [1, 2, 2], None).unwrap();
        assert_eq!(
            (t.num_nodes.clone(), t.unpacker.clone()),
            (vec![2], vec![0, 1, 0, 0])
        );
    }

    #[test]
    fn ragged_beams_errors() {
        // -1 as a root, a token after a beam's end, other negatives.
        let e = pack_beams(&[-1, 2], [1, 1, 2], None).unwrap_err();
        assert!(matches!(e, Error::TokenRange { value: -1, .. }), "{e}");
        let e = pack_beams(&[1, -1, 3], [1, 1, 3], None).unwrap_err();
        assert!(matches!(e, Error::Inconsistent { arg: "beams", .. }), "{e}");
        assert!(
            e.to_string()
                .contains("beams[0, 0, 2] = 3 follows the beam's end"),
            "{e}"
        );
        let e = pack_beams(&[1, -2, -2], [1, 1, 3], None).unwrap_err();
        assert!(matches!(e, Error::TokenRange { value: -2, .. }), "{e}");
    }

    #[test]
    fn view_checks_lengths() {
        let t = pack_beams(&[1, 2, 1, 3], [1, 2, 2], None).unwrap();
        let v = t.view();
        let ok = TreeView::new(
            1,
            2,
            2,
            3,
            v.tokens,
            v.depth,
            v.parent,
            v.unpacker,
            v.num_nodes,
        );
        assert!(ok.is_ok());
        let bad = TreeView::new(
            1,
            2,
            2,
            3,
            &v.tokens[..2],
            v.depth,
            v.parent,
            v.unpacker,
            v.num_nodes,
        );
        assert!(matches!(
            bad,
            Err(Error::Shape {
                arg: "tree.tokens",
                ..
            })
        ));
        let empty = TreeView::new(
            1,
            2,
            0,
            3,
            v.tokens,
            v.depth,
            v.parent,
            v.unpacker,
            v.num_nodes,
        );
        assert_eq!(
            empty.unwrap_err(),
            Error::EmptyDim {
                arg: "tree",
                dim: "L"
            }
        );
    }
}

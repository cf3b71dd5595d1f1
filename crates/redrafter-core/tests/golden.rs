//! Hand-checked cases for `pack_beams` and `accept`, plus every error variant.

use redrafter_core::{accept, pack_beams, Error, Tree, TreeView};

/// The worked example: B=1, W=3, L=4.
const BEAMS: [i64; 12] = [
    91, 92, 93, 95, // beam 0
    91, 92, 94, 96, // beam 1
    91, 92, 93, 97, // beam 2
];

/// The example's tree.
fn example() -> Tree {
    pack_beams(&BEAMS, [1, 3, 4], None).unwrap()
}

/// Row `b` of the mask as '0'/'1' strings.
fn mask_rows(t: &Tree, b: usize) -> Vec<String> {
    let n = t.max_nodes;
    t.mask[b * n * n..(b + 1) * n * n]
        .chunks(n)
        .map(|r| r.iter().map(|&m| if m { '1' } else { '0' }).collect())
        .collect()
}

/// Checks `tokens[b, unpacker[b, w, k]] == beams[b, w, k]` everywhere.
fn assert_unpacks(t: &Tree, beams: &[i64]) {
    let row_len = t.width * t.length;
    for (flat, &u) in t.unpacker.iter().enumerate() {
        let b = flat / row_len;
        assert_eq!(t.tokens[b * t.max_nodes + u as usize], beams[flat]);
    }
}

// ---------------------------------------------------------------- pack_beams

#[test]
fn worked_example_all_arrays() {
    let t = example();
    assert_eq!((t.batch, t.width, t.length, t.max_nodes), (1, 3, 4, 7));
    assert_eq!(t.tokens, [91, 92, 93, 95, 94, 96, 97]);
    assert_eq!(t.depth, [0, 1, 2, 3, 2, 3, 3]);
    assert_eq!(t.parent, [-1, 0, 1, 2, 1, 4, 2]);
    assert_eq!(t.unpacker, [0, 1, 2, 3, 0, 1, 4, 5, 0, 1, 2, 6]);
    assert_eq!(t.num_nodes, [7]);
    assert_eq!(
        mask_rows(&t, 0),
        ["1000000", "1100000", "1110000", "1111000", "1100100", "1100110", "1110001"]
    );
}

#[test]
fn single_beam_single_token() {
    let t = pack_beams(&[7], [1, 1, 1], Some(8)).unwrap();
    assert_eq!(t.max_nodes, 1);
    assert_eq!((t.tokens, t.depth, t.parent), (vec![7], vec![0], vec![-1]));
    assert_eq!(
        (t.mask, t.unpacker, t.num_nodes),
        (vec![true], vec![0], vec![1])
    );
}

#[test]
fn length_two() {
    // Beams 0 and 2 share their draft token; beam 1 differs.
    let beams = [4, 5, 4, 6, 4, 5];
    let t = pack_beams(&beams, [1, 3, 2], None).unwrap();
    assert_eq!(t.tokens, [4, 5, 6]);
    assert_eq!(t.depth, [0, 1, 1]);
    assert_eq!(t.parent, [-1, 0, 0]);
    assert_eq!(t.unpacker, [0, 1, 0, 2, 0, 1]);
    assert_eq!(mask_rows(&t, 0), ["100", "110", "101"]);
}

#[test]
fn identical_beams_form_a_chain() {
    let beams: Vec<i64> = [3, 1, 4, 1, 5].repeat(6);
    let t = pack_beams(&beams, [1, 6, 5], None).unwrap();
    assert_eq!(t.num_nodes, [5]);
    assert_eq!(t.tokens, [3, 1, 4, 1, 5]);
    assert_eq!(t.depth, [0, 1, 2, 3, 4]);
    assert_eq!(t.parent, [-1, 0, 1, 2, 3]);
    assert_eq!(t.unpacker, [0, 1, 2, 3, 4].repeat(6));
    assert_eq!(
        mask_rows(&t, 0),
        ["10000", "11000", "11100", "11110", "11111"]
    );
}

#[test]
fn distinct_beams_share_only_the_root() {
    let (w, l) = (4usize, 3usize);
    let beams: Vec<i64> = (0..w)
        .flat_map(|b| [9, 10 + b as i64, 20 + b as i64])
        .collect();
    let t = pack_beams(&beams, [1, w, l], None).unwrap();
    assert_eq!(t.max_nodes, 1 + w * (l - 1));
    assert_eq!(t.tokens, [9, 10, 20, 11, 21, 12, 22, 13, 23]);
    assert_eq!(t.parent, [-1, 0, 1, 0, 3, 0, 5, 0, 7]);
    assert_eq!(t.depth, [0, 1, 2, 1, 2, 1, 2, 1, 2]);
    assert_eq!(t.unpacker, [0, 1, 2, 0, 3, 4, 0, 5, 6, 0, 7, 8]);
    assert_unpacks(&t, &beams);
}

#[test]
fn batch_of_two_pads_the_smaller_row() {
    let beams = [
        1, 2, 3, 1, 2, 3, // row 0: identical beams -> 3 nodes
        8, 2, 3, 8, 4, 3, // row 1: split at depth 1 -> 5 nodes
    ];
    let t = pack_beams(&beams, [2, 2, 3], Some(9)).unwrap();
    assert_eq!(t.num_nodes, [3, 5]);
    assert_eq!(t.max_nodes, 5);
    assert_eq!(t.tokens, [1, 2, 3, 0, 0, 8, 2, 3, 4, 3]);
    assert_eq!(t.depth, [0, 1, 2, 0, 0, 0, 1, 2, 1, 2]);
    assert_eq!(t.parent, [-1, 0, 1, -1, -1, -1, 0, 1, 0, 3]);
    assert_eq!(t.unpacker, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 3, 4]);
    assert_eq!(
        mask_rows(&t, 0),
        ["10000", "11000", "11100", "00010", "00001"]
    );
    assert_eq!(
        mask_rows(&t, 1),
        ["10000", "11000", "11100", "10010", "10011"]
    );
    assert_unpacks(&t, &beams);
}

#[test]
fn view_round_trips_through_new() {
    let t = example();
    let v = t.view();
    let v2 = TreeView::new(
        1,
        3,
        4,
        7,
        &t.tokens,
        &t.depth,
        &t.parent,
        &t.unpacker,
        &t.num_nodes,
    )
    .unwrap();
    let choice = [92, 94, 0, 0, 96, 1, 0];
    assert_eq!(
        accept(&v, &choice, [1, 7]).unwrap(),
        accept(&v2, &choice, [1, 7]).unwrap()
    );
}

// ---------------------------------------------------------------- accept

#[test]
fn nothing_accepted_emits_the_choice_at_the_root() {
    let t = example();
    let choice = [60, 61, 62, 63, 64, 65, 66];
    let a = accept(&t.view(), &choice, [1, 7]).unwrap();
    assert_eq!((a.batch, a.length), (1, 4));
    assert_eq!(a.best_beam, [0]);
    assert_eq!(a.num_accepted, [0]);
    assert_eq!(a.path, [0, -1, -1, -1]);
    assert_eq!(a.tokens, [60, -1, -1, -1]);
    assert_eq!(a.bonus, [60]);
}

#[test]
fn everything_accepted_on_beam_two() {
    let t = example();
    // root -> 92 -> 93 -> 97 (beam 2's leaf is node 6, choice there = 11).
    let choice = [92, 93, 97, 0, 0, 0, 11];
    let a = accept(&t.view(), &choice, [1, 7]).unwrap();
    assert_eq!(a.best_beam, [2]);
    assert_eq!(a.num_accepted, [3]);
    assert_eq!(a.path, [0, 1, 2, 6]);
    assert_eq!(a.tokens, [92, 93, 97, 11]);
    assert_eq!(a.bonus, [11]);
}

#[test]
fn partial_acceptance() {
    let t = example();
    // root -> 92 -> 94, then node 4 wants 50 but beam 1 has 96.
    let choice = [92, 94, 0, 0, 50, 0, 0];
    let a = accept(&t.view(), &choice, [1, 7]).unwrap();
    assert_eq!(a.best_beam, [1]);
    assert_eq!(a.num_accepted, [2]);
    assert_eq!(a.path, [0, 1, 4, -1]);
    assert_eq!(a.tokens, [92, 94, 50, -1]);
    assert_eq!(a.bonus, [50]);
}

#[test]
fn ties_go_to_the_smallest_beam() {
    let t = example();
    // Beams 0 and 2 both accept 92, 93 and stop at node 2 (choice 1 matches neither 95 nor 97).
    let choice = [92, 93, 1, 0, 0, 0, 0];
    let a = accept(&t.view(), &choice, [1, 7]).unwrap();
    assert_eq!((a.best_beam, a.num_accepted), (vec![0], vec![2]));
    assert_eq!(a.tokens, [92, 93, 1, -1]);
    // Only the root accepted: all three beams tie at 0 -> beam 0.
    let a = accept(&t.view(), &[5, 0, 0, 0, 0, 0, 0], [1, 7]).unwrap();
    assert_eq!(a.best_beam, [0]);
}

#[test]
fn batch_rows_are_independent_and_padding_choice_is_ignored() {
    let beams = [1, 2, 3, 1, 2, 3, 8, 2, 3, 8, 4, 3];
    let t = pack_beams(&beams, [2, 2, 3], None).unwrap();
    // Row 0 has 3 real nodes; its padding choices (-5, -6) must be ignored.
    let choice = [2, 3, 9, -5, -6, 4, 0, 0, 3, 7];
    let a = accept(&t.view(), &choice, [2, 5]).unwrap();
    assert_eq!(a.best_beam, [0, 1]);
    assert_eq!(a.num_accepted, [2, 2]);
    assert_eq!(a.path, [0, 1, 2, 0, 3, 4]);
    assert_eq!(a.tokens, [2, 3, 9, 4, 3, 7]);
    assert_eq!(a.bonus, [9, 7]);
}

#[test]
fn single_node_tree_accepts_nothing() {
    let t = pack_beams(&[7], [1, 1, 1], None).unwrap();
    let a = accept(&t.view(), &[3], [1, 1]).unwrap();
    assert_eq!(
        (a.num_accepted, a.tokens, a.path),
        (vec![0], vec![3], vec![0])
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn empty_dims() {
    for (shape, dim) in [([0, 2, 2], "B"), ([1, 0, 2], "W"), ([1, 2, 0], "L")] {
        let e = pack_beams(&[], shape, None).unwrap_err();
        assert_eq!(e, Error::EmptyDim { arg: "beams", dim });
    }
    let e = pack_beams(&[], [1, 0, 4], None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "beams: expected shape [B, W, L] with W >= 1, got W = 0"
    );
    let t = example();
    let e = TreeView::new(
        0,
        3,
        4,
        7,
        &t.tokens,
        &t.depth,
        &t.parent,
        &t.unpacker,
        &t.num_nodes,
    )
    .unwrap_err();
    assert_eq!(
        e,
        Error::EmptyDim {
            arg: "tree",
            dim: "B"
        }
    );
}

#[test]
fn wrong_beam_length() {
    let e = pack_beams(&BEAMS[..11], [1, 3, 4], None).unwrap_err();
    assert_eq!(
        e,
        Error::Shape {
            arg: "beams",
            expected: "[B, W, L] = [1, 3, 4] (12 elements)".into(),
            got: "11 elements".into(),
        }
    );
    assert!(e.to_string().starts_with("beams: expected shape [B, W, L]"));
}

#[test]
fn negative_token() {
    let mut beams = BEAMS;
    beams[6] = -3;
    let e = pack_beams(&beams, [1, 3, 4], None).unwrap_err();
    assert_eq!(
        e,
        Error::TokenRange {
            arg: "beams",
            index: "[0, 1, 2]".into(),
            value: -3,
            vocab_size: None,
        }
    );
}

#[test]
fn token_at_or_above_vocab() {
    assert!(pack_beams(&BEAMS, [1, 3, 4], Some(98)).is_ok());
    let e = pack_beams(&BEAMS, [1, 3, 4], Some(97)).unwrap_err();
    assert_eq!(
        e,
        Error::TokenRange {
            arg: "beams",
            index: "[0, 2, 3]".into(),
            value: 97,
            vocab_size: Some(97),
        }
    );
    assert!(e.to_string().contains("beams[0, 2, 3] = 97"));
}

#[test]
fn root_mismatch() {
    let beams = [1, 2, 1, 3, 5, 6, 5, 7, 4, 7]; // beam 2 starts with 5, not 1
    let shape = [1, 5, 2];
    let e = pack_beams(&beams, shape, None).unwrap_err();
    assert_eq!(
        e,
        Error::RootMismatch {
            row: 0,
            beam: 2,
            expected: 1,
            got: 5,
        }
    );
    let beams = [1, 2, 1, 3, 5, 6, 4, 7];
    let e = pack_beams(&beams, [2, 2, 2], None).unwrap_err();
    assert_eq!(
        e,
        Error::RootMismatch {
            row: 1,
            beam: 1,
            expected: 5,
            got: 4,
        }
    );
}

#[test]
fn choice_wrong_shape() {
    let t = example();
    let e = accept(&t.view(), &[0; 6], [1, 6]).unwrap_err();
    assert_eq!(
        e,
        Error::Shape {
            arg: "choice",
            expected: "[B, N] = [1, 7]".into(),
            got: "[1, 6]".into(),
        }
    );
    let e = accept(&t.view(), &[0; 6], [1, 7]).unwrap_err();
    assert_eq!(
        e,
        Error::Shape {
            arg: "choice",
            expected: "[B, N] = [1, 7] (7 elements)".into(),
            got: "6 elements".into(),
        }
    );
}

#[test]
fn negative_choice_at_a_real_node() {
    let t = example();
    let e = accept(&t.view(), &[92, 94, 0, 0, 0, -1, 0], [1, 7]).unwrap_err();
    assert_eq!(
        e,
        Error::TokenRange {
            arg: "choice",
            index: "[0, 5]".into(),
            value: -1,
            vocab_size: None,
        }
    );
}

#[test]
fn tampered_unpacker_is_inconsistent() {
    let t = example();
    for (pos, value) in [(5, 7), (5, -1), (7, i64::MAX), (7, i64::MIN), (4, 1)] {
        let mut unp = t.unpacker.clone();
        unp[pos] = value;
        let mut v = t.view();
        v.unpacker = &unp;
        let e = accept(&v, &[0; 7], [1, 7]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Inconsistent {
                    arg: "tree.unpacker",
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn tampered_num_nodes_is_inconsistent() {
    let t = example();
    for n in [0, -1, 8, i64::MAX, i64::MIN] {
        let nn = [n];
        let mut v = t.view();
        v.num_nodes = &nn;
        let e = accept(&v, &[0; 7], [1, 7]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Inconsistent {
                    arg: "tree.num_nodes",
                    ..
                }
            ),
            "{e}"
        );
    }
    // A smaller (but valid-looking) count makes real unpacker entries out of range.
    let nn = [3];
    let mut v = t.view();
    v.num_nodes = &nn;
    let e = accept(&v, &[0; 7], [1, 7]).unwrap_err();
    assert!(matches!(
        e,
        Error::Inconsistent {
            arg: "tree.unpacker",
            ..
        }
    ));
}

#[test]
fn tampered_view_lengths_are_shape_errors() {
    let t = example();
    let mut v = t.view();
    v.max_nodes = 9; // slices no longer match the dims
    let e = accept(&v, &[0; 9], [1, 9]).unwrap_err();
    assert!(matches!(
        e,
        Error::Shape {
            arg: "tree.tokens",
            ..
        }
    ));
    let mut v = t.view();
    v.unpacker = &t.unpacker[..10];
    let e = accept(&v, &[0; 7], [1, 7]).unwrap_err();
    assert!(matches!(
        e,
        Error::Shape {
            arg: "tree.unpacker",
            ..
        }
    ));
    let mut v = t.view();
    v.width = usize::MAX;
    let e = accept(&v, &[0; 7], [1, 7]).unwrap_err();
    assert!(matches!(
        e,
        Error::Shape {
            arg: "tree.unpacker",
            ..
        }
    ));
    let e = TreeView::new(
        1,
        3,
        4,
        7,
        &t.tokens,
        &t.depth,
        &t.parent[..6],
        &t.unpacker,
        &t.num_nodes,
    )
    .unwrap_err();
    assert!(matches!(
        e,
        Error::Shape {
            arg: "tree.parent",
            ..
        }
    ));
}

#[test]
fn every_error_displays_its_argument() {
    let errors = [
        pack_beams(&[], [1, 1, 0], None).unwrap_err(),
        pack_beams(&[1], [1, 1, 2], None).unwrap_err(),
        pack_beams(&[1, 2, 1, 3], [1, 2, 2], Some(3)).unwrap_err(),
        pack_beams(&[1, 2, 4, 2], [1, 2, 2], None).unwrap_err(),
        accept(&example().view(), &[0; 3], [1, 3]).unwrap_err(),
    ];
    for (e, name) in errors
        .iter()
        .zip(["beams", "beams", "beams", "beams", "choice"])
    {
        assert!(e.to_string().contains(name), "{e}");
        let _: &dyn std::error::Error = e;
    }
}

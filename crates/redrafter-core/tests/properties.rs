//! Property tests: `pack_beams` and `accept` against a naive model, and
//! "never panics" on garbage input.

use std::collections::BTreeMap;

use proptest::prelude::*;
use redrafter_core::{accept, pack_beams, Acceptance, Error, Tree, TreeView};

/// Random `[B, W, L]` beams over the alphabet `0..3` (so prefixes are shared
/// often) with the root forced equal per row, about a third of them ending early
/// (`-1` padding), plus a pool of random choices.
fn beams_and_choices() -> impl Strategy<Value = ([usize; 3], Vec<i64>, Vec<i64>)> {
    (1usize..4, 1usize..10, 1usize..7).prop_flat_map(|(b, w, l)| {
        let n = b * w * l;
        (
            Just([b, w, l]),
            prop::collection::vec(0i64..3, n),
            prop::collection::vec(0i64..3, n),
            prop::collection::vec(1usize..3 * l, b * w),
        )
            .prop_map(|(shape, mut beams, choices, ends)| {
                force_roots(&mut beams, shape);
                end_beams(&mut beams, shape, &ends);
                (shape, beams, choices)
            })
    })
}

/// Beam `i` keeps `ends[i]` tokens (all of them when `ends[i] >= L`), then `-1`.
fn end_beams(beams: &mut [i64], [_, _, l]: [usize; 3], ends: &[usize]) {
    for (beam, &end) in beams.chunks_exact_mut(l).zip(ends) {
        beam.iter_mut().skip(end).for_each(|t| *t = -1);
    }
}

/// Sets `beams[b, w, 0] = beams[b, 0, 0]`.
fn force_roots(beams: &mut [i64], [b, w, l]: [usize; 3]) {
    for row in 0..b {
        let root = beams[row * w * l];
        for beam in 0..w {
            beams[(row * w + beam) * l] = root;
        }
    }
}

/// Naive per-row trie: prefix -> node id, assigned in row-major order.
fn naive_ids(beams: &[i64], [_, w, l]: [usize; 3], row: usize) -> BTreeMap<Vec<i64>, usize> {
    let mut ids = BTreeMap::new();
    for beam in 0..w {
        let start = (row * w + beam) * l;
        for k in 0..real_len(&beams[start..start + l]) {
            let next = ids.len();
            ids.entry(beams[start..=start + k].to_vec()).or_insert(next);
        }
    }
    ids
}

/// Tokens of a beam before its end (`-1`).
fn real_len(beam: &[i64]) -> usize {
    beam.iter().take_while(|&&t| t >= 0).count()
}

/// The tree built the slow way, from explicit prefixes.
fn naive_pack(beams: &[i64], shape: [usize; 3]) -> Tree {
    let [b, w, l] = shape;
    let rows: Vec<_> = (0..b).map(|r| naive_ids(beams, shape, r)).collect();
    let n = rows.iter().map(|m| m.len()).max().unwrap();
    let mut t = Tree {
        batch: b,
        width: w,
        length: l,
        max_nodes: n,
        tokens: vec![0; b * n],
        depth: vec![0; b * n],
        parent: vec![-1; b * n],
        mask: vec![false; b * n * n],
        unpacker: vec![0; b * w * l],
        num_nodes: rows.iter().map(|m| m.len() as i64).collect(),
    };
    for (r, ids) in rows.iter().enumerate() {
        for (prefix, &i) in ids {
            t.tokens[r * n + i] = *prefix.last().unwrap();
            t.depth[r * n + i] = prefix.len() as i64 - 1;
            if prefix.len() > 1 {
                t.parent[r * n + i] = ids[&prefix[..prefix.len() - 1]] as i64;
            }
            for (q, &j) in ids {
                let is_ancestor = q.len() <= prefix.len() && prefix[..q.len()] == q[..];
                t.mask[(r * n + i) * n + j] = is_ancestor;
            }
        }
        for i in ids.len()..n {
            t.mask[(r * n + i) * n + i] = true;
        }
        for beam in 0..w {
            let start = (r * w + beam) * l;
            let real = real_len(&beams[start..start + l]);
            for k in 0..l {
                t.unpacker[start + k] = ids[&beams[start..=start + k.min(real - 1)]] as i64;
            }
        }
    }
    t
}

/// Naive acceptance: count leading matches per beam, take the first argmax.
fn naive_accept(beams: &[i64], t: &Tree, choice: &[i64]) -> Acceptance {
    let (b, w, l, n) = (t.batch, t.width, t.length, t.max_nodes);
    let mut a = Acceptance {
        batch: b,
        length: l,
        best_beam: vec![0; b],
        num_accepted: vec![0; b],
        path: vec![-1; b * l],
        tokens: vec![-1; b * l],
        bonus: vec![0; b],
    };
    for r in 0..b {
        let at = |beam: usize, k: usize| (r * w + beam) * l + k;
        let ch = |node: i64| choice[r * n + node as usize];
        let count = |beam: usize| {
            (0..l - 1)
                .take_while(|&k| beams[at(beam, k + 1)] == ch(t.unpacker[at(beam, k)]))
                .count()
        };
        let counts: Vec<usize> = (0..w).map(count).collect();
        let best_n = *counts.iter().max().unwrap();
        let best = counts.iter().position(|&c| c == best_n).unwrap();
        for k in 0..=best_n {
            a.path[r * l + k] = t.unpacker[at(best, k)];
        }
        for k in 1..=best_n {
            a.tokens[r * l + k - 1] = beams[at(best, k)];
        }
        let bonus = ch(t.unpacker[at(best, best_n)]);
        a.tokens[r * l + best_n] = bonus;
        (a.best_beam[r], a.num_accepted[r], a.bonus[r]) = (best as i64, best_n as i64, bonus);
    }
    a
}

/// Tree walk: from the root, follow the child whose token is the choice.
fn walk_path(t: &Tree, choice: &[i64], r: usize) -> Vec<i64> {
    let n = t.max_nodes;
    let mut path = vec![0i64];
    loop {
        let c = *path.last().unwrap();
        let want = choice[r * n + c as usize];
        let real = 0..t.num_nodes[r];
        match real
            .clone()
            .find(|&i| t.parent[r * n + i as usize] == c && t.tokens[r * n + i as usize] == want)
        {
            Some(child) => path.push(child),
            None => return path,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pack_matches_naive((shape, beams, _) in beams_and_choices()) {
        let t = pack_beams(&beams, shape, Some(3)).unwrap();
        prop_assert_eq!(&t, &naive_pack(&beams, shape));
    }

    #[test]
    fn tree_invariants((shape, beams, _) in beams_and_choices()) {
        let t = pack_beams(&beams, shape, None).unwrap();
        let [_, w, l] = shape;
        let n = t.max_nodes;
        for (flat, &u) in t.unpacker.iter().enumerate() {
            let r = flat / (w * l);
            prop_assert!(u >= 0 && u < t.num_nodes[r]);
            if beams[flat] < 0 {
                // past the beam's end: its last real node
                prop_assert_eq!(u, t.unpacker[flat - 1]);
                continue;
            }
            prop_assert_eq!(t.tokens[r * n + u as usize], beams[flat]);
            prop_assert_eq!(t.depth[r * n + u as usize], (flat % l) as i64);
        }
        for r in 0..t.batch {
            let real = t.num_nodes[r] as usize;
            prop_assert_eq!(real, naive_ids(&beams, shape, r).len());
            for i in 0..n {
                let p = t.parent[r * n + i];
                let row = &t.mask[(r * n + i) * n..(r * n + i + 1) * n];
                prop_assert!(row[i]);
                if i == 0 || i >= real {
                    prop_assert_eq!(p, -1);
                    prop_assert_eq!(row.iter().filter(|&&m| m).count(), 1);
                    continue;
                }
                prop_assert!(p >= 0 && (p as usize) < i);
                prop_assert_eq!(t.depth[r * n + i], t.depth[r * n + p as usize] + 1);
                // Row i = row parent(i) + i itself, and its popcount is depth + 1.
                let prow = &t.mask[(r * n + p as usize) * n..(r * n + p as usize + 1) * n];
                for j in 0..n {
                    prop_assert_eq!(row[j], prow[j] || j == i);
                }
                let seen = row.iter().filter(|&&m| m).count() as i64;
                prop_assert_eq!(seen, t.depth[r * n + i] + 1);
            }
        }
    }

    #[test]
    fn accept_matches_naive((shape, beams, pool) in beams_and_choices()) {
        let t = pack_beams(&beams, shape, None).unwrap();
        let choice = &pool[..t.batch * t.max_nodes];
        let a = accept(&t.view(), choice, [t.batch, t.max_nodes]).unwrap();
        prop_assert_eq!(&a, &naive_accept(&beams, &t, choice));
        for r in 0..t.batch {
            let path = walk_path(&t, choice, r);
            let got = &a.path[r * t.length..][..path.len()];
            prop_assert_eq!(got, &path[..]);
        }
    }

    #[test]
    fn accept_follows_the_leading_beam(
        (shape, beams, pool) in beams_and_choices(),
        pick in 0usize..10,
    ) {
        // Make the target agree with one beam everywhere: it must be fully accepted.
        let t = pack_beams(&beams, shape, None).unwrap();
        let [b, w, l] = shape;
        let n = t.max_nodes;
        let beam = pick % w;
        let mut choice = pool[..b * n].to_vec();
        let real = |r: usize| real_len(&beams[(r * w + beam) * l..][..l]);
        for r in 0..b {
            for k in 0..real(r) - 1 {
                let at = (r * w + beam) * l + k;
                choice[r * n + t.unpacker[at] as usize] = beams[at + 1];
            }
        }
        let a = accept(&t.view(), &choice, [b, n]).unwrap();
        for r in 0..b {
            // all of it (another beam may go further when the picked one ended early)
            prop_assert!(a.num_accepted[r] >= real(r) as i64 - 1);
            if real(r) == l {
                prop_assert_eq!(a.num_accepted[r], l as i64 - 1);
                prop_assert!(a.best_beam[r] <= beam as i64);
            }
        }
    }

    #[test]
    fn pack_never_panics(
        b in 0usize..4, w in 0usize..5, l in 0usize..5,
        beams in prop::collection::vec(prop_oneof![-2i64..6, Just(i64::MIN), Just(i64::MAX)], 0..60),
        vocab in prop::option::of(0usize..7),
    ) {
        match pack_beams(&beams, [b, w, l], vocab) {
            Ok(t) => prop_assert_eq!(t.unpacker.len(), beams.len()),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn garbage_views_never_panic(
        dims in prop::array::uniform5(0usize..6),
        arrays in prop::array::uniform6(prop::collection::vec(garbage_value(), 0..40)),
        shape in prop::array::uniform2(0usize..8),
    ) {
        let [b, w, l, n, _] = dims;
        let [tokens, depth, parent, unpacker, num_nodes, choice] = &arrays;
        let view = TreeView { batch: b, width: w, length: l, max_nodes: n,
            tokens, depth, parent, unpacker, num_nodes };
        let _ = accept(&view, choice, shape);
        let _ = TreeView::new(b, w, l, n, tokens, depth, parent, unpacker, num_nodes);
    }

    #[test]
    fn tampered_trees_never_panic(
        (shape, beams, pool) in beams_and_choices(),
        edits in prop::collection::vec((0usize..6, any::<prop::sample::Index>(), garbage_value()), 1..4),
    ) {
        let mut t = pack_beams(&beams, shape, None).unwrap();
        let mut choice = pool[..t.batch * t.max_nodes].to_vec();
        for (which, at, value) in edits {
            let arr = match which {
                0 => &mut t.tokens,
                1 => &mut t.depth,
                2 => &mut t.parent,
                3 => &mut t.unpacker,
                4 => &mut t.num_nodes,
                _ => &mut choice,
            };
            let i = at.index(arr.len());
            arr[i] = value;
        }
        match accept(&t.view(), &choice, [t.batch, t.max_nodes]) {
            Ok(a) => prop_assert!(a.num_accepted.iter().all(|&k| k >= 0 && k < t.length as i64)),
            Err(e) => {
                let expected = matches!(e, Error::Inconsistent { .. } | Error::TokenRange { .. });
                prop_assert!(expected, "unexpected error {}", e);
            }
        }
    }
}

/// Small values around the valid index range, plus the extremes.
fn garbage_value() -> impl Strategy<Value = i64> {
    prop_oneof![-3i64..12, Just(i64::MIN), Just(i64::MAX)]
}

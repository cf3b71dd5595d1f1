//! Fuzzing the core with hostile caller input: adversarial shapes and token values for
//! `pack_beams`, inconsistent trees and acceptances for `accept` / `plan_kv`, random and mutated
//! datastore files (with and without a recomputed checksum), and sizes the input asks for but
//! no machine could hold. Every case must end in `Ok` or `Err`: a panic fails the test, and an
//! aborted allocation would kill the test binary.
//!
//! The case counts are fixed (no `PROPTEST_CASES` surprises in CI) and keep this file well
//! under a few seconds in a debug `cargo test`.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::RngSeed;
use redrafter_core::{
    accept, crc32, pack_beams, plan_kv, retrieve, Acceptance, CandidateArrays, Cursor, Datastore,
    Error, QueryParams, RequestIndex, SuffixAutomaton, TreeView, MAX_MASK_ELEMENTS,
    MAX_QUERY_TOKENS,
};

/// Cases of each ordinary fuzz property.
const CASES: u32 = 192;
/// Default seed of every property (see `config`).
const FUZZ_SEED: u64 = 1;
/// Cases of the properties that build multi-megabyte inputs.
const HUGE_CASES: u32 = 6;

/// The fuzz run is reproducible: a fixed seed (override with `REDRAFTER_FUZZ_SEED=n` to explore
/// other inputs), so `make test` checks the same inputs on every machine.
fn config(cases: u32) -> ProptestConfig {
    let seed = std::env::var("REDRAFTER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(FUZZ_SEED);
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- strategies ------------------------------------------------------------------------------

/// Dimensions: mostly small, sometimes at or near the ends of `usize`.
fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..6,
        1 => Just(usize::MAX),
        1 => Just(usize::MAX / 2 + 1),
        1 => Just(1usize << 32),
        1 => Just(1usize << 20),
    ]
}

/// Token values: mostly small, plus the end marker, other negatives and the extremes.
fn token() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 0i64..6,
        2 => Just(-1i64),
        1 => -5i64..-1,
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => Just(i64::from(u32::MAX) + 1),
    ]
}

/// A vocabulary size: none, zero, small, or huge.
fn vocab() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![
        Just(None),
        Just(Some(0usize)),
        (1usize..8).prop_map(Some),
        Just(Some(usize::MAX)),
    ]
}

/// Index-like values: around the valid ranges of small trees, plus the extremes.
fn index_value() -> impl Strategy<Value = i64> {
    prop_oneof![8 => -3i64..10, 1 => Just(i64::MIN), 1 => Just(i64::MAX)]
}

/// Query parameters, including sizes past `MAX_QUERY_TOKENS`.
fn hostile_params() -> impl Strategy<Value = QueryParams> {
    let size = prop_oneof![
        6 => 0usize..6,
        1 => Just(MAX_QUERY_TOKENS + 1),
        1 => Just(usize::MAX),
    ];
    (
        size.clone(),
        size,
        prop_oneof![0usize..4, Just(usize::MAX)],
        prop_oneof![0u32..20, Just(u32::MAX)],
        prop_oneof![0usize..10, Just(usize::MAX)],
    )
        .prop_map(
            |(k, length, min_match, count_cap, max_levels)| QueryParams {
                k,
                length,
                min_match,
                count_cap,
                max_levels,
            },
        )
}

/// Sets `beams[b, w, 0] = beams[b, 0, 0]` (so that validation gets past the roots).
fn force_roots(beams: &mut [i64], [b, w, l]: [usize; 3]) {
    for row in 0..b {
        let root = beams[row * w * l];
        for beam in 1..w {
            beams[(row * w + beam) * l] = root;
        }
    }
}

/// `prod(dims)` if it is small enough to build a slice of that length.
fn small_product(dims: [usize; 3]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= 256)
}

// ---- pack_beams, accept, plan_kv ---------------------------------------------------------

/// Checks what `pack_beams` promises about an `Ok` tree, then runs `accept` and `plan_kv` on
/// it with `choice` (trimmed or padded to the tree's size).
fn check_tree(beams: &[i64], shape: [usize; 3], tree: &redrafter_core::Tree, choice: &[i64]) {
    let [b, w, l] = shape;
    let n = tree.max_nodes;
    assert_eq!((tree.batch, tree.width, tree.length), (b, w, l));
    assert_eq!(tree.unpacker.len(), beams.len());
    assert_eq!(tree.tokens.len(), b * n);
    assert_eq!(tree.mask.len(), b * n * n);
    assert!(tree.mask.len() <= MAX_MASK_ELEMENTS);
    let mut choice = choice.to_vec();
    choice.resize(b * n, 0);
    let view = tree.view();
    assert_eq!(view.check_beams(beams, shape), Ok(()));
    match accept(&view, &choice, [b, n]) {
        Ok(acc) => {
            let plan = plan_kv(&acc).expect("an acceptance from accept is consistent");
            assert_eq!(plan.kept.len(), b);
        }
        Err(e) => assert!(matches!(e, Error::TokenRange { arg: "choice", .. }), "{e}"),
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Arbitrary shapes (including overflowing ones) against arbitrary slices.
    #[test]
    fn pack_beams_adversarial_shapes(
        shape in prop::array::uniform3(dim()),
        beams in prop::collection::vec(token(), 0..48),
        vocab_size in vocab(),
    ) {
        match pack_beams(&beams, shape, vocab_size) {
            Ok(tree) => check_tree(&beams, shape, &tree, &[]),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Slices whose length matches the shape, so validation reaches the token checks and the
    /// builder; roots are forced equal half of the time.
    #[test]
    fn pack_beams_hostile_tokens(
        shape in prop::array::uniform3(1usize..6),
        pool in prop_oneof![
            prop::collection::vec(token(), 125),
            prop::collection::vec(0i64..4, 125),
        ],
        same_roots in any::<bool>(),
        vocab_size in vocab(),
        choice in prop::collection::vec(index_value(), 0..150),
    ) {
        let len = small_product(shape).unwrap();
        let mut beams = pool[..len].to_vec();
        if same_roots {
            force_roots(&mut beams, shape);
        }
        match pack_beams(&beams, shape, vocab_size) {
            Ok(tree) => check_tree(&beams, shape, &tree, &choice),
            Err(e) => {
                let expected = matches!(
                    e,
                    Error::TokenRange { arg: "beams", .. }
                        | Error::RootMismatch { .. }
                        | Error::Inconsistent { arg: "beams", .. }
                );
                prop_assert!(expected, "unexpected error {}", e);
            }
        }
    }

    /// Views with arbitrary dims and arrays, consistent or not, and arbitrary choices.
    #[test]
    fn accept_inconsistent_inputs(
        dims in prop::array::uniform4(dim()),
        arrays in prop::array::uniform5(prop::collection::vec(index_value(), 0..40)),
        choice in prop::collection::vec(index_value(), 0..40),
        choice_shape in prop::array::uniform2(dim()),
        beams in prop::collection::vec(token(), 0..40),
        beam_shape in prop::array::uniform3(dim()),
    ) {
        let [b, w, l, n] = dims;
        let [tokens, depth, parent, unpacker, num_nodes] = &arrays;
        let view = TreeView {
            batch: b, width: w, length: l, max_nodes: n,
            tokens, depth, parent, unpacker, num_nodes,
        };
        if let Ok(acc) = accept(&view, &choice, choice_shape) {
            prop_assert!(plan_kv(&acc).is_ok());
        }
        let _ = view.check_beams(&beams, beam_shape);
        let _ = TreeView::new(b, w, l, n, tokens, depth, parent, unpacker, num_nodes);
    }

    /// Views whose array lengths agree with their dims (so `accept` reads the contents),
    /// filled with arbitrary indices; with `repair`, `num_nodes` and the unpacker are moved into
    /// range (the unpacker's order and the tokens stay arbitrary), so the walk itself runs.
    #[test]
    fn accept_consistent_shapes_garbage_contents(
        (b, w, l, n) in (1usize..4, 1usize..4, 1usize..5, 0usize..7),
        mut pool in prop::array::uniform6(prop::collection::vec(index_value(), 48)),
        repair in any::<bool>(),
    ) {
        if repair && n > 0 {
            let n = n as i64;
            let counts: Vec<i64> = pool[4][..b].iter().map(|c| c.rem_euclid(n) + 1).collect();
            pool[4][..b].copy_from_slice(&counts);
            for (i, u) in pool[3][..b * w * l].iter_mut().enumerate() {
                *u = if i % l == 0 { 0 } else { u.rem_euclid(counts[i / (w * l)]) };
            }
            pool[5].iter_mut().for_each(|c| *c = c.rem_euclid(6));
        }
        let [tokens, depth, parent, unpacker, num_nodes, choice] = &pool;
        let view = TreeView::new(
            b, w, l, n,
            &tokens[..b * n], &depth[..b * n], &parent[..b * n],
            &unpacker[..b * w * l], &num_nodes[..b],
        ).unwrap();
        match accept(&view, &choice[..b * n], [b, n]) {
            Ok(acc) => {
                let plan = plan_kv(&acc).unwrap();
                prop_assert!(plan.gather.iter().all(|&g| g >= 0 && (g as usize) < n));
            }
            Err(e) => {
                let expected = matches!(e, Error::Inconsistent { .. } | Error::TokenRange { .. });
                prop_assert!(expected, "unexpected error {}", e);
            }
        }
    }

    /// Hand-made acceptances (the struct's fields are public) with inconsistent arrays.
    #[test]
    fn plan_kv_inconsistent_acceptance(
        batch in dim(),
        length in dim(),
        arrays in prop::array::uniform5(prop::collection::vec(index_value(), 0..24)),
    ) {
        let [best_beam, num_accepted, path, tokens, bonus] = arrays;
        let acc = Acceptance { batch, length, best_beam, num_accepted, path, tokens, bonus };
        if let Ok(plan) = plan_kv(&acc) {
            prop_assert_eq!(plan.kept.len(), batch);
            prop_assert_eq!(plan.gather.len(), batch * plan.width);
        }
    }
}

// ---- packed candidates -------------------------------------------------------------------

/// What `CandidateArrays` promises: consistent lengths, -1 padding, counts within `k`.
fn check_arrays(a: &CandidateArrays, p: &QueryParams) {
    let rows = a.batch.unwrap_or(1);
    let slots = rows * a.k;
    assert_eq!(a.length, p.length);
    assert!(a.batch.is_some() || a.k <= p.k);
    assert!(slots * a.length.max(1) <= MAX_QUERY_TOKENS);
    assert_eq!(a.tokens.len(), slots * a.length);
    assert_eq!(
        (a.lengths.len(), a.match_len.len(), a.count.len()),
        (slots, slots, slots)
    );
    assert_eq!(a.num.len(), rows);
    for (row, &n) in a.num.iter().enumerate() {
        assert!(n >= 0 && n as usize <= a.k);
        for j in 0..a.k {
            let slot = row * a.k + j;
            let len = a.lengths[slot];
            assert!(len >= 0 && len as usize <= a.length);
            assert_eq!(len > 0, j < n as usize);
            let tokens = &a.tokens[slot * a.length..(slot + 1) * a.length];
            assert!(tokens[len as usize..].iter().all(|&t| t == -1));
            assert!(tokens[..len as usize].iter().all(|&t| t >= 0));
        }
    }
}

// ---- datastore files ---------------------------------------------------------------------

/// Rewrites the trailing CRC-32 so that a mutated file gets past the checksum check.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= 4 {
        let body = bytes.len() - 4;
        let crc = crc32(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// One edit of a file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Overwrite an aligned little-endian `u32` (array entries) with a hostile value.
    Word(Index, u32),
    /// Overwrite one of the header's `u64` fields (T, D, S, E) with a hostile value.
    Header(usize, u64),
    /// Cut the file at a random point.
    Truncate(Index),
    /// Append bytes.
    Extend(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![0u32..8, Just(u32::MAX), Just(u32::MAX - 1), any::<u32>()];
    let wide = prop_oneof![
        0u64..8,
        Just(u64::MAX),
        Just(1u64 << 32),
        Just(1u64 << 62),
        any::<u64>()
    ];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        3 => (any::<Index>(), word).prop_map(|(i, v)| Mutation::Word(i, v)),
        2 => (0usize..4, wide).prop_map(|(f, v)| Mutation::Header(f, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..24).prop_map(Mutation::Extend),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip(i, bit) if !bytes.is_empty() => {
            let i = i.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        Mutation::Set(i, v) if !bytes.is_empty() => {
            let i = i.index(bytes.len());
            bytes[i] = *v;
        }
        Mutation::Word(i, v) if bytes.len() >= 4 => {
            let at = i.index(bytes.len() / 4) * 4;
            bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::Header(field, v) if bytes.len() >= 48 => {
            let at = 16 + 8 * field;
            bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::Truncate(i) => {
            let n = i.index(bytes.len() + 1);
            bytes.truncate(n);
        }
        Mutation::Extend(extra) => bytes.extend_from_slice(extra),
        _ => {}
    }
}

/// The arrays (and a CRC placeholder) of a datastore with `s` states and `e` transitions that
/// mostly satisfies the loader's structure checks but is otherwise arbitrary: lengths grow with
/// the state index, suffix links point to earlier states, each state's transitions are sorted
/// and lead to later states (except from the last state, which makes the file invalid).
fn rooted_arrays(s: usize, e: usize, words: &[u32]) -> Vec<u8> {
    let mut w = words.iter().copied().cycle();
    let mut next = move || w.next().unwrap_or(0);
    let mut starts: Vec<u32> = (0..=s).map(|_| next() % (e as u32 + 1)).collect();
    starts.sort_unstable();
    starts[0] = 0;
    starts[s] = e as u32;
    let (mut tokens, mut targets) = (Vec::new(), Vec::new());
    for v in 0..s {
        let mut token = i64::from(next() % 2) - 1;
        for _ in starts[v]..starts[v + 1] {
            tokens.push(token);
            token += 1 + i64::from(next() % 2);
            let later = (s - v - 1) as u32;
            targets.push(if later > 0 {
                v as u32 + 1 + next() % later
            } else {
                next()
            });
        }
    }
    let mut len = vec![0u32; s];
    for i in 1..s {
        len[i] = len[i - 1] + 1 + next() % 2;
    }
    let link: Vec<u32> = (0..s)
        .map(|i| if i == 0 { u32::MAX } else { next() % i as u32 })
        .collect();
    let tail: Vec<u32> = (0..2 * s).map(|_| next()).collect(); // first_end, count
    let mut out = Vec::new();
    for t in tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    let rest: Vec<u32> = targets
        .into_iter()
        .chain(starts)
        .chain(len)
        .chain(link)
        .chain(tail)
        .collect();
    for x in rest {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&[0; 4]); // CRC, written by `reseal`
    out
}

/// A datastore header (magic, version) with the counts of tokens and documents and the numbers
/// of states `s` and edges `e`; the arrays and the CRC follow.
fn header(counts: (u64, u64), s: usize, e: usize) -> Vec<u8> {
    let mut bytes = b"RRSAMDS\0\x01\0\0\0\0\0\0\0".to_vec();
    for x in [counts.0, counts.1, s as u64, e as u64] {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes
}

/// Loads `bytes`: a file the loader refuses is a `Datastore` error, one it accepts is used.
fn load_and_exercise(bytes: &[u8], ctx: &[i64], p: &QueryParams) -> Result<(), TestCaseError> {
    match Datastore::from_bytes(bytes, "fuzz") {
        Ok(ds) => exercise(&ds, ctx, p),
        Err(e) => prop_assert!(matches!(e, Error::Datastore { .. }), "{:?}", e),
    }
    Ok(())
}

/// Whatever a loaded datastore is, using it must not panic (and must terminate).
fn exercise(ds: &Datastore, ctx: &[i64], p: &QueryParams) {
    match ds.query(ctx, p) {
        Ok(cands) => {
            assert!(cands.len() <= p.k);
            assert!(cands
                .iter()
                .all(|c| !c.tokens.is_empty() && c.tokens.len() <= p.length));
        }
        Err(e) => assert!(
            matches!(e, Error::TooLarge { .. } | Error::TokenRange { .. }),
            "{e}"
        ),
    }
    let _ = ds.count(ctx, 7);
    let mut cursor = Cursor::default();
    if ds.advance(&mut cursor, ctx).is_ok() {
        assert!(cursor.matched() <= ctx.len());
        let _ = ds.query_at(&cursor, p);
    }
    if let Ok(packed) = ds.query_packed(ctx, p) {
        check_arrays(&packed, p);
    }
    // A request's cursor, fed in two steps, against whatever this datastore is.
    if let Ok(mut index) = RequestIndex::from_tokens(&ctx[..ctx.len() / 2]) {
        let _ = index.candidates(Some(ds), p);
        if index.extend(&ctx[ctx.len() / 2..]).is_ok() {
            let _ = retrieve(&mut [index], &[0, 0], Some(ds), p);
        }
    }
    // A loaded datastore writes back the bytes it was read from.
    assert_eq!(
        Datastore::from_bytes(&ds.to_bytes(), "again").as_ref(),
        Ok(ds)
    );
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Random bytes, bare and behind a valid magic and version.
    #[test]
    fn datastore_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300), seal in any::<bool>()) {
        let mut framed = b"RRSAMDS\0\x01\0\0\0".to_vec();
        framed.extend_from_slice(&bytes);
        for mut candidate in [bytes, framed] {
            if seal {
                reseal(&mut candidate);
            }
            if let Err(e) = Datastore::from_bytes(&candidate, "fuzz") {
                prop_assert!(matches!(e, Error::Datastore { .. }), "{:?}", e);
            }
        }
    }

    /// A valid header with random arrays of exactly the implied size, checksum recomputed: the
    /// parser reads every array and the structure checks see garbage. With `rooted`, the arrays
    /// hold small values with the root and the edge ranges' ends in place, so some of these
    /// arbitrary graphs pass the checks and the queries run on them.
    #[test]
    fn datastore_consistent_header_random_body(
        (s, e) in (0usize..8, 0usize..12),
        counts in (0u64..40, 0u64..10),
        body in prop::collection::vec(any::<u8>(), 400),
        words in prop::collection::vec(0u32..10, 100),
        rooted in any::<bool>(),
        ctx in prop::collection::vec(0i64..6, 0..8),
        p in hostile_params(),
    ) {
        let mut bytes = header(counts, s, e);
        if rooted {
            bytes.extend_from_slice(&rooted_arrays(s, e, &words));
        } else {
            let arrays = 12 * e + 20 * s + 4; // the CRC is the last 4 bytes
            bytes.extend_from_slice(&body[..arrays]);
        }
        reseal(&mut bytes);
        load_and_exercise(&bytes, &ctx, &p)?;
    }

    /// Valid files edited (bit flips, hostile words and header fields, truncation, extension),
    /// with the checksum left stale or recomputed after the edits.
    #[test]
    fn datastore_mutated_valid_files(
        corpus in prop::collection::vec(prop_oneof![4 => 0i64..5, 1 => Just(-1i64)], 0..40),
        edits in prop::collection::vec(mutation(), 1..4),
        seal in any::<bool>(),
        ctx in prop::collection::vec(0i64..6, 0..8),
        p in hostile_params(),
    ) {
        let ds = Datastore::build(&corpus).unwrap();
        let mut bytes = ds.to_bytes();
        for m in &edits {
            apply(&mut bytes, m);
        }
        if seal {
            reseal(&mut bytes);
        }
        load_and_exercise(&bytes, &ctx, &p)?;
    }

    /// Automata and datastores built from hostile tokens, queried with hostile parameters.
    #[test]
    fn retrieval_hostile_tokens_and_params(
        corpus in prop::collection::vec(token(), 0..40),
        ctx in prop::collection::vec(token(), 0..8),
        p in hostile_params(),
    ) {
        let ds = Datastore::build(&corpus).unwrap();
        exercise(&ds, &ctx.iter().map(|&t| t.max(0)).collect::<Vec<_>>(), &p);
        let _ = ds.query(&ctx, &p);
        let mut sam = SuffixAutomaton::new();
        if sam.extend(&corpus).is_err() {
            prop_assert!(sam.is_empty());
        }
        let too_large = p.k.max(1).checked_mul(p.length.max(1)).is_none_or(|n| n > MAX_QUERY_TOKENS);
        match sam.query(&p) {
            Ok(c) => prop_assert!(!too_large && c.len() <= p.k),
            Err(e) => prop_assert!(too_large && matches!(e, Error::TooLarge { .. }), "{:?}", e),
        }
        let _ = sam.query_context(&ctx, &p);
    }

    /// Batches of requests (rows repeating or naming no request), with and without a datastore,
    /// queried with hostile parameters over several steps.
    #[test]
    fn retrieve_hostile_batches(
        texts in prop::collection::vec(prop::collection::vec(0i64..5, 0..12), 0..4),
        rows in prop::collection::vec(0usize..5, 0..6),
        corpus in prop::collection::vec(prop_oneof![4 => 0i64..5, 1 => Just(-1i64)], 0..40),
        steps in prop::collection::vec(prop::collection::vec(token(), 0..4), 1..4),
        with_store in any::<bool>(),
        p in hostile_params(),
    ) {
        let ds = Datastore::build(&corpus).unwrap();
        let store = with_store.then_some(&ds);
        let mut requests: Vec<RequestIndex> =
            texts.iter().map(|t| RequestIndex::from_tokens(t).unwrap()).collect();
        let too_large = [p.k.max(1), p.length.max(1)]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none_or(|n| n > MAX_QUERY_TOKENS);
        let bad_row = rows.iter().any(|&r| r >= requests.len());
        for new in &steps {
            match retrieve(&mut requests, &rows, store, &p) {
                Ok(out) => {
                    prop_assert!(!too_large && !bad_row);
                    prop_assert_eq!(out.batch, Some(rows.len()));
                    check_arrays(&out, &p);
                }
                Err(e) => {
                    let expected = match e {
                        Error::TooLarge { arg: "k * length", .. } => true,
                        Error::Inconsistent { arg: "rows", .. } => bad_row,
                        _ => false,
                    };
                    prop_assert!(expected, "unexpected error {:?}", e);
                }
            }
            for r in requests.iter_mut() {
                let before = r.automaton().len();
                if r.extend(new).is_err() {
                    prop_assert_eq!(r.automaton().len(), before);
                }
            }
        }
        for r in &requests {
            if let Ok(one) = r.query_packed(None, &p) {
                prop_assert_eq!(one.batch, None);
                check_arrays(&one, &p);
            }
        }
    }
}

// ---- sizes no machine could hold ---------------------------------------------------------

/// `pack_beams` must refuse a tree whose mask is past the limit with `TooLarge` naming
/// `B * N^2`, after building nothing of that size.
fn assert_mask_too_large(beams: &[i64], shape: [usize; 3], nodes: usize) {
    let e = pack_beams(beams, shape, None).unwrap_err();
    let want = (shape[0] as u128) * (nodes as u128) * (nodes as u128);
    assert!(want > MAX_MASK_ELEMENTS as u128);
    match &e {
        Error::TooLarge {
            arg: "beams",
            requested,
            limit,
            limit_name: "MAX_MASK_ELEMENTS",
            ..
        } => {
            assert_eq!((*requested, *limit), (Some(want), MAX_MASK_ELEMENTS));
            let text = e.to_string();
            assert!(text.contains(&want.to_string()), "{text}");
            assert!(text.contains(&MAX_MASK_ELEMENTS.to_string()), "{text}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(config(HUGE_CASES))]

    /// One beam of `N` tokens is a chain of `N` nodes: a `N^2` mask, up to `10^12` elements.
    #[test]
    fn huge_chain_is_an_error_not_an_abort(n in 32_769usize..=1_000_000, token in 0i64..3) {
        let beams = vec![token; n];
        assert_mask_too_large(&beams, [1, 1, n], n);
    }

    /// Many rows of moderate chains: `B * N^2` past the limit with every row small.
    #[test]
    fn huge_batch_is_an_error_not_an_abort(n in 1_024usize..=4_096, extra in 1usize..64) {
        let b = MAX_MASK_ELEMENTS / (n * n) + extra;
        let beams = vec![5i64; b * n];
        assert_mask_too_large(&beams, [b, 1, n], n);
    }

    /// A few wide beams that share only the root: `N = 1 + W * (L - 1)` nodes.
    #[test]
    fn huge_fan_out_is_an_error_not_an_abort(w in 2usize..48, seed in 0i64..1_000) {
        let l = 32_768 / w + 2;
        let beams: Vec<i64> = (0..w * l)
            .map(|i| if i % l == 0 { 7 } else { seed + (i as i64) })
            .collect();
        assert_mask_too_large(&beams, [1, w, l], 1 + w * (l - 1));
    }

    /// Shapes that claim astronomically many elements are refused before any allocation.
    #[test]
    fn huge_claimed_shapes_are_errors(
        shape in prop::array::uniform3(prop_oneof![Just(usize::MAX), Just(1usize << 40), 1usize..4]),
        beams in prop::collection::vec(0i64..3, 0..8),
    ) {
        prop_assume!(shape.iter().any(|&d| d >= 1 << 40));
        let e = pack_beams(&beams, shape, None).unwrap_err();
        prop_assert!(matches!(e, Error::Shape { arg: "beams", .. }), "{:?}", e);
    }
}

/// A case a random-seed fuzz run found (CI, 2026-12-06): a datastore whose structure passes the
/// loader's checks but whose suffix links lead to states longer than the match, so following
/// them made the cursor's matched length exceed the context. Fixed in `sam::advance` (a match
/// never grows while falling back along suffix links).
#[test]
fn cursor_match_never_exceeds_the_context_on_a_corrupt_datastore() {
    let words = [
        0, 9, 3, 9, 7, 0, 6, 9, 8, 8, 9, 3, 4, 3, 3, 2, 7, 0, 1, 4, 8, 2, 2, 4, 9, 3, 9, 1, 3, 3,
        8, 0, 5, 9, 0, 6, 3, 9, 8, 4, 1, 5, 1, 9, 9, 4, 7, 1, 4, 3, 4, 0, 9, 3, 9, 0, 5, 0, 9, 5,
        6, 5, 9, 7, 5, 3, 1, 4, 6, 0, 6, 8, 9, 1, 7, 7, 2, 7, 3, 2, 6, 6, 9, 2, 1, 9, 8, 7, 0, 6,
        0, 1, 9, 3, 4, 1, 7, 3, 7, 8,
    ];
    let (s, e) = (3usize, 9usize);
    let mut bytes = header((0, 0), s, e);
    bytes.extend_from_slice(&rooted_arrays(s, e, &words));
    reseal(&mut bytes);
    let ds = Datastore::from_bytes(&bytes, "regression").expect("passes the loader's checks");
    let p = QueryParams {
        k: 2,
        length: 3,
        min_match: usize::MAX,
        count_cap: 3,
        max_levels: 8,
    };
    exercise(&ds, &[3, 0], &p);
}

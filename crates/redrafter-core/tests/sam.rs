//! Retrieval: the suffix automaton and the datastore against a naive substring search, the
//! datastore file round trip, and "never panics" on garbage files and queries.

use proptest::prelude::*;
use redrafter_core::{
    crc32, merge_candidates, Candidate, Cursor, Datastore, Error, QueryParams, SuffixAutomaton,
};

// ---- the naive model: every quantity from explicit substring scans --------------------------

/// End positions of every occurrence of `w` (non-empty) in `text`.
fn ends(text: &[i64], w: &[i64]) -> Vec<usize> {
    if w.is_empty() || w.len() > text.len() {
        return Vec::new();
    }
    (w.len() - 1..text.len())
        .filter(|&e| text[e + 1 - w.len()..=e] == *w)
        .collect()
}

/// Continuations of `w` in rank order: (count desc, first end asc), tokens >= 0 only.
fn ranked(text: &[i64], w: &[i64], cap: u32) -> Vec<(u32, usize, i64)> {
    let mut next: Vec<i64> = ends(text, w)
        .into_iter()
        .filter_map(|e| text.get(e + 1).copied())
        .filter(|&t| t >= 0)
        .collect();
    next.sort_unstable();
    next.dedup();
    let mut out: Vec<(u32, usize, i64)> = next
        .into_iter()
        .map(|t| {
            let wt: Vec<i64> = w.iter().copied().chain([t]).collect();
            let e = ends(text, &wt);
            ((e.len() as u32).min(cap), e[0], t)
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    out
}

/// The query rule of `sam.rs`, spelled out on strings. `own` = query of the text's own end
/// (the match must end before the last position; continuations repeat periodically).
fn naive_query(text: &[i64], context: &[i64], own: bool, p: &QueryParams) -> Vec<Candidate> {
    let suffix = |l: usize| &context[context.len() - l..];
    let need = if own { 2 } else { 1 };
    let mut m = (1..=context.len())
        .rev()
        .find(|&l| ends(text, suffix(l)).len() >= need)
        .unwrap_or(0);
    let mut out: Vec<Candidate> = Vec::new();
    if p.k == 0 || p.length == 0 {
        return out;
    }
    for _ in 0..p.max_levels {
        if m < p.min_match.max(1) || out.len() >= p.k {
            break;
        }
        let s = suffix(m).to_vec();
        for (count, _, t) in ranked(text, &s, p.count_cap) {
            if out.len() >= p.k {
                break;
            }
            if out.iter().any(|c| c.tokens[0] == t) {
                continue;
            }
            let mut w: Vec<i64> = s.iter().copied().chain([t]).collect();
            let mut tokens = vec![t];
            while tokens.len() < p.length {
                match ranked(text, &w, p.count_cap).first() {
                    Some(&(_, _, next)) => {
                        tokens.push(next);
                        w.push(next);
                    }
                    None => {
                        if own {
                            let period = tokens.len();
                            for i in period..p.length {
                                tokens.push(tokens[i - period]);
                            }
                        }
                        break;
                    }
                }
            }
            out.push(Candidate {
                tokens,
                match_len: m,
                count,
            });
        }
        let here = ends(text, &s);
        m = (1..m)
            .rev()
            .find(|&l| ends(text, suffix(l)) != here)
            .unwrap_or(0);
    }
    out
}

// ---- strategies -----------------------------------------------------------------------------

fn params() -> impl Strategy<Value = QueryParams> {
    (1usize..6, 0usize..7, 0usize..4, 1u32..6, 1usize..7).prop_map(
        |(k, length, min_match, count_cap, max_levels)| QueryParams {
            k,
            length,
            min_match,
            count_cap,
            max_levels,
        },
    )
}

/// Texts over a small alphabet, so that repeats (and deep automata) are common.
fn text(max: usize) -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(0i64..4, 0..max)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn own_query_matches_naive(t in text(60), p in params()) {
        let sam = SuffixAutomaton::from_tokens(&t).unwrap();
        prop_assert_eq!(sam.query(&p).unwrap(), naive_query(&t, &t, true, &p));
    }

    #[test]
    fn context_query_matches_naive(t in text(50), ctx in text(12), p in params()) {
        let sam = SuffixAutomaton::from_tokens(&t).unwrap();
        prop_assert_eq!(sam.query_context(&ctx, &p).unwrap(), naive_query(&t, &ctx, false, &p));
    }

    #[test]
    fn counts_match_naive(t in text(60), w in text(5), cap in 1u32..80) {
        let sam = SuffixAutomaton::from_tokens(&t).unwrap();
        let want = if w.is_empty() { 0 } else { (ends(&t, &w).len() as u32).min(cap) };
        if !w.is_empty() {
            prop_assert_eq!(sam.count(&w, cap), want);
        }
        let ds = Datastore::build(&t).unwrap();
        if !w.is_empty() {
            prop_assert_eq!(ds.count(&w, cap), want);
        }
        prop_assert!(sam.num_states() <= 2 * t.len() + 1);
        prop_assert!(sam.num_edges() <= (3 * t.len()).max(1));
    }

    #[test]
    fn chunked_extension_equals_one_shot(t in text(60), cuts in prop::collection::vec(0usize..60, 0..6), p in params()) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(t.len())).collect();
        cuts.push(0);
        cuts.push(t.len());
        cuts.sort_unstable();
        let mut sam = SuffixAutomaton::new();
        for w in cuts.windows(2) {
            sam.extend(&t[w[0]..w[1]]).unwrap();
            let whole = SuffixAutomaton::from_tokens(&t[..w[1]]).unwrap();
            prop_assert_eq!(sam.query(&p).unwrap(), whole.query(&p).unwrap());
        }
        prop_assert_eq!(sam.tokens(), &t[..]);
    }

    #[test]
    fn datastore_query_matches_naive_with_separators(
        t in prop::collection::vec(-1i64..4, 0..60), ctx in text(12), p in params(),
    ) {
        let ds = Datastore::build(&t).unwrap();
        prop_assert_eq!(ds.query(&ctx, &p).unwrap(), naive_query(&t, &ctx, false, &p));
        // the cursor, fed in two pieces, lands where the one-shot walk does
        let mut cur = Cursor::default();
        let half = ctx.len() / 2;
        ds.advance(&mut cur, &ctx[..half]).unwrap();
        ds.advance(&mut cur, &ctx[half..]).unwrap();
        prop_assert_eq!(ds.query_at(&cur, &p).unwrap(), ds.query(&ctx, &p).unwrap());
        // and the file round trip changes nothing
        let back = Datastore::from_bytes(&ds.to_bytes(), "mem").unwrap();
        prop_assert_eq!(&back, &ds);
    }

    #[test]
    fn merge_is_ranked_distinct_and_bounded(
        a in prop::collection::vec((text(4), 0usize..5, 0u32..5), 0..5),
        b in prop::collection::vec((text(4), 0usize..5, 0u32..5), 0..5),
        k in 0usize..6,
    ) {
        let make = |v: Vec<(Vec<i64>, usize, u32)>| -> Vec<Candidate> {
            v.into_iter()
                .filter(|(t, _, _)| !t.is_empty())
                .map(|(tokens, match_len, count)| Candidate { tokens, match_len, count })
                .collect()
        };
        let merged = merge_candidates(vec![make(a), make(b)], k);
        prop_assert!(merged.len() <= k);
        for w in merged.windows(2) {
            prop_assert!((w[0].match_len, w[0].count) >= (w[1].match_len, w[1].count));
        }
        for (i, c) in merged.iter().enumerate() {
            prop_assert!(merged[..i].iter().all(|o| o.tokens != c.tokens));
        }
    }

    // ---- fuzzing the loader and the queries: errors, never panics -------------------------

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Datastore::from_bytes(&bytes, "fuzz");
        let mut framed = b"RRSAMDS\0\x01\0\0\0".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = Datastore::from_bytes(&framed, "fuzz");
    }

    #[test]
    fn mutated_files_are_errors_or_safe_datastores(
        t in prop::collection::vec(-1i64..5, 1..40),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        fix_checksum in any::<bool>(),
        ctx in text(10),
        p in params(),
    ) {
        let mut bytes = Datastore::build(&t).unwrap().to_bytes();
        let body = bytes.len() - 4;
        for (at, val) in edits {
            let i = at.index(body);
            bytes[i] = val;
        }
        if fix_checksum {
            let crc = crc32(&bytes[..body]);
            bytes[body..].copy_from_slice(&crc.to_le_bytes());
        }
        match Datastore::from_bytes(&bytes, "mutated") {
            Err(e) => prop_assert!(matches!(e, Error::Datastore { .. }), "{:?}", e),
            Ok(ds) => {
                // a structurally valid file: queries terminate and stay in range
                let c = ds.query(&ctx, &p).unwrap();
                prop_assert!(c.len() <= p.k);
                prop_assert!(c.iter().all(|c| !c.tokens.is_empty() && c.tokens.len() <= p.length));
                let _ = ds.count(&ctx, 10);
            }
        }
    }

    #[test]
    fn truncated_files_are_errors(t in text(30), cut in any::<prop::sample::Index>()) {
        let bytes = Datastore::build(&t).unwrap().to_bytes();
        let n = cut.index(bytes.len());
        let err = Datastore::from_bytes(&bytes[..n], "cut").unwrap_err();
        prop_assert!(matches!(err, Error::Datastore { .. }), "{:?}", err);
    }

    #[test]
    fn random_queries_never_panic(
        t in prop::collection::vec(0i64..1000, 0..80),
        ctx in prop::collection::vec(-3i64..1000, 0..20),
        k in 0usize..50, length in 0usize..50, min_match in 0usize..5,
        count_cap in 0u32..100, max_levels in 0usize..50,
    ) {
        let p = QueryParams { k, length, min_match, count_cap, max_levels };
        let sam = SuffixAutomaton::from_tokens(&t).unwrap();
        let ds = Datastore::build(&t).unwrap();
        let negative = ctx.iter().any(|&x| x < 0);
        prop_assert_eq!(sam.query_context(&ctx, &p).is_err(), negative);
        prop_assert_eq!(ds.query(&ctx, &p).is_err(), negative);
        let own = sam.query(&p).unwrap();
        prop_assert!(own.len() <= k);
        prop_assert!(own.iter().all(|c| c.tokens.len() <= length));
    }
}

// ---- adversarial cases ----------------------------------------------------------------------

fn p(k: usize, length: usize) -> QueryParams {
    QueryParams {
        k,
        length,
        ..QueryParams::default()
    }
}

#[test]
fn all_same_tokens() {
    let t = vec![3i64; 300];
    let sam = SuffixAutomaton::from_tokens(&t).unwrap();
    for q in [p(1, 1), p(4, 8), p(8, 40)] {
        assert_eq!(sam.query(&q).unwrap(), naive_query(&t, &t, true, &q));
    }
    assert_eq!(sam.query(&p(4, 6)).unwrap()[0].tokens, [3; 6]);
    // long: the query walks at most `max_levels` levels and counts at most `count_cap`
    let long = SuffixAutomaton::from_tokens(&vec![3i64; 200_000]).unwrap();
    let c = long.query(&p(4, 8)).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].match_len, 199_999);
    assert_eq!(long.count(&[3, 3, 3], 1000), 1000);
}

#[test]
fn long_repeats() {
    // a 37-token block repeated 9 times, then a partial copy
    let block: Vec<i64> = (0..37).map(|i| (i * 7919) % 53).collect();
    let mut t: Vec<i64> = block.iter().cycle().take(37 * 9 + 11).copied().collect();
    let sam = SuffixAutomaton::from_tokens(&t).unwrap();
    let q = p(3, 12);
    let c = sam.query(&q).unwrap();
    assert_eq!(c, naive_query(&t, &t, true, &q));
    assert_eq!(c[0].tokens, block[11..23]);
    t.push(999); // a fresh token breaks every match
    let sam = SuffixAutomaton::from_tokens(&t).unwrap();
    assert!(sam.query(&q).unwrap().is_empty());
}

#[test]
fn empty_context_and_empty_corpus() {
    let sam = SuffixAutomaton::new();
    assert!(sam.query(&p(4, 4)).unwrap().is_empty());
    assert!(sam.query_context(&[], &p(4, 4)).unwrap().is_empty());
    assert!(sam.query_context(&[1, 2], &p(4, 4)).unwrap().is_empty());
    let ds = Datastore::build(&[]).unwrap();
    assert_eq!(ds.num_states(), 1);
    assert!(ds.query(&[1, 2], &p(4, 4)).unwrap().is_empty());
    let back = Datastore::from_bytes(&ds.to_bytes(), "empty").unwrap();
    assert_eq!(back, ds);
    let full = SuffixAutomaton::from_tokens(&[1, 2, 3]).unwrap();
    assert!(full.query_context(&[], &p(4, 4)).unwrap().is_empty());
}

#[test]
fn save_and_load_files() {
    let dir = std::env::temp_dir().join(format!("redrafter-sam-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.rrds");
    let ds = Datastore::build(&[4, 5, 6, -1, 4, 5, 7]).unwrap();
    ds.save(&path).unwrap();
    assert_eq!(Datastore::load(&path).unwrap(), ds);
    let err = Datastore::load(&dir.join("missing.rrds")).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
    let err = ds.save(&dir.join("no/such/dir/x.rrds")).unwrap_err();
    assert!(err.to_string().contains("cannot write"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

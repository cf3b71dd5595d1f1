//! Criterion benches for retrieval drafts: suffix-automaton extension per token, the per-step
//! query at 4k and 32k context tokens, a prompt-lookup-style linear scan as the baseline, and
//! the datastore (build, load, query).
//!
//! Token streams imitate generated text: Zipf-like draws from a 32k vocabulary, with spans of
//! 4-32 tokens copied from earlier in the stream 15% of the time (so suffixes do repeat).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use redrafter_core::{Cursor, Datastore, QueryParams, SuffixAutomaton};

/// Minimal 64-bit linear congruential generator (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    /// Next value in `0..n`, taken from the high bits.
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `n` tokens of text-like data (see the module docs).
fn text_like(n: usize, seed: u64) -> Vec<i64> {
    let mut rng = Lcg(seed);
    let mut out: Vec<i64> = Vec::with_capacity(n);
    while out.len() < n {
        if out.len() > 64 && rng.below(100) < 15 {
            let span = 4 + rng.below(29) as usize;
            let start = rng.below((out.len() - span) as u64) as usize;
            for i in 0..span.min(n - out.len()) {
                out.push(out[start + i]);
            }
        } else {
            // Zipf-ish: a uniform draw on a log scale of the rank
            let rank = (32_000f64.powf(rng.below(1 << 20) as f64 / (1 << 20) as f64)) as i64;
            out.push(rank - 1);
        }
    }
    out
}

/// The longest earlier match of the text's suffix by scanning every position (what
/// prompt-lookup decoding does, uncapped), then its continuation: the baseline.
fn scan_lookup(text: &[i64], length: usize) -> (usize, Vec<i64>) {
    let n = text.len();
    let (mut best, mut at) = (0usize, 0usize);
    for e in 0..n.saturating_sub(1) {
        let mut m = 0;
        while m <= e && text[e - m] == text[n - 1 - m] {
            m += 1;
        }
        if m > best {
            (best, at) = (m, e);
        }
    }
    let cont = text[at + 1..n.min(at + 1 + length)].to_vec();
    (best, cont)
}

const PARAMS: QueryParams = QueryParams {
    k: 4,
    length: 4,
    min_match: 1,
    count_cap: 16,
    max_levels: 8,
};

fn bench_extend(c: &mut Criterion) {
    let mut g = c.benchmark_group("sam_extend");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for n in [4_096usize, 32_768] {
        let text = text_like(n, 7);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("text_like", n), &text, |b, t| {
            b.iter(|| SuffixAutomaton::from_tokens(black_box(t)).unwrap())
        });
        let same = vec![5i64; n];
        g.bench_with_input(BenchmarkId::new("all_same", n), &same, |b, t| {
            b.iter(|| SuffixAutomaton::from_tokens(black_box(t)).unwrap())
        });
    }
    g.finish();
}

fn bench_query(c: &mut Criterion) {
    let mut g = c.benchmark_group("sam_step");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    for n in [4_096usize, 32_768] {
        let text = text_like(n + 3, 11);
        let sam = SuffixAutomaton::from_tokens(&text[..n]).unwrap();
        g.bench_with_input(BenchmarkId::new("query", n), &sam, |b, s| {
            b.iter(|| s.query(black_box(&PARAMS)).unwrap())
        });
        // one decode step: extend by the 3 accepted tokens, then query (on a copy with spare
        // capacity, as a long-lived automaton has between its doublings)
        g.bench_function(BenchmarkId::new("extend3_query", n), |b| {
            b.iter_batched(
                || {
                    let mut s = sam.clone();
                    s.reserve(64).unwrap();
                    s
                },
                |mut s| {
                    s.extend(&text[n..n + 3]).unwrap();
                    let q = s.query(&PARAMS).unwrap();
                    (s, q) // dropped after timing
                },
                BatchSize::LargeInput,
            )
        });
        let same = SuffixAutomaton::from_tokens(&vec![5i64; n]).unwrap();
        g.bench_with_input(BenchmarkId::new("query_all_same", n), &same, |b, s| {
            b.iter(|| s.query(black_box(&PARAMS)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("scan_baseline", n), &text[..n], |b, t| {
            b.iter(|| scan_lookup(black_box(t), 4))
        });
    }
    g.finish();
}

fn bench_datastore(c: &mut Criterion) {
    let n = 1_000_000;
    let corpus = text_like(n, 13);
    let ds = Datastore::build(&corpus).unwrap();
    let bytes = ds.to_bytes();
    let mut g = c.benchmark_group("datastore");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("from_bytes_1M_tokens", |b| {
        b.iter(|| Datastore::from_bytes(black_box(&bytes), "bench").unwrap())
    });
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("build_1M_tokens", |b| {
        b.iter(|| Datastore::build(black_box(&corpus)).unwrap())
    });
    g.finish();
    let mut g = c.benchmark_group("datastore_step");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    let context = text_like(4_099, 17);
    let mut cur = Cursor::default();
    ds.advance(&mut cur, &context[..4_096]).unwrap();
    g.bench_function("advance3_query", |b| {
        b.iter(|| {
            let mut c = cur;
            ds.advance(&mut c, &context[4_096..]).unwrap();
            ds.query_at(&c, &PARAMS).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_extend, bench_query, bench_datastore);
criterion_main!(benches);

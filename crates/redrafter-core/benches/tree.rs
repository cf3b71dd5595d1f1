//! Criterion benches for `pack_beams` and `accept` over realistic batch shapes.
//!
//! Beams are drawn from a tiny per-depth alphabet with a deterministic LCG, so
//! they share prefixes about as often as beam-search drafts do.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use redrafter_core::{accept, pack_beams};

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

/// `[B, W, L]` beams: root 1000 + b, then tokens from a 4-letter alphabet.
fn make_beams(rng: &mut Lcg, [b, w, l]: [usize; 3]) -> Vec<i64> {
    let mut beams = Vec::with_capacity(b * w * l);
    for row in 0..b {
        for _ in 0..w {
            beams.push(1000 + row as i64);
            beams.extend((1..l).map(|_| rng.below(4) as i64));
        }
    }
    beams
}

/// Benches both functions for every (B, W, L) in the grid.
fn bench_tree(c: &mut Criterion) {
    let mut rng = Lcg(0x5eed);
    let mut pack = c.benchmark_group("pack_beams");
    for shape in shapes() {
        let beams = make_beams(&mut rng, shape);
        pack.bench_with_input(
            BenchmarkId::from_parameter(label(shape)),
            &beams,
            |bch, beams| bch.iter(|| pack_beams(black_box(beams), shape, Some(50_000)).unwrap()),
        );
    }
    pack.finish();
    let mut acc = c.benchmark_group("accept");
    for shape in shapes() {
        let tree = pack_beams(&make_beams(&mut rng, shape), shape, None).unwrap();
        let dims = [tree.batch, tree.max_nodes];
        let choice: Vec<i64> = (0..dims[0] * dims[1])
            .map(|_| rng.below(4) as i64)
            .collect(); // [B, N]
        acc.bench_with_input(
            BenchmarkId::from_parameter(label(shape)),
            &choice,
            |bch, ch| bch.iter(|| accept(&tree.view(), black_box(ch), dims).unwrap()),
        );
    }
    acc.finish();
}

/// The grid B in {1, 8}, W in {4, 16, 64}, L in {4, 6}.
fn shapes() -> impl Iterator<Item = [usize; 3]> {
    [1, 8].into_iter().flat_map(|b| {
        [4, 16, 64]
            .into_iter()
            .flat_map(move |w| [4, 6].into_iter().map(move |l| [b, w, l]))
    })
}

/// "B1_W4_L4"-style bench id.
fn label([b, w, l]: [usize; 3]) -> String {
    format!("B{b}_W{w}_L{l}")
}

criterion_group!(benches, bench_tree);
criterion_main!(benches);

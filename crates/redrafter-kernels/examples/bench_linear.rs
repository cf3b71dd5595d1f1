//! Times `linear_f32` / `linear_bf16w` on the SmolLM2-135M shapes with cold weights.
//!
//! ```text
//! cargo run --release -p redrafter-kernels --example bench_linear [-- OPTIONS]
//!   --dtype f32|bf16|both   weight type (default both)
//!   --threads 1,2           thread counts (default 1,2)
//!   --m 1,2,4,8,16,32,64    rows of x (default as shown)
//!   --mb N --nb N --pf N    force a tiling / prefetch distance in blocks, into L1 (tuning)
//!   --pf-l2 N               prefetch distance in blocks, into L2
//!   --pool-overhead         only time an empty pool call
//! ```
//!
//! Each shape gets enough distinct weight matrices (> 320 MB in all) to be cycled through, so
//! every call streams its weights from DRAM as in a real forward pass. Printed per call: time,
//! GB/s of weights streamed and GFLOP/s (2 M N K). A plain read of the same buffers gives the
//! bandwidth floor to compare with.
use std::hint::black_box;
use std::time::{Duration, Instant};

use redrafter_kernels::{detected_isa, linear_bf16w, linear_f32, tuning, Pool};

const SHAPES: [(&str, usize, usize); 5] = [
    ("q/o_proj", 576, 576),
    ("k/v_proj", 576, 192),
    ("gate/up", 576, 1536),
    ("down", 1536, 576),
    ("lm_head", 576, 49152),
];
const COLD_BYTES: usize = 320 << 20;

struct Opts {
    f32: bool,
    bf16: bool,
    threads: Vec<usize>,
    ms: Vec<usize>,
    plan: Option<(usize, usize, usize, bool)>,
    pool_overhead: bool,
}

fn list(s: &str) -> Vec<usize> {
    s.split(',')
        .map(|v| v.trim().parse().expect("number"))
        .collect()
}

fn parse() -> Opts {
    let mut o = Opts {
        f32: true,
        bf16: true,
        threads: vec![1, 2],
        ms: vec![1, 2, 4, 8, 16, 32, 64],
        plan: None,
        pool_overhead: false,
    };
    let (mut mb, mut nb, mut pf, mut l1) = (None, None, 0, true);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("option value");
        match a.as_str() {
            "--dtype" => {
                let v = val();
                o.f32 = v == "f32" || v == "both";
                o.bf16 = v == "bf16" || v == "both";
            }
            "--threads" => o.threads = list(&val()),
            "--m" => o.ms = list(&val()),
            "--mb" => mb = Some(val().parse().expect("number")),
            "--nb" => nb = Some(val().parse().expect("number")),
            "--pf" => pf = val().parse().expect("number"),
            "--pf-l2" => {
                pf = val().parse().expect("number");
                l1 = false;
            }
            "--pool-overhead" => o.pool_overhead = true,
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    if mb.is_some() || nb.is_some() || pf > 0 {
        o.plan = Some((mb.unwrap_or(3), nb.unwrap_or(4), pf, l1));
    }
    o
}

/// Distinct weight matrices of `len` elements, enough to exceed `COLD_BYTES`.
fn weight_set<T: Copy>(len: usize, make: impl Fn(usize) -> T) -> Vec<Vec<T>> {
    let bytes = len * std::mem::size_of::<T>();
    let count = COLD_BYTES.div_ceil(bytes).max(2);
    (0..count)
        .map(|c| (0..len).map(|i| make(i * 7 + c * 13)).collect())
        .collect()
}

fn weight_f32(i: usize) -> f32 {
    ((i % 61) as f32 - 30.0) * 0.01
}

fn weight_bf16(i: usize) -> u16 {
    (weight_f32(i).to_bits() >> 16) as u16
}

/// Calls `f(copy)` cycling through `copies`: five rounds of at least `min / 5` and at least
/// one pass over all copies each; returns the median time per call.
fn time_calls(copies: usize, min: Duration, mut f: impl FnMut(usize)) -> Duration {
    for c in 0..copies.min(4) {
        f(c);
    }
    let mut rounds = Vec::new();
    let mut c = 0usize;
    for _ in 0..5 {
        let start = Instant::now();
        let mut calls = 0usize;
        while calls < copies || start.elapsed() < min / 5 {
            f(c % copies);
            c += 1;
            calls += 1;
        }
        rounds.push(start.elapsed() / calls as u32);
    }
    rounds.sort();
    rounds[2]
}

/// Plain read of every weight matrix (sum of the bits), split like the kernel: the floor.
fn read_floor<T: Copy + Sync>(set: &[Vec<T>], pool: &Pool, bits: impl Fn(T) -> u32 + Sync) -> f64 {
    let bytes = std::mem::size_of_val(&set[0][..]);
    let t = time_calls(set.len(), Duration::from_millis(300), |c| {
        let w = &set[c];
        let tasks = 32 * pool.threads();
        let per = w.len().div_ceil(tasks);
        pool.for_each(tasks, |t| {
            let part = &w[(t * per).min(w.len())..((t + 1) * per).min(w.len())];
            let mut acc = [0u32; 16];
            let chunks = part.chunks_exact(16);
            for ch in chunks {
                for (a, &v) in acc.iter_mut().zip(ch) {
                    *a = a.wrapping_add(bits(v));
                }
            }
            black_box(acc);
        });
    });
    bytes as f64 / t.as_secs_f64() / 1e9
}

fn pool_overhead(threads: &[usize]) {
    for &t in threads {
        let pool = Pool::new(t).unwrap();
        for tasks in [1, 2, 8] {
            let d = time_calls(1, Duration::from_millis(500), |_| {
                pool.for_each(tasks, |i| {
                    black_box(i);
                })
            });
            println!(
                "pool overhead: threads={t} tasks={tasks}: {:.2} us/call",
                d.as_secs_f64() * 1e6
            );
        }
    }
}

fn main() {
    let o = parse();
    println!(
        "isa={} available_parallelism={}",
        detected_isa().name(),
        redrafter_kernels::available_threads()
    );
    if o.pool_overhead {
        pool_overhead(&o.threads);
        return;
    }
    let pools: Vec<Pool> = o.threads.iter().map(|&t| Pool::new(t).unwrap()).collect();
    let min = Duration::from_millis(250);
    let mmax = *o.ms.iter().max().unwrap_or(&1);
    println!(
        "{:<9} {:>5} {:>5} {:>5} {:>3} {:>3} {:>10} {:>8} {:>8}",
        "layer", "dtype", "K", "N", "M", "thr", "us/call", "GB/s", "GFLOP/s"
    );
    for (name, k, n) in SHAPES {
        let x: Vec<f32> = (0..mmax * k)
            .map(|i| ((i % 23) as f32 - 11.0) * 0.05)
            .collect();
        let mut y = vec![0.0f32; mmax * n];
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
        for dtype in ["f32", "bf16"] {
            let (set_f, set_b);
            let elem;
            if dtype == "f32" {
                if !o.f32 {
                    continue;
                }
                set_f = weight_set(n * k, weight_f32);
                set_b = Vec::new();
                elem = 4;
            } else {
                if !o.bf16 {
                    continue;
                }
                set_f = Vec::new();
                set_b = weight_set(n * k, weight_bf16);
                elem = 2;
            }
            let copies = set_f.len().max(set_b.len());
            for pool in &pools {
                let floor = if dtype == "f32" {
                    read_floor(&set_f, pool, f32::to_bits)
                } else {
                    read_floor(&set_b, pool, u32::from)
                };
                println!(
                    "{name:<9} {dtype:>5} {k:>5} {n:>5} {:>3} {:>3} {:>10} {floor:>8.1} {:>8}",
                    "-",
                    pool.threads(),
                    "(read)",
                    "-"
                );
                for &m in &o.ms {
                    let xs = &x[..m * k];
                    let ys = &mut y[..m * n];
                    let t = time_calls(copies, min, |c| {
                        let r = match (dtype, o.plan) {
                            ("f32", None) => {
                                linear_f32(xs, m, k, &set_f[c], n, Some(&bias), ys, pool)
                            }
                            ("f32", Some((mb, nb, pf, l1))) => tuning::linear_f32_plan(
                                mb, nb, pf, l1, 4, xs, m, k, &set_f[c], n, ys, pool,
                            ),
                            (_, None) => {
                                linear_bf16w(xs, m, k, &set_b[c], n, Some(&bias), ys, pool)
                            }
                            (_, Some((mb, nb, pf, l1))) => tuning::linear_bf16w_plan(
                                mb, nb, pf, l1, 4, xs, m, k, &set_b[c], n, ys, pool,
                            ),
                        };
                        r.unwrap();
                        black_box(&ys[0]);
                    });
                    let s = t.as_secs_f64();
                    println!(
                        "{name:<9} {dtype:>5} {k:>5} {n:>5} {m:>3} {:>3} {:>10.1} {:>8.1} {:>8.1}",
                        pool.threads(),
                        s * 1e6,
                        (n * k * elem) as f64 / s / 1e9,
                        2.0 * (m * n * k) as f64 / s / 1e9
                    );
                }
            }
        }
    }
}

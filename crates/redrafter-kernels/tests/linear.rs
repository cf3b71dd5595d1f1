//! Accuracy against an f64 reference, bitwise determinism (rows, batch size, threads, ISA,
//! bf16 vs widened f32) and input validation.
use proptest::prelude::*;
use redrafter_kernels::{
    detected_isa, linear_bf16w, linear_bf16w_isa, linear_f32, linear_f32_isa, Isa, KernelError,
    Pool,
};

/// Deterministic pseudo-random numbers in [-1, 1) (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next_f32()).collect()
    }
}

fn bf16_bits(v: f32) -> u16 {
    // Round to nearest even (inputs are finite).
    let b = v.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn widen(w: &[u16]) -> Vec<f32> {
    w.iter()
        .map(|&b| f32::from_bits(u32::from(b) << 16))
        .collect()
}

/// Checks `y` against an f64 reference with an error bound for f32 accumulation.
#[allow(clippy::too_many_arguments)]
fn check_close(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    y: &[f32],
) {
    let gamma = (k / 8 + 12) as f64 * f32::EPSILON as f64;
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut a) = (0.0f64, 0.0f64);
            for t in 0..k {
                let p = x[i * k + t] as f64 * w[j * k + t] as f64;
                s += p;
                a += p.abs();
            }
            if let Some(b) = bias {
                s += b[j] as f64;
                a += (b[j] as f64).abs();
            }
            let got = y[i * n + j] as f64;
            assert!(
                (got - s).abs() <= gamma * a + 1e-30,
                "m={m} k={k} n={n} y[{i},{j}] = {got}, reference {s}"
            );
        }
    }
}

fn pools() -> Vec<Pool> {
    (1..=3).map(|t| Pool::new(t).unwrap()).collect()
}

fn isas() -> Vec<Isa> {
    [Isa::Avx2Fma, Isa::Portable]
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
}

const KS: [usize; 6] = [1, 7, 8, 9, 33, 576];
const NS: [usize; 6] = [1, 3, 5, 17, 64, 100];
const MMAX: usize = 67;

#[test]
fn matches_reference_and_is_row_independent() {
    let pools = pools();
    let one = &pools[0];
    for &k in &KS {
        for &n in &NS {
            let mut rng = Rng::new((k * 1000 + n) as u64);
            let x = rng.vec(MMAX * k);
            let w = rng.vec(n * k);
            let b = rng.vec(n);
            for bias in [None, Some(&b[..])] {
                // Every row alone (M = 1, one thread, detected ISA).
                let mut alone = vec![0.0f32; MMAX * n];
                for i in 0..MMAX {
                    let xi = &x[i * k..(i + 1) * k];
                    let yi = &mut alone[i * n..(i + 1) * n];
                    linear_f32(xi, 1, k, &w, n, bias, yi, one).unwrap();
                }
                check_close(&x, MMAX, k, &w, n, bias, &alone);
                for m in 1..=MMAX {
                    for (pi, pool) in pools.iter().enumerate() {
                        for isa in isas() {
                            // Keep the sweep affordable: all m on the detected ISA and one
                            // thread, a subset elsewhere.
                            if (pi > 0 || isa != detected_isa()) && m % 5 != 1 && m != MMAX {
                                continue;
                            }
                            let mut y = vec![f32::NAN; m * n];
                            linear_f32_isa(isa, &x[..m * k], m, k, &w, n, bias, &mut y, pool)
                                .unwrap();
                            assert!(
                                y.iter()
                                    .zip(&alone[..m * n])
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "not bitwise equal to rows alone: m={m} k={k} n={n} threads={} \
                                 isa={isa:?} bias={}",
                                pool.threads(),
                                bias.is_some()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_equals_f32_on_widened_weights() {
    let pools = pools();
    for &k in &KS {
        for &n in &NS {
            let mut rng = Rng::new((k * 7919 + n) as u64);
            let x = rng.vec(MMAX * k);
            let wb: Vec<u16> = rng.vec(n * k).into_iter().map(bf16_bits).collect();
            let wf = widen(&wb);
            let b = rng.vec(n);
            for m in [1, 2, 3, 4, 5, 8, 13, 32, MMAX] {
                for bias in [None, Some(&b[..])] {
                    let mut want = vec![0.0f32; m * n];
                    linear_f32(&x[..m * k], m, k, &wf, n, bias, &mut want, &pools[0]).unwrap();
                    check_close(&x[..m * k], m, k, &wf, n, bias, &want);
                    for pool in &pools {
                        for isa in isas() {
                            let mut y = vec![f32::NAN; m * n];
                            linear_bf16w_isa(isa, &x[..m * k], m, k, &wb, n, bias, &mut y, pool)
                                .unwrap();
                            assert!(
                                y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                                "bf16 != f32: m={m} k={k} n={n} isa={isa:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn large_shapes_multi_thread() {
    // The target model's shapes, a few rows, against the reference and bitwise across threads.
    let pools = pools();
    for (k, n) in [(576, 1536), (1536, 576), (576, 4099)] {
        let mut rng = Rng::new(k as u64 ^ n as u64);
        let x = rng.vec(9 * k);
        let w = rng.vec(n * k);
        let b = rng.vec(n);
        let mut first = vec![0.0f32; 9 * n];
        linear_f32(&x, 9, k, &w, n, Some(&b), &mut first, &pools[0]).unwrap();
        check_close(&x, 9, k, &w, n, Some(&b), &first);
        for pool in &pools[1..] {
            let mut y = vec![0.0f32; 9 * n];
            linear_f32(&x, 9, k, &w, n, Some(&b), &mut y, pool).unwrap();
            assert!(y
                .iter()
                .zip(&first)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

#[test]
fn empty_and_k_zero() {
    let pool = Pool::new(2).unwrap();
    // m == 0 and n == 0 are no-ops.
    linear_f32(&[], 0, 5, &[0.0; 15], 3, None, &mut [], &pool).unwrap();
    linear_f32(&[0.0; 10], 2, 5, &[], 0, Some(&[]), &mut [], &pool).unwrap();
    linear_bf16w(&[], 0, 5, &[0; 15], 3, None, &mut [], &pool).unwrap();
    // k == 0: the bias, or zeros.
    let mut y = [f32::NAN; 6];
    linear_f32(&[], 2, 0, &[], 3, Some(&[1.0, -2.0, 3.5]), &mut y, &pool).unwrap();
    assert_eq!(y, [1.0, -2.0, 3.5, 1.0, -2.0, 3.5]);
    linear_bf16w(&[], 2, 0, &[], 3, None, &mut y, &pool).unwrap();
    assert_eq!(y, [0.0; 6]);
}

#[test]
fn bad_lengths_are_errors() {
    let pool = Pool::new(1).unwrap();
    let x = [0.0f32; 6];
    let w = [0.0f32; 12];
    let wb = [0u16; 12];
    let mut y = [0.0f32; 8];
    let len = |arg, expected, got| KernelError::Length { arg, expected, got };
    assert_eq!(
        linear_f32(&x[..5], 2, 3, &w, 4, None, &mut y, &pool),
        Err(len("x", 6, 5))
    );
    assert_eq!(
        linear_f32(&x, 2, 3, &w[..11], 4, None, &mut y, &pool),
        Err(len("w", 12, 11))
    );
    assert_eq!(
        linear_f32(&x, 2, 3, &w, 4, None, &mut y[..7], &pool),
        Err(len("y", 8, 7))
    );
    assert_eq!(
        linear_f32(&x, 2, 3, &w, 4, Some(&[0.0; 3]), &mut y, &pool),
        Err(len("bias", 4, 3))
    );
    assert_eq!(
        linear_bf16w(&x, 2, 3, &wb[..10], 4, None, &mut y, &pool),
        Err(len("w", 12, 10))
    );
    assert_eq!(
        linear_f32(&x, usize::MAX, 2, &w, 4, None, &mut y, &pool),
        Err(KernelError::Overflow { arg: "x" })
    );
    assert_eq!(
        linear_f32(&x, 2, 3, &w, usize::MAX / 2, None, &mut y, &pool),
        Err(KernelError::Overflow { arg: "w" })
    );
    // Messages name the argument.
    let e = linear_f32(&x, 2, 3, &w, 4, None, &mut y[..7], &pool).unwrap_err();
    assert!(e.to_string().starts_with("y: expected 8 elements"), "{e}");
}

#[test]
fn isa_names() {
    assert_eq!(Isa::Avx2Fma.name(), "avx2-fma");
    assert_eq!(Isa::Portable.name(), "portable");
    assert!(Isa::Portable.is_available());
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        Isa::Avx2Fma.is_available(),
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any shape: close to the reference, and every row bitwise equal to that row alone on one
    /// thread with the portable kernel.
    #[test]
    fn any_shape(
        m in 1usize..40,
        k in 0usize..90,
        n in 1usize..40,
        threads in 1usize..4,
        with_bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let pool = Pool::new(threads).unwrap();
        let single = Pool::new(1).unwrap();
        let mut rng = Rng::new(seed);
        let x = rng.vec(m * k);
        let w = rng.vec(n * k);
        let b = rng.vec(n);
        let bias = with_bias.then_some(&b[..]);
        let mut y = vec![f32::NAN; m * n];
        linear_f32(&x, m, k, &w, n, bias, &mut y, &pool).unwrap();
        check_close(&x, m, k, &w, n, bias, &y);
        for i in 0..m {
            let mut yi = vec![f32::NAN; n];
            linear_f32_isa(Isa::Portable, &x[i * k..(i + 1) * k], 1, k, &w, n, bias, &mut yi, &single)
                .unwrap();
            for j in 0..n {
                prop_assert_eq!(y[i * n + j].to_bits(), yi[j].to_bits(), "row {} col {}", i, j);
            }
        }
    }
}

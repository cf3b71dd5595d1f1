//! The micro-kernels: dot products of `MB` rows of x with `NB` rows of W.
//!
//! Every element `y[i, j]` is produced by the same sequence of operations, whatever the tile
//! shape, the ISA or the thread that computes it (the *canonical order*):
//!
//! 1. eight lane sums `s[l]`, starting at `+0.0`: for every full block `b` of eight columns,
//!    `s[l] = fma(x[8b + l], w[8b + l], s[l])` (fused, one rounding), blocks in increasing order;
//! 2. the reduction `((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))`;
//! 3. the tail columns `t = 8 * (k / 8) .. k` in increasing order: `r = fma(x[t], w[t], r)`;
//! 4. (in the driver) `y = r + bias[j]` when there is a bias.
//!
//! So a row of x gives bitwise the same outputs alone or inside any batch, on any thread
//! count, and the portable kernel equals the AVX2 one bitwise.

/// A weight element type: f32, or bf16 stored as its `u16` bit pattern.
pub(crate) trait Weight: Copy + Send + Sync + 'static {
    /// The weight as f32 (exact for both types).
    fn to_f32(self) -> f32;

    /// Loads eight consecutive weights as eight f32 lanes.
    ///
    /// # Safety
    /// `p..p + 8` must be readable and the CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Weight for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees eight readable floats at `p`.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl Weight for u16 {
    /// bf16 -> f32: the bf16 bits are the high half of the f32 bits.
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const u16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees eight readable u16 (16 bytes) at `p`.
        let h = unsafe { _mm_loadu_si128(p as *const __m128i) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

/// Software prefetch for a micro-kernel call: `per_iter` cache lines from `next` on, up to
/// `end`, once every `every` steps of eight columns. The addresses are hints only: they are
/// never dereferenced and may point anywhere.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Prefetch {
    pub next: *const u8,
    pub end: *const u8,
    pub per_iter: usize,
    pub every: usize,
    /// Into L1 (`T0`) rather than L2 (`T1`).
    pub l1: bool,
}

impl Prefetch {
    pub const NONE: Self = Self {
        next: std::ptr::null(),
        end: std::ptr::null(),
        per_iter: 0,
        every: 1,
        l1: false,
    };
}

/// A micro-kernel implementation (one per ISA).
pub(crate) trait Kernel {
    /// Dot products (canonical order, no bias) of the `MB` rows of `x` with the `NB` rows of
    /// `w`, both with row stride `k`: `out[i][j] = x[i, :] . w[j, :]`; issues the prefetches
    /// described by `pf` along the way (ignored by kernels without prefetch).
    fn tile<W: Weight, const MB: usize, const NB: usize>(
        x: &[f32],
        w: &[W],
        k: usize,
        pf: Prefetch,
    ) -> [[f32; NB]; MB];
}

/// Step 3 of the canonical order: the `k % 8` tail columns, after the lane reduction.
#[inline(always)]
pub(crate) fn tail<W: Weight, const MB: usize, const NB: usize>(
    x: &[f32],
    w: &[W],
    k: usize,
    out: &mut [[f32; NB]; MB],
) {
    let k8 = k / 8 * 8;
    for (i, row) in out.iter_mut().enumerate() {
        for (j, r) in row.iter_mut().enumerate() {
            for t in k8..k {
                *r = x[i * k + t].mul_add(w[j * k + t].to_f32(), *r);
            }
        }
    }
}

/// Step 2 of the canonical order on eight lane sums.
#[inline(always)]
pub(crate) fn reduce8(s: &[f32; 8]) -> f32 {
    ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
}

/// Portable micro-kernel: the canonical order written with `f32::mul_add`.
pub(crate) struct Portable;

impl Kernel for Portable {
    fn tile<W: Weight, const MB: usize, const NB: usize>(
        x: &[f32],
        w: &[W],
        k: usize,
        _pf: Prefetch,
    ) -> [[f32; NB]; MB] {
        let x = &x[..MB * k];
        let w = &w[..NB * k];
        let mut acc = [[[0.0f32; 8]; NB]; MB];
        for b in 0..k / 8 {
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let xb = &x[i * k + 8 * b..i * k + 8 * b + 8];
                for (j, acc_ij) in acc_i.iter_mut().enumerate() {
                    let wb = &w[j * k + 8 * b..j * k + 8 * b + 8];
                    for l in 0..8 {
                        acc_ij[l] = xb[l].mul_add(wb[l].to_f32(), acc_ij[l]);
                    }
                }
            }
        }
        let mut out = [[0.0f32; NB]; MB];
        for (out_i, acc_i) in out.iter_mut().zip(&acc) {
            for (o, a) in out_i.iter_mut().zip(acc_i) {
                *o = reduce8(a);
            }
        }
        tail(x, w, k, &mut out);
        out
    }
}

/// AVX2 + FMA micro-kernel.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx2 {
    #[inline]
    fn tile<W: Weight, const MB: usize, const NB: usize>(
        x: &[f32],
        w: &[W],
        k: usize,
        pf: Prefetch,
    ) -> [[f32; NB]; MB] {
        // Soundness of the raw loads below rests on these two checks (never fail in practice:
        // the driver slices exactly MB and NB rows).
        assert!(x.len() >= MB * k && w.len() >= NB * k);
        assert!(crate::avx2_available());
        // SAFETY: AVX2 and FMA are present (checked above); `x` and `w` hold MB and NB rows of k.
        unsafe {
            match (pf.per_iter, pf.l1) {
                (0, _) => avx2_tile::<W, MB, NB, 0>(x, w, k, pf),
                (_, true) => avx2_tile::<W, MB, NB, 1>(x, w, k, pf),
                (_, false) => avx2_tile::<W, MB, NB, 2>(x, w, k, pf),
            }
        }
    }
}

/// Sums each of four accumulators with the canonical tree; lane `r` of the result belongs to
/// accumulator `r`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn reduce4(
    a: std::arch::x86_64::__m256,
    b: std::arch::x86_64::__m256,
    c: std::arch::x86_64::__m256,
    d: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]
    let ab = _mm256_hadd_ps(a, b);
    let cd = _mm256_hadd_ps(c, d);
    // [(a0+a1)+(a2+a3), b.., c.., d.. | (a4+a5)+(a6+a7), b.., c.., d..]
    let abcd = _mm256_hadd_ps(ab, cd);
    _mm_add_ps(
        _mm256_castps256_ps128(abcd),
        _mm256_extractf128_ps::<1>(abcd),
    )
}

/// One step of eight columns: `acc[i][j] += x[i, kk..kk+8] * w[j, kk..kk+8]` (lane-wise FMA).
///
/// # Safety
/// AVX2 and FMA must be available; `xp` must point at `MB` rows and `wp` at `NB` rows of `k`
/// elements, and `kk + 8 <= k`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_step<W: Weight, const MB: usize, const NB: usize>(
    acc: &mut [[std::arch::x86_64::__m256; NB]; MB],
    xp: *const f32,
    wp: *const W,
    k: usize,
    kk: usize,
) {
    use std::arch::x86_64::*;
    // Keep 12 accumulators plus the operands within the 16 ymm registers: hold the MB x
    // vectors and stream the weights one by one when MB <= NB, the other way round otherwise.
    // (Only the instruction order differs, not the arithmetic.)
    if MB <= NB {
        let mut xv = [_mm256_setzero_ps(); MB];
        for (i, v) in xv.iter_mut().enumerate() {
            // SAFETY: i < MB and kk + 8 <= k: within the MB rows at `xp`.
            *v = unsafe { _mm256_loadu_ps(xp.add(i * k + kk)) };
        }
        for j in 0..NB {
            // SAFETY: j < NB and kk + 8 <= k: within the NB rows at `wp`.
            let wv = unsafe { W::load8(wp.add(j * k + kk)) };
            for (acc_i, xi) in acc.iter_mut().zip(&xv) {
                acc_i[j] = _mm256_fmadd_ps(*xi, wv, acc_i[j]);
            }
        }
    } else {
        let mut wv = [_mm256_setzero_ps(); NB];
        for (j, v) in wv.iter_mut().enumerate() {
            // SAFETY: as above.
            *v = unsafe { W::load8(wp.add(j * k + kk)) };
        }
        for (i, acc_i) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let xv = unsafe { _mm256_loadu_ps(xp.add(i * k + kk)) };
            for (a, v) in acc_i.iter_mut().zip(&wv) {
                *a = _mm256_fmadd_ps(xv, *v, *a);
            }
        }
    }
}

/// The AVX2 tile; `PF`: 0 no prefetch, 1 prefetch into L1, 2 into L2.
///
/// # Safety
/// AVX2 and FMA must be available; `x` must hold `MB * k` and `w` `NB * k` elements.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_tile<W: Weight, const MB: usize, const NB: usize, const PF: u8>(
    x: &[f32],
    w: &[W],
    k: usize,
    mut pf: Prefetch,
) -> [[f32; NB]; MB] {
    use std::arch::x86_64::*;
    let k8 = k / 8 * 8;
    let xp = x.as_ptr();
    let wp = w.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); NB]; MB];
    let mut kk = 0;
    if PF > 0 && pf.next < pf.end && pf.per_iter > 0 {
        // The first steps also issue the prefetches (`per_iter` lines every `every` steps), the
        // rest of the loop is left without any.
        let every = pf.every.max(1);
        let lines = (pf.end as usize - pf.next as usize).div_ceil(64);
        let pf_steps = lines.div_ceil(pf.per_iter) * every;
        let pf_end = (pf_steps * 8).min(k8 / (8 * every) * (8 * every));
        while kk < pf_end {
            for _ in 0..pf.per_iter {
                // Only a hint: prefetching never faults, and `wrapping_add` forms no
                // reference.
                if PF == 1 {
                    _mm_prefetch::<_MM_HINT_T0>(pf.next as *const i8);
                } else {
                    _mm_prefetch::<_MM_HINT_T1>(pf.next as *const i8);
                }
                pf.next = pf.next.wrapping_add(64);
            }
            for _ in 0..every {
                // SAFETY: forwarded precondition; kk + 8 <= pf_end <= k8.
                unsafe { avx2_step::<W, MB, NB>(&mut acc, xp, wp, k, kk) };
                kk += 8;
            }
        }
    }
    while kk < k8 {
        // SAFETY: forwarded precondition; kk + 8 <= k8.
        unsafe { avx2_step::<W, MB, NB>(&mut acc, xp, wp, k, kk) };
        kk += 8;
    }
    let mut out = [[0.0f32; NB]; MB];
    let zero = _mm256_setzero_ps();
    for (out_i, acc_i) in out.iter_mut().zip(&acc) {
        for (j0, quad) in acc_i.chunks(4).enumerate() {
            let get = |r: usize| quad.get(r).copied().unwrap_or(zero);
            // SAFETY: AVX2 is available (precondition of this function).
            let r = unsafe { reduce4(get(0), get(1), get(2), get(3)) };
            let mut lanes = [0.0f32; 4];
            // SAFETY: `lanes` is 16 writable bytes.
            unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), r) };
            for (o, v) in out_i[4 * j0..].iter_mut().zip(lanes) {
                *o = v;
            }
        }
    }
    tail(x, w, k, &mut out);
    out
}

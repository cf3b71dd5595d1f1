//! CPU kernels for the target model's linear layers during speculative decoding:
//! `y = x @ W^T + b` (what `torch.nn.functional.linear` computes) for few rows of `x`
//! (M = 1..64) with `W` in its original row-major `[N, K]` layout, unpacked and uncopied.
//!
//! * [`linear_f32`]: f32 weights; [`linear_bf16w`]: bf16 weights (as `u16` bits), widened to
//!   f32 in registers. Both accumulate in f32.
//! * Each weight row is read from memory once per call for all M rows: a block of `NB` weight
//!   rows is loaded and then used against every block of `MB` rows of x while it is hot in L1.
//! * Work is split over the output features across a persistent [`Pool`].
//! * Runtime dispatch: AVX2 + FMA on x86_64 when the CPU has it ([`detected_isa`]), otherwise a
//!   portable kernel that gives bitwise the same results.
//!
//! Determinism: the floating-point operations that produce `y[i, j]` depend only on
//! `x[i, :]`, `w[j, :]`, `bias[j]` and `k`, never on M, on the position of the row in the
//! batch, on N, on the thread count or on the ISA: eight lane sums of fused multiply-adds over
//! the full blocks of eight columns, the reduction `((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7))`, the
//! `k % 8` tail columns by scalar FMAs in order, then `+ bias[j]`. `linear_bf16w` equals
//! `linear_f32` on the widened weights, bitwise.
//!
//! Design (measured on a 2-core AMD EPYC / Zen 3 VM, see `examples/bench_linear.rs`):
//! dot-product micro-kernels on row-major W; 3 x-rows x 4 W-rows tiles (12 ymm accumulators +
//! 3 x + 1 w operands = 16 registers, no spills); one row of x with f32 weights uses 1 x 8
//! tiles. The W block is used for every row block while hot in L1, and the next block is
//! prefetched into L2, spread over the row blocks, so memory and compute overlap. The pool's
//! per-call overhead is ~0.4 us (rayon's `install` from a foreign thread: ~20 us).
//!
//! ```
//! use redrafter_kernels::{linear_f32, Pool};
//!
//! let pool = Pool::new(2)?;
//! let (m, k, n) = (2, 3, 2);
//! let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let w = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0];
//! let mut y = [0.0; 4];
//! linear_f32(&x, m, k, &w, n, Some(&[0.5, -0.5]), &mut y, &pool)?;
//! assert_eq!(y, [1.5, 4.5, 4.5, 10.5]);
//! # Ok::<(), redrafter_kernels::KernelError>(())
//! ```
#![warn(missing_docs)]

mod pool;
mod tile;

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

pub use pool::{available_threads, Pool, DEFAULT_SPIN};
use tile::{Kernel, Portable, Prefetch, Weight};

/// Invalid input to a kernel, or a pool that could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// A buffer's length does not match the shape.
    Length {
        /// Which argument.
        arg: &'static str,
        /// Length the shape requires.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// `rows * cols` of an argument overflows `usize`.
    Overflow {
        /// Which argument.
        arg: &'static str,
    },
    /// The requested instruction set is not supported by this CPU.
    IsaUnavailable(Isa),
    /// The thread pool could not be created.
    Pool(String),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { arg, expected, got } => write!(
                f,
                "{arg}: expected {expected} elements for the given shape, got {got}"
            ),
            Self::Overflow { arg } => write!(f, "{arg}: shape is too large (size overflows)"),
            Self::IsaUnavailable(isa) => {
                write!(
                    f,
                    "instruction set {} is not supported by this CPU",
                    isa.name()
                )
            }
            Self::Pool(msg) => write!(f, "thread pool: {msg}"),
        }
    }
}

impl std::error::Error for KernelError {}

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86_64 with AVX2 and FMA (256-bit vectors).
    Avx2Fma,
    /// Plain Rust (`f32::mul_add`), any CPU.
    Portable,
}

impl Isa {
    /// `"avx2-fma"` or `"portable"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx2Fma => "avx2-fma",
            Self::Portable => "portable",
        }
    }

    /// Whether this CPU can run the ISA.
    pub fn is_available(self) -> bool {
        match self {
            Self::Avx2Fma => avx2_available(),
            Self::Portable => true,
        }
    }
}

/// 0: not probed yet, 1: no AVX2+FMA, 2: AVX2+FMA.
static AVX2: AtomicU8 = AtomicU8::new(0);

/// Whether the CPU has AVX2 and FMA (probed once, then cached).
pub(crate) fn avx2_available() -> bool {
    match AVX2.load(Ordering::Relaxed) {
        0 => {
            let yes = probe_avx2();
            AVX2.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
        v => v == 2,
    }
}

#[cfg(target_arch = "x86_64")]
fn probe_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn probe_avx2() -> bool {
    false
}

/// The fastest instruction set this CPU supports (what [`linear_f32`] uses).
pub fn detected_isa() -> Isa {
    if avx2_available() {
        Isa::Avx2Fma
    } else {
        Isa::Portable
    }
}

/// `y = x @ w^T + bias` with f32 weights.
///
/// `x` is row-major `[m, k]`, `w` row-major `[n, k]` (an `nn.Linear` weight as is), `bias`
/// `[n]`, `y` row-major `[m, n]` (overwritten). Lengths are checked; `m == 0` or `n == 0` is a
/// no-op and `k == 0` gives the bias (or zeros).
#[allow(clippy::too_many_arguments)]
pub fn linear_f32(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    pool: &Pool,
) -> Result<(), KernelError> {
    linear(detected_isa(), x, m, k, w, n, bias, y, pool)
}

/// [`linear_f32`] on a chosen instruction set (for tests and comparisons).
#[allow(clippy::too_many_arguments)]
pub fn linear_f32_isa(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    pool: &Pool,
) -> Result<(), KernelError> {
    linear(isa, x, m, k, w, n, bias, y, pool)
}

/// `y = x @ w^T + bias` with bf16 weights given as their `u16` bit patterns (`[n, k]`,
/// row-major); each weight is widened exactly to f32 and the sums are f32, in the same order
/// as [`linear_f32`] (so it equals `linear_f32` on the widened weights, bitwise).
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16w(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u16],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    pool: &Pool,
) -> Result<(), KernelError> {
    linear(detected_isa(), x, m, k, w, n, bias, y, pool)
}

/// [`linear_bf16w`] on a chosen instruction set.
#[allow(clippy::too_many_arguments)]
pub fn linear_bf16w_isa(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u16],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    pool: &Pool,
) -> Result<(), KernelError> {
    linear(isa, x, m, k, w, n, bias, y, pool)
}

fn checked_len(arg: &'static str, rows: usize, cols: usize, got: usize) -> Result<(), KernelError> {
    let expected = rows
        .checked_mul(cols)
        .ok_or(KernelError::Overflow { arg })?;
    if expected != got {
        return Err(KernelError::Length { arg, expected, got });
    }
    Ok(())
}

/// The tiling of a call: `MB` rows of x by `NB` rows of W per micro-kernel call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    mb: usize,
    nb: usize,
    /// Software prefetch of the weight block this many blocks ahead (0: none).
    pf_blocks: usize,
    /// Prefetch into L1 (else L2).
    pf_l1: bool,
    /// Tasks per thread the columns are split into (claimed dynamically).
    tasks_per_thread: usize,
}

/// The tiling for `m` rows of x and weights of `w_bytes` bytes each, chosen by measurement on
/// AMD EPYC (Zen 3, 2 cores). Default: 3 x 4 tiles (12 accumulators + 4 operands = the 16 ymm
/// registers) with the next weight block prefetched into L2, spread over the row blocks, so
/// the memory stream keeps flowing while the current block is used for every row block. One
/// row of x with f32 weights: 8 weight rows at a time (8 independent accumulators) and only
/// the hardware prefetcher, which measured faster there.
fn plan_for(m: usize, w_bytes: usize) -> Plan {
    if m == 1 && w_bytes == 4 {
        Plan {
            mb: 1,
            nb: 8,
            pf_blocks: 0,
            pf_l1: false,
            tasks_per_thread: 4,
        }
    } else {
        Plan {
            mb: 3,
            nb: 4,
            pf_blocks: 1,
            pf_l1: false,
            tasks_per_thread: 4,
        }
    }
}

/// Row blocks `(first row, rows)` covering `0..m`: blocks of `mb`, except that a single
/// leftover row is merged with the last full block and split in two (3 + 1 -> 2 + 2), since a
/// one-row tile has few independent accumulators.
fn row_blocks(m: usize, mb: usize) -> impl Iterator<Item = (usize, usize)> {
    let (full, left) = (m / mb, m % mb);
    let merge = left == 1 && full >= 1 && mb >= 3;
    let plain = if merge { full - 1 } else { full };
    let tail: [usize; 2] = if merge {
        [(mb + 1).div_ceil(2), mb.div_ceil(2)]
    } else {
        [left, 0]
    };
    let base = plain * mb;
    (0..plain).map(move |b| (b * mb, mb)).chain(
        [(base, tail[0]), (base + tail[0], tail[1])]
            .into_iter()
            .filter(|&(_, r)| r > 0),
    )
}

/// Validated arguments of one call.
struct Problem<'a, W> {
    x: &'a [f32],
    m: usize,
    k: usize,
    w: &'a [W],
    n: usize,
    bias: Option<&'a [f32]>,
}

/// The output buffer, shared by the threads of a call (each writes its own columns).
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: threads write disjoint elements (disjoint column ranges), and the buffer outlives the
// call (`Pool::for_each` returns only when every task is done).
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

impl Out {
    /// # Safety
    /// No other thread may access element `i` during the call.
    #[inline(always)]
    unsafe fn write(self, i: usize, v: f32) {
        assert!(i < self.len);
        // SAFETY: in bounds (checked); exclusive per the caller's contract.
        unsafe { *self.ptr.add(i) = v };
    }
}

#[allow(clippy::too_many_arguments)]
fn linear<W: Weight>(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    pool: &Pool,
) -> Result<(), KernelError> {
    checked_len("x", m, k, x.len())?;
    checked_len("w", n, k, w.len())?;
    checked_len("y", m, n, y.len())?;
    if let Some(b) = bias {
        checked_len("bias", n, 1, b.len())?;
    }
    if !isa.is_available() {
        return Err(KernelError::IsaUnavailable(isa));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        for row in y.chunks_exact_mut(n) {
            match bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
        }
        return Ok(());
    }
    let p = Problem {
        x,
        m,
        k,
        w,
        n,
        bias,
    };
    let plan = plan_for(m, std::mem::size_of::<W>());
    run(isa, &p, plan, y, pool);
    Ok(())
}

/// Splits the output columns into tasks and runs them on the pool.
fn run<W: Weight>(isa: Isa, p: &Problem<'_, W>, plan: Plan, y: &mut [f32], pool: &Pool) {
    let out = Out {
        ptr: y.as_mut_ptr(),
        len: y.len(),
    };
    let row_bytes = p.k * std::mem::size_of::<W>();
    let blocks = p.n.div_ceil(plan.nb);
    let block_bytes = row_bytes * plan.nb;
    let total = block_bytes * blocks;
    // Tasks of whole NB-blocks: `tasks_per_thread` per thread (so a late worker's share is
    // taken over by the others), but at most 2 MiB (balance on big layers) and at least 16 KiB.
    let target = (total / (plan.tasks_per_thread * pool.threads())).clamp(16 << 10, 2 << 20);
    let per_task = target.div_ceil(block_bytes).clamp(1, blocks);
    let tasks = blocks.div_ceil(per_task);
    let rows_per_task = per_task * plan.nb;
    pool.for_each(tasks, |t| {
        let j0 = t * rows_per_task;
        let j1 = (j0 + rows_per_task).min(p.n);
        // SAFETY: tasks cover disjoint column ranges [j0, j1).
        unsafe { run_cols(isa, p, plan, j0, j1, out) };
    });
}

/// Computes columns `j0..j1` of every row.
///
/// # Safety
/// No other thread may touch these columns of `out` during the call.
unsafe fn run_cols<W: Weight>(
    isa: Isa,
    p: &Problem<'_, W>,
    plan: Plan,
    j0: usize,
    j1: usize,
    out: Out,
) {
    macro_rules! go {
        ($kern:ty) => {
            match (plan.mb, plan.nb) {
                (1, 8) => cols::<$kern, W, 1, 8>(p, plan, j0, j1, out),
                (3, 4) => cols::<$kern, W, 3, 4>(p, plan, j0, j1, out),
                (2, 4) => cols::<$kern, W, 2, 4>(p, plan, j0, j1, out),
                (2, 6) => cols::<$kern, W, 2, 6>(p, plan, j0, j1, out),
                (4, 3) => cols::<$kern, W, 4, 3>(p, plan, j0, j1, out),
                (1, 4) => cols::<$kern, W, 1, 4>(p, plan, j0, j1, out),
                _ => cols::<$kern, W, 1, 1>(p, plan, j0, j1, out),
            }
        };
    }
    // SAFETY: forwarded contract (exclusive columns).
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => go!(tile::Avx2),
            _ => go!(Portable),
        }
    }
}

/// Columns `j0..j1` in blocks of `NB` (then single columns), each against all rows of x in
/// blocks of up to `MB` rows, while the weight block is hot in L1. With `plan.pf_blocks`, the
/// weights `pf_blocks` blocks ahead are prefetched, spread evenly over the row blocks so that
/// the memory stream keeps flowing while the later row blocks compute.
///
/// # Safety
/// As [`run_cols`].
unsafe fn cols<K: Kernel, W: Weight, const MB: usize, const NB: usize>(
    p: &Problem<'_, W>,
    plan: Plan,
    j0: usize,
    j1: usize,
    out: Out,
) {
    let k = p.k;
    let passes = row_blocks(p.m, MB).count();
    let block_bytes = NB * k * std::mem::size_of::<W>();
    let block_lines = block_bytes.div_ceil(64);
    let lines_per_pass = block_lines.div_ceil(passes);
    // Spread the lines of a block evenly over all the steps of all its row blocks.
    let steps = passes * (k / 8);
    let (per_iter, every) = if steps == 0 {
        (0, 1)
    } else if block_lines >= steps {
        (block_lines.div_ceil(steps), 1)
    } else {
        (1, steps / block_lines)
    };
    let mut j = j0;
    while j + NB <= j1 {
        let ahead = j + plan.pf_blocks * NB;
        let ahead_range = (plan.pf_blocks > 0 && per_iter > 0 && ahead < j1).then(|| {
            let end = (ahead + NB).min(j1);
            p.w[ahead * k..end * k].as_ptr_range()
        });
        let w = &p.w[j * k..(j + NB) * k];
        for (pass, (i, mb)) in row_blocks(p.m, MB).enumerate() {
            let pf = match &ahead_range {
                Some(r) => {
                    let next = (r.start as *const u8).wrapping_add(pass * lines_per_pass * 64);
                    Prefetch {
                        next,
                        end: (r.end as *const u8).min(next.wrapping_add(lines_per_pass * 64)),
                        per_iter,
                        every,
                        l1: plan.pf_l1,
                    }
                }
                None => Prefetch::NONE,
            };
            // SAFETY: forwarded contract.
            unsafe { tile_rows::<K, W, NB>(p, i, mb, j, w, pf, out) };
        }
        j += NB;
    }
    while j < j1 {
        let w = &p.w[j * k..(j + 1) * k];
        for (i, mb) in row_blocks(p.m, MB) {
            // SAFETY: forwarded contract.
            unsafe { tile_rows::<K, W, 1>(p, i, mb, j, w, Prefetch::NONE, out) };
        }
        j += 1;
    }
}

/// Rows `i..i + mb` (`mb <= 4`) by columns `j..j + NB`.
///
/// # Safety
/// As [`run_cols`].
#[inline(always)]
unsafe fn tile_rows<K: Kernel, W: Weight, const NB: usize>(
    p: &Problem<'_, W>,
    i: usize,
    mb: usize,
    j: usize,
    w: &[W],
    pf: Prefetch,
    out: Out,
) {
    let k = p.k;
    let x = &p.x[i * k..(i + mb) * k];
    // SAFETY (all arms): forwarded contract.
    unsafe {
        match mb {
            1 => store(p, i, j, &K::tile::<W, 1, NB>(x, w, k, pf), out),
            2 => store(p, i, j, &K::tile::<W, 2, NB>(x, w, k, pf), out),
            3 => store(p, i, j, &K::tile::<W, 3, NB>(x, w, k, pf), out),
            4 => store(p, i, j, &K::tile::<W, 4, NB>(x, w, k, pf), out),
            _ => {
                for r in 0..mb {
                    let xr = &x[r * k..(r + 1) * k];
                    store(p, i + r, j, &K::tile::<W, 1, NB>(xr, w, k, pf), out);
                }
            }
        }
    }
}

/// Step 4 of the canonical order (bias last) and the store.
///
/// # Safety
/// As [`run_cols`].
#[inline(always)]
unsafe fn store<W, const MB: usize, const NB: usize>(
    p: &Problem<'_, W>,
    i: usize,
    j: usize,
    r: &[[f32; NB]; MB],
    out: Out,
) {
    for (di, row) in r.iter().enumerate() {
        let base = (i + di) * p.n + j;
        for (dj, &v) in row.iter().enumerate() {
            let v = match p.bias {
                Some(b) => v + b[j + dj],
                None => v,
            };
            // SAFETY: column j + dj belongs to this task (forwarded contract).
            unsafe { out.write(base + dj, v) };
        }
    }
}

/// Benchmark and tuning hooks (not a stable API).
#[doc(hidden)]
pub mod tuning {
    use super::*;

    /// [`linear_f32`] with an explicit tiling `(mb, nb)` and prefetch distance (in blocks).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_f32_plan(
        mb: usize,
        nb: usize,
        pf_blocks: usize,
        pf_l1: bool,
        tasks_per_thread: usize,
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n: usize,
        y: &mut [f32],
        pool: &Pool,
    ) -> Result<(), KernelError> {
        plan_linear(
            mb,
            nb,
            pf_blocks,
            pf_l1,
            tasks_per_thread,
            x,
            m,
            k,
            w,
            n,
            y,
            pool,
        )
    }

    /// [`linear_bf16w`] with an explicit tiling.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_bf16w_plan(
        mb: usize,
        nb: usize,
        pf_blocks: usize,
        pf_l1: bool,
        tasks_per_thread: usize,
        x: &[f32],
        m: usize,
        k: usize,
        w: &[u16],
        n: usize,
        y: &mut [f32],
        pool: &Pool,
    ) -> Result<(), KernelError> {
        plan_linear(
            mb,
            nb,
            pf_blocks,
            pf_l1,
            tasks_per_thread,
            x,
            m,
            k,
            w,
            n,
            y,
            pool,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_linear<W: Weight>(
        mb: usize,
        nb: usize,
        pf_blocks: usize,
        pf_l1: bool,
        tasks_per_thread: usize,
        x: &[f32],
        m: usize,
        k: usize,
        w: &[W],
        n: usize,
        y: &mut [f32],
        pool: &Pool,
    ) -> Result<(), KernelError> {
        checked_len("x", m, k, x.len())?;
        checked_len("w", n, k, w.len())?;
        checked_len("y", m, n, y.len())?;
        if m == 0 || n == 0 || k == 0 {
            return linear(detected_isa(), x, m, k, w, n, None, y, pool);
        }
        let p = Problem {
            x,
            m,
            k,
            w,
            n,
            bias: None,
        };
        let plan = Plan {
            mb,
            nb,
            pf_blocks,
            pf_l1,
            tasks_per_thread: tasks_per_thread.max(1),
        };
        run(detected_isa(), &p, plan, y, pool);
        Ok(())
    }
}

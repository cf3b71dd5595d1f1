//! A small persistent thread pool with a per-call overhead of about a microsecond.
//!
//! The calling thread always takes part in the work, so a pool of `threads` owns
//! `threads - 1` worker threads. After a job a worker spins for a short while (so that the next
//! call of a forward pass finds it awake), then naps in short timed sleeps (polling for work
//! without needing to be woken), and after a longer idle time sleeps on a condition variable.
//!
//! A call publishes a job; a worker joins it only while it is still open. When the caller has
//! run out of tasks it closes the job and waits only for the workers that actually joined, so a
//! parked or descheduled worker never delays a call: its share is simply done by the others.
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::KernelError;

/// Default time a worker keeps spinning for the next job before it naps.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(200);
/// After spinning, a worker naps in steps of `NAP` for `NAP_FOR`, polling for a job without
/// needing a wake-up call, then sleeps until woken. Waking a sleeping thread costs the caller
/// a system call (over 10 us on a VM), so a call finding a napping worker does not wake it.
const NAP: Duration = Duration::from_micros(100);
const NAP_FOR: Duration = Duration::from_millis(20);

/// Low 32 bits of the job state: workers that joined the current job.
const JOINED_MASK: u64 = 0xffff_ffff;
/// Set once the caller stops accepting workers into the current job.
const CLOSED: u64 = 1 << 32;
/// The job number lives above the `CLOSED` bit.
const EPOCH_SHIFT: u32 = 33;

/// A type-erased `&(dyn Fn(usize) + Sync)` made of a thin data pointer and a trampoline.
#[derive(Clone, Copy)]
struct Job {
    data: *const (),
    call: unsafe fn(*const (), usize),
}

// SAFETY: `Job` only points at a closure that is `Sync` (enforced by `Pool::run`), and the pool
// guarantees the closure outlives every use (the caller waits for all joined workers).
unsafe impl Send for Job {}

/// Calls the `F` that `data` points at.
///
/// # Safety
/// `data` must come from a `&F` that is still alive.
unsafe fn trampoline<F: Fn(usize) + Sync>(data: *const (), worker: usize) {
    // SAFETY: guaranteed by the caller (see `Pool::run`).
    let f = unsafe { &*(data as *const F) };
    f(worker);
}

struct Shared {
    /// `epoch << EPOCH_SHIFT | CLOSED? | joined`.
    state: AtomicU64,
    /// Workers that finished the current job.
    done: AtomicUsize,
    job: Mutex<Option<Job>>,
    /// Number of parked workers; the caller bumps the epoch under this lock.
    sleepers: Mutex<usize>,
    wake: Condvar,
    shutdown: AtomicBool,
    spin: Duration,
    /// Payload of a panic in a worker, re-raised on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Persistent pool of `threads - 1` workers plus the calling thread.
///
/// Calls from several threads at once are safe: a call that finds the pool busy runs all of
/// its work on its own thread.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// Serializes callers; `try_lock` failure means "busy, run inline".
    busy: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .field("spin", &self.shared.spin)
            .finish()
    }
}

impl Pool {
    /// A pool that runs work on `threads` threads (the caller plus `threads - 1` workers);
    /// `0` is treated as `1` (no worker threads, everything runs on the caller).
    pub fn new(threads: usize) -> Result<Self, KernelError> {
        Self::with_spin(threads, DEFAULT_SPIN)
    }

    /// Like [`Pool::new`], with the time an idle worker spins before it parks.
    pub fn with_spin(threads: usize, spin: Duration) -> Result<Self, KernelError> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(CLOSED),
            done: AtomicUsize::new(0),
            job: Mutex::new(None),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            spin,
            panic: Mutex::new(None),
        });
        let mut pool = Self {
            threads,
            shared,
            handles: Vec::with_capacity(threads - 1),
            busy: Mutex::new(()),
        };
        for id in 1..threads {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("redrafter-kernels-{id}"))
                .spawn(move || worker_loop(&shared, id))
                .map_err(|e| KernelError::Pool(format!("cannot spawn worker thread: {e}")))?;
            pool.handles.push(handle);
        }
        Ok(pool)
    }

    /// A pool with one thread per available CPU.
    pub fn with_available_parallelism() -> Result<Self, KernelError> {
        Self::new(available_threads())
    }

    /// Number of threads that take part in a call (workers plus the caller).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(i)` for every `i` in `0..tasks`, spread over the pool; returns when all are
    /// done. Tasks are claimed one at a time from a shared counter, so which thread runs which
    /// task is unspecified.
    pub fn for_each<F: Fn(usize) + Sync>(&self, tasks: usize, task: F) {
        if tasks == 0 {
            return;
        }
        if tasks == 1 || self.threads == 1 {
            (0..tasks).for_each(task);
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(|_| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= tasks {
                break;
            }
            task(i);
        });
    }

    /// Runs `f(thread)` on the caller (thread 0) and on every worker that wakes up while the job
    /// is still open; `f` must share its work through its own state (see [`Pool::for_each`]).
    fn run<F: Fn(usize) + Sync>(&self, f: F) {
        let Ok(_busy) = self.busy.try_lock() else {
            // Another thread is using the pool: do everything here.
            f(0);
            return;
        };
        let sh = &*self.shared;
        *lock(&sh.job) = Some(Job {
            data: &f as *const F as *const (),
            call: trampoline::<F>,
        });
        sh.done.store(0, Ordering::Relaxed);
        {
            let sleepers = lock(&sh.sleepers);
            let epoch = (sh.state.load(Ordering::Relaxed) >> EPOCH_SHIFT).wrapping_add(1);
            // Open the job: new epoch, not closed, nobody joined yet.
            sh.state.store(epoch << EPOCH_SHIFT, Ordering::Release);
            if *sleepers > 0 {
                sh.wake.notify_all();
            }
        }
        // Closes the job and waits for the joined workers even if `f` panics here, so that no
        // worker can still be using `f` once this frame is gone.
        struct Finish<'a>(&'a Shared);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                let joined =
                    (self.0.state.fetch_or(CLOSED, Ordering::AcqRel) & JOINED_MASK) as usize;
                let mut spins = 0u32;
                while self.0.done.load(Ordering::Acquire) < joined {
                    spins = spins.wrapping_add(1);
                    if spins % 1024 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        let finish = Finish(sh);
        f(0);
        drop(finish);
        if let Some(payload) = lock(&sh.panic).take() {
            std::panic::resume_unwind(payload);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _sleepers = lock(&self.shared.sleepers);
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// `std::thread::available_parallelism`, or 1 when unknown.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn worker_loop(sh: &Shared, id: usize) {
    let mut seen = sh.state.load(Ordering::Acquire) >> EPOCH_SHIFT;
    loop {
        // Wait for a new epoch: spin, then nap, then sleep (see `wait_phase`).
        let start = Instant::now();
        let mut spins = 0u32;
        let mut state = sh.state.load(Ordering::Acquire);
        while state >> EPOCH_SHIFT == seen {
            if sh.shutdown.load(Ordering::Acquire) {
                return;
            }
            spins = spins.wrapping_add(1);
            if spins % 64 != 0 {
                std::hint::spin_loop();
            } else {
                let idle = start.elapsed();
                if idle < sh.spin {
                    std::hint::spin_loop();
                } else if idle < sh.spin + NAP_FOR {
                    // The caller never waits for us: a job published meanwhile is picked up
                    // at the next wake-up if it is still open.
                    std::thread::park_timeout(NAP);
                } else {
                    let mut sleepers = lock(&sh.sleepers);
                    *sleepers += 1;
                    while sh.state.load(Ordering::Acquire) >> EPOCH_SHIFT == seen
                        && !sh.shutdown.load(Ordering::Acquire)
                    {
                        sleepers = sh
                            .wake
                            .wait(sleepers)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    *sleepers -= 1;
                }
            }
            state = sh.state.load(Ordering::Acquire);
        }
        seen = state >> EPOCH_SHIFT;
        // Join the job if it is still open (and still the one we saw).
        let joined = loop {
            if state >> EPOCH_SHIFT != seen || state & CLOSED != 0 {
                break false;
            }
            match sh.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break true,
                Err(now) => state = now,
            }
        };
        if !joined {
            continue;
        }
        let job = *lock(&sh.job);
        if let Some(job) = job {
            // SAFETY: we joined the open job of this epoch, so the caller that published `job`
            // is blocked in `Finish::drop` until we bump `done`; the closure is alive and `Sync`.
            let result = catch_unwind(AssertUnwindSafe(|| unsafe { (job.call)(job.data, id) }));
            if let Err(payload) = result {
                *lock(&sh.panic) = Some(payload);
            }
        }
        sh.done.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for threads in 1..=4 {
            let pool = Pool::new(threads).unwrap();
            for tasks in [0, 1, 2, 3, 17, 1000] {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..20 {
                    pool.for_each(tasks, |i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 20));
            }
        }
    }

    #[test]
    fn napping_and_sleeping_workers_wake_up() {
        let pool = Pool::with_spin(3, Duration::from_micros(1)).unwrap();
        for i in 0..50 {
            // Mostly napping workers; every tenth call finds them asleep on the condvar.
            let idle = if i % 10 == 9 {
                NAP_FOR + NAP_FOR / 4
            } else {
                NAP * 2
            };
            std::thread::sleep(idle);
            let sum = AtomicUsize::new(0);
            pool.for_each(100, |i| {
                sum.fetch_add(i, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 4950);
        }
    }

    #[test]
    fn concurrent_callers() {
        let pool = Pool::new(2).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let sum = AtomicUsize::new(0);
                        pool.for_each(64, |i| {
                            sum.fetch_add(i, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), 2016);
                    }
                });
            }
        });
    }

    #[test]
    fn worker_panic_reaches_caller() {
        let pool = Pool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.for_each(1000, |i| {
                if i == 999 {
                    panic!("task failed");
                }
                std::thread::sleep(Duration::from_micros(5));
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let sum = AtomicUsize::new(0);
        pool.for_each(10, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }
}

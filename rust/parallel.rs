//! The thread pool every parallel routine of the core runs in.
//!
//! Results never depend on the number of threads: work is split into chunks of
//! a fixed size and partial results are reduced in chunk order. The pool is
//! built lazily, can be resized with [`set_num_threads`], and is rebuilt in a
//! forked child (torch DataLoader workers fork), whose copy of the parent's
//! pool has no threads behind it.

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

struct PoolState {
    pool: Arc<ThreadPool>,
    threads: usize,
    pid: u32,
}

static POOL: Mutex<Option<PoolState>> = Mutex::new(None);

/// A one-thread pool for calls too small to gain from threads (rebuilt after
/// a fork like [`POOL`]).
static SERIAL: Mutex<Option<PoolState>> = Mutex::new(None);

/// Below this much work (multiply-adds of one pass, as estimated by the
/// caller), [`install_for`] runs on the one-thread pool: waking other
/// threads for every parallel loop would cost more than the loop.
pub const SERIAL_WORK: usize = 1 << 22;

/// The default thread count: `PROTOFAST_NUM_THREADS` if set to a positive
/// integer, else the number of available cores.
pub fn default_num_threads() -> usize {
    std::env::var("PROTOFAST_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn build(threads: usize) -> Result<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("protofast-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::invalid("num_threads", format!("cannot start threads: {e}")))
}

fn lock_of(
    state: &'static Mutex<Option<PoolState>>,
) -> std::sync::MutexGuard<'static, Option<PoolState>> {
    // A panic while the lock was held cannot leave the state half-written
    // (it is replaced whole), so a poisoned lock is safe to reuse.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock() -> std::sync::MutexGuard<'static, Option<PoolState>> {
    lock_of(&POOL)
}

/// The pool held by `state`, built (with `threads`, or the count it had,
/// or the default) when missing or inherited across a fork.
fn pool_of(
    state: &'static Mutex<Option<PoolState>>,
    threads: Option<usize>,
) -> Result<Arc<ThreadPool>> {
    let mut guard = lock_of(state);
    let pid = std::process::id();
    match guard.as_ref() {
        Some(state) if state.pid == pid => Ok(Arc::clone(&state.pool)),
        stale => {
            let threads = threads
                .or(stale.map(|s| s.threads))
                .unwrap_or_else(default_num_threads);
            if let Some(old) = guard.take() {
                // Inherited across fork: its threads do not exist here, so
                // dropping it could wait forever. Leak it instead.
                if old.pid != pid {
                    std::mem::forget(old);
                }
            }
            let pool = build(threads)?;
            *guard = Some(PoolState {
                pool: Arc::clone(&pool),
                threads,
                pid,
            });
            Ok(pool)
        }
    }
}

fn current_pool() -> Result<Arc<ThreadPool>> {
    pool_of(&POOL, None)
}

/// Sets the number of threads used by later calls (must be ≥ 1).
pub fn set_num_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        return Err(Error::invalid("num_threads", "must be at least 1"));
    }
    let pool = build(threads)?;
    let mut guard = lock();
    let pid = std::process::id();
    if let Some(old) = guard.take() {
        if old.pid != pid {
            std::mem::forget(old);
        }
    }
    *guard = Some(PoolState { pool, threads, pid });
    Ok(())
}

/// The number of threads later calls will use.
pub fn num_threads() -> usize {
    lock()
        .as_ref()
        .map_or_else(default_num_threads, |s| s.threads)
}

/// Runs `f` inside the shared pool, or on the one-thread pool when `work`
/// (the caller's estimate of one pass's multiply-adds) is below
/// [`SERIAL_WORK`]. Results do not depend on the choice: every routine of
/// the crate gives the same bits whatever the thread count.
pub fn install_for<R: Send>(work: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    if work < SERIAL_WORK && num_threads() > 1 {
        return Ok(pool_of(&SERIAL, Some(1))?.install(f));
    }
    install(f)
}

/// Runs `f` inside the shared pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R> {
    let pool = current_pool()?;
    Ok(pool.install(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_read_thread_count() {
        set_num_threads(2).unwrap();
        assert_eq!(num_threads(), 2);
        assert_eq!(install(rayon::current_num_threads).unwrap(), 2);
        set_num_threads(1).unwrap();
        assert_eq!(install(rayon::current_num_threads).unwrap(), 1);
        assert!(set_num_threads(0).is_err());
        set_num_threads(3).unwrap();
        assert_eq!(install_for(10, rayon::current_num_threads).unwrap(), 1);
        assert_eq!(
            install_for(SERIAL_WORK, rayon::current_num_threads).unwrap(),
            3
        );
    }
}

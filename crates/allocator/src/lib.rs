//! The process's memory allocator, tuned for a streaming engine (re-exported by
//! `sluice-core` and `sluice` as `tune_allocator`).
//!
//! glibc's `malloc` gives threads their own heap arenas (up to eight per core) and keeps
//! what is freed in each for reuse: a run whose threads take turns with large transient
//! buffers (a column chunk fetched, a page decompressed) leaves freed megabytes in every
//! arena, and the process's resident memory stays at the sum. Measured on the seed ETL
//! at 12M rows on a 2-core machine (`sluice-bench run`, medians of 3, two interleaved
//! passes each): with one arena the plain run peaked at 99 MiB instead of 135, a
//! persisted run at 99–103 instead of 135–139, a cache hit at 141–149 instead of
//! 196–205, the aggregation at 90–94 instead of 110–111, with walls within the runs'
//! noise (2.54–2.66 s against 2.51–2.60 s for the plain run, 0.34–0.38 s against
//! 0.40–0.41 s for the hit). Two arenas kept the hit at 152–163 MiB.

/// Limits glibc's heap arenas to one per four cores (one on a machine of up to seven),
/// unless `MALLOC_ARENA_MAX` is set (glibc has applied it then). Returns the limit set,
/// or `None` where nothing was changed (the variable set, or not Linux with glibc).
///
/// Call it first in `main`, before any thread starts: a thread keeps the arena it was
/// given. Sluice's binaries (`sluice`, `sluice-bench`, the examples) do; a program that
/// embeds Sluice chooses for itself. More threads per arena means more waiting on its
/// lock, which on two cores did not show; the one-per-four-cores rule for larger
/// machines is a judgement, not a measurement.
///
/// ```
/// // First thing in main:
/// let limit = sluice_allocator::tune_allocator();
/// # let _ = limit;
/// ```
pub fn tune_allocator() -> Option<usize> {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = (cores / 4).max(1);
    set_arena_max(arenas).then_some(arenas)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(arenas: usize) -> bool {
    let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
    // SAFETY: `mallopt` only sets a parameter of the allocator; M_ARENA_MAX takes any
    // positive count and applies to arenas created from now on.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: usize) -> bool {
    false
}

//! Process-wide allocator settings, applied first thing by every role's `main`.
//!
//! The one place in the workspace with `unsafe` code (the workspace denies it everywhere
//! else): a call of glibc's `mallopt`, which has no safe wrapper.

/// Allocations at or above this size are mapped on their own and returned to the system when
/// freed: upload part buffers, zstd windows and tables, read-ahead batches.
pub const MMAP_THRESHOLD: usize = 4 << 20;

/// Keeps the heap from holding on to large buffers after they are freed.
///
/// glibc serves allocations of 128 KiB and more with `mmap` at first, but every time such a
/// block is freed it raises that threshold to the block's size (up to 32 MiB), after which the
/// same buffers come from the per-thread arenas — and an arena keeps its high-water mark. With a
/// role's runtime threads each touching multi-MiB buffers, the arenas, not the memory budget,
/// set the peak. Measured with `cim-bench --scenario upload` (16 and 256 MiB objects, one run
/// each): the upload role peaked at 156 / 200 MiB RSS with glibc's default, at 116 / 117 MiB
/// with a fixed threshold of [`MMAP_THRESHOLD`] (1 MiB and 256 KiB: the same, for more system
/// calls); `MALLOC_ARENA_MAX=2` gave 189 / 179, mimalloc 201 / 200.
///
/// A fixed threshold also switches off glibc's dynamic adjustment. An operator's own
/// `MALLOC_MMAP_THRESHOLD_` (glibc's environment tunable) wins. Other C libraries and
/// platforms: nothing to do.
pub fn bound_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes allocator parameters; glibc allows it at any time from
        // any thread (it takes the arena locks), and M_MMAP_THRESHOLD accepts any value up to
        // 32 MiB on 64-bit, which MMAP_THRESHOLD is below.
        #[allow(unsafe_code)]
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
        if set != 1 {
            eprintln!("warning: glibc refused an mmap threshold of {MMAP_THRESHOLD} bytes; memory may peak higher");
        }
    }
}

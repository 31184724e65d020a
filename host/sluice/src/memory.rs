//! Giving the memory a reload freed back to the system.
//!
//! A reload parses every YAML file into a tree, translates it and builds a snapshot, on
//! a blocking thread, then frees all of it but the snapshot: at 10,000 routes that is
//! tens of MB freed at once. mimalloc keeps freed pages for a second (its purge delay)
//! in case they are wanted again, but it returns them only when the thread that owns
//! them calls into the allocator again: a blocking thread that goes idle after the
//! reload never does, and the gateway kept 20 MB it no longer used (RssAnon 58-64 MB
//! after starting on the 10,000 routes of `examples/bench/compare.sh`'s routes
//! scenario, 37-40 MB once collected; docs/operations.md, "Memory"). [`release`] collects the calling thread's free pages and returns every
//! arena page awaiting its delay; the provider calls it at the end of a reload, on
//! the blocking thread that did the reload's work.

/// Frees this thread's empty pages and returns the freed pages of every thread's
/// arenas to the system now, instead of after mimalloc's purge delay.
pub fn release() {
    // SAFETY: `mi_collect` takes no pointers and has no preconditions: mimalloc
    // documents it as callable from any thread at any time, and it only moves this
    // thread's own free lists and the arenas' purge queues (under mimalloc's locks).
    // Nothing Rust holds is touched: live blocks stay where they are.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

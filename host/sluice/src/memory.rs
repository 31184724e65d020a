//! Giving memory back to the system: what a reload freed, and the program's code that
//! start-up and reloads ran once.
//!
//! A reload parses every YAML file into a tree, translates it and builds a snapshot, on
//! a blocking thread, then frees all of it but the snapshot: at 10,000 routes that is
//! tens of MB freed at once. mimalloc keeps freed pages for a second (its purge delay)
//! in case they are wanted again, but it returns them only when the thread that owns
//! them calls into the allocator again: a blocking thread that goes idle after the
//! reload never does, and the gateway kept 20 MB it no longer used (RssAnon 58-64 MB
//! after starting on the 10,000 routes of `examples/bench/compare.sh`'s routes
//! scenario, 37-40 MB once collected; docs/operations.md, "Memory"). [`release`]
//! collects the calling thread's free pages and returns every arena page awaiting its
//! delay, then drops the mappings of code not in use ([`release_code`]); the provider
//! calls it at the end of a reload, on the blocking thread that did the reload's work.

/// Frees this thread's empty pages and returns the freed pages of every thread's
/// arenas to the system now, instead of after mimalloc's purge delay, after letting go
/// of the program's code that is not in use ([`release_code`]).
pub fn release() {
    release_code();
    collect();
}

fn collect() {
    // SAFETY: `mi_collect` takes no pointers and has no preconditions: mimalloc
    // documents it as callable from any thread at any time, and it only moves this
    // thread's own free lists and the arenas' purge queues (under mimalloc's locks).
    // Nothing Rust holds is touched: live blocks stay where they are.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Drops this process's mappings of its own program file's clean, read-only pages
/// (code and constants) with `MADV_DONTNEED`, so that what stays resident is the code
/// in use, not all that start-up or a reload ran once.
///
/// A page of code is mapped whole windows at a time (the kernel's fault-around), so the
/// 134 instruction-fetch faults of a start with 10 routes mapped 17 MB of a 32 MB text
/// segment, most of it argument parsing, configuration loading and translation that do
/// not run again until a reload. Dropped, those pages stay in the page cache (shared,
/// and reclaimable as any file cache is); a page that is used again faults back in from
/// there, a minor fault with no I/O. The kernel does the same to any process's clean
/// file pages under memory pressure: this only does it now.
///
/// Linux only (on other systems, or if `/proc` cannot be read, it does nothing).
pub fn release_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    // Read as it comes, not whole: with the Wasm runtime's instance pool reserved, the
    // process has thousands of mappings (each pooled stack and its guard page) and
    // `smaps` runs to megabytes; the program's own mappings come first, and the reading
    // stops after them.
    let Ok(smaps) = std::fs::File::open("/proc/self/smaps") else {
        return;
    };
    let smaps = std::io::BufReader::new(smaps);
    for m in clean_read_only_mappings(smaps, &exe.to_string_lossy()) {
        // SAFETY: `m` is a private mapping of the program file that is not writable
        // and has no anonymous page (a page copied on write, as relocation makes) and
        // none swapped out: every page in it is the page cache's page of the file. `MADV_DONTNEED` on such a mapping only unmaps its
        // pages, and the next access faults the same bytes back in from the file: this
        // is what the kernel itself does to these pages under memory pressure, at any
        // time, so code and constants are already read through such faults (the file
        // does not change under a running program: the kernel refuses to open it for
        // writing, and upgrades replace the file rather than rewrite it). Nothing can
        // dirty the mapping between the read of `smaps` and this call: it has no write
        // permission, and nothing in Sluice changes the protection of its program's
        // mappings (the dynamic loader's one change, making relocated data read-only,
        // happened before `main`, and that mapping is anonymous, so it is skipped). No Rust
        // reference is invalidated: what a reference points at reads the same after the
        // fault.
        let _ = unsafe {
            rustix::mm::madvise(
                m.start as *mut std::ffi::c_void,
                m.len,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
    }
}

#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    len: usize,
}

/// The mappings in `smaps` (the text of `/proc/self/smaps`) of the file `path` that
/// are private, not writable, and have no anonymous (copied-on-write) or swapped page.
/// Dirty pages alone do not disqualify one: a program file just written (a test
/// binary the linker just made) has dirty page-cache pages, which are still the
/// file's bytes.
fn clean_read_only_mappings(mut smaps: impl std::io::BufRead, path: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    // The mapping being read, if it is a candidate, and whether a page of it is
    // anonymous or swapped.
    let mut current: Option<(Mapping, bool)> = None;
    let mut finish = |current: &mut Option<(Mapping, bool)>| {
        if let Some((m, false)) = current.take() {
            out.push(m);
        }
    };
    let mut seen = false;
    let mut line = String::new();
    loop {
        line.clear();
        match smaps.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            // A mapping's first line: `start-end perms offset dev inode [path]`.
            finish(&mut current);
            let perms = fields.next().unwrap_or("");
            let file = fields.nth(3).unwrap_or("");
            if file != path {
                if seen {
                    // The program's mappings are next to each other: past them.
                    break;
                }
                continue;
            }
            seen = true;
            let private_read_only = perms.len() == 4
                && perms.starts_with('r')
                && !perms.contains('w')
                && perms.ends_with('p');
            if private_read_only && end > start {
                current = Some((
                    Mapping {
                        start,
                        len: end - start,
                    },
                    false,
                ));
            }
            continue;
        }
        if let Some((_, dirty)) = current.as_mut()
            && matches!(first, "Anonymous:" | "AnonHugePages:" | "Swap:")
            && fields.next() != Some("0")
        {
            *dirty = true;
        }
    }
    finish(&mut current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
20000000000-20040000000 rw-p 00000000 00:00 0
Anonymous:          2012 kB
5634c89cf000-5634c923f000 r--p 00000000 fe:00 9977908                    /usr/bin/sluice
Size:               8640 kB
Rss:                1200 kB
Private_Clean:      1200 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Swap:                  0 kB
5634c923f000-5634cb17f000 r-xp 0086f000 fe:00 9977908                    /usr/bin/sluice
Size:              32000 kB
Private_Dirty:       120 kB
Anonymous:             0 kB
5634cb17f000-5634cb274000 r--p 027ae000 fe:00 9977908                    /usr/bin/sluice
Private_Dirty:       980 kB
Anonymous:           980 kB
5634cb180000-5634cb190000 r--p 027ae000 fe:00 9977908                    /usr/bin/sluice
Anonymous:             0 kB
Swap:                  4 kB
5634cb274000-5634cb27c000 rw-p 028a2000 fe:00 9977908                    /usr/bin/sluice
Private_Dirty:        32 kB
7f4114400000-7f4114500000 r-xp 00000000 fe:00 1234                       /usr/lib/libc.so.6
Private_Dirty:         0 kB
7f4114600000-7f4114700000 rw-p 00000000 00:00 0
Anonymous:          1024 kB
7f4114800000-7f4114900000 r--s 00000000 fe:00 9977908                    /usr/bin/sluice
Private_Dirty:         0 kB
";

    /// Only the program's own private, read-only mappings with no copied page: not its
    /// relocated data (anonymous), not a swapped one, not its writable data, not a
    /// library's code, not a shared mapping; dirty page-cache pages (a file just
    /// written) do not count.
    #[test]
    fn only_clean_read_only_private_mappings_of_the_program_are_dropped() {
        assert_eq!(
            clean_read_only_mappings(SMAPS.as_bytes(), "/usr/bin/sluice"),
            [
                Mapping {
                    start: 0x5634c89cf000,
                    len: 0x5634c923f000 - 0x5634c89cf000
                },
                Mapping {
                    start: 0x5634c923f000,
                    len: 0x5634cb17f000 - 0x5634c923f000
                },
            ]
        );
        assert_eq!(clean_read_only_mappings(SMAPS.as_bytes(), "/other"), []);
    }

    /// Dropping this test binary's code and constants while it runs: the code faults
    /// back in and the constants read the same.
    #[test]
    fn the_program_runs_on_after_its_code_is_dropped() {
        static TABLE: [u64; 4] = [1, 2, 3, 5];
        let before: u64 = std::hint::black_box(&TABLE).iter().sum();
        let resident_before = program_rss_kb();
        release_code();
        let resident_after = program_rss_kb();
        release_code();
        assert_eq!(std::hint::black_box(&TABLE).iter().sum::<u64>(), before);
        assert_eq!(format!("{:?}", TABLE), "[1, 2, 3, 5]");
        assert!(
            resident_after < resident_before,
            "the program's resident pages: {resident_before} kB before, {resident_after} kB after"
        );
    }

    /// The resident kB of this program file's mappings.
    fn program_rss_kb() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").expect("/proc/self/exe");
        let exe = exe.to_string_lossy();
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut ours = false;
        let mut total = 0;
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields
                .first()
                .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
            {
                ours = fields.get(5) == Some(&&*exe);
            } else if ours && fields.first() == Some(&"Rss:") {
                total += fields
                    .get(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }
}

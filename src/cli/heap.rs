//! How this process's heap grows when a command is about to build a whole ruleset in memory
//! (a restore, a change that recompiles).
//!
//! Such a command makes tens of megabytes of small objects (rules, compiled rules, vectors).
//! glibc grows its heap a little at a time, and every new 4 KiB page costs a page fault on
//! first touch, ~2 µs on the VM measured: a restore of 10 000 rules took 3 600 of them, 7 ms.
//! Told in advance, the heap grows once by about what the command will use, over which the
//! kernel is asked for 2 MiB transparent huge pages (its default THP mode, `madvise`, gives
//! them only where asked): ~900 faults. Small commands keep glibc's defaults (a huge page is
//! 2 MiB to clear for a command that touches a few pages).

/// Below this, the defaults.
const LEAST: usize = 8 << 20;
/// glibc takes no larger padding (an `int`), and no process of ours needs more at once.
const MOST: usize = 1 << 30;
const HUGE_PAGE: usize = 2 << 20;

/// Prepares the heap for a command about to allocate about `bytes` in all.
pub fn expect(bytes: usize) {
    if bytes < LEAST {
        return;
    }
    #[cfg(target_env = "gnu")]
    grow(bytes.min(MOST));
}

#[cfg(target_env = "gnu")]
fn grow(pad: usize) {
    // SAFETY: mallopt only sets allocator parameters; sbrk(0) reads the program break; the
    // block is freed at once; madvise is given page-aligned bounds inside the heap just grown.
    unsafe {
        // One heap for every thread (the compiling thread's allocations land in it too, rather
        // than in an arena of its own that grows page by page), grown by `pad` at a time and
        // never given back (the process ends soon), large blocks in it rather than mapped
        // apart (a map of their own is faulted in page by page, and unmapped on free).
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TOP_PAD, pad as i32);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        let before = libc::sbrk(0) as usize;
        // larger than what the heap has free at the start, so that it grows now; the block
        // is where the next allocations go once it is freed (the start of the heap's top)
        const BLOCK: usize = 1 << 20;
        let block = std::hint::black_box(libc::malloc(BLOCK));
        let next = block as usize;
        libc::free(block);
        let after = libc::sbrk(0) as usize;
        if after == before {
            return; // glibc mapped its memory elsewhere: nothing to advise
        }
        // The huge pages start past the page the block's end touched (the heap's top then had
        // its header there): a 2 MiB range already holding a small page gets no huge one.
        let start = (next + BLOCK + 4096).next_multiple_of(HUGE_PAGE);
        let end = after / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // (refused where THP is off: then the heap just grew early)
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            // The heap up to there, small pages, is taken by a block never touched nor freed
            // (only its header is ever written): the allocations that follow start where the
            // huge pages do.
            std::hint::black_box(libc::malloc(start - next));
        }
    }
}

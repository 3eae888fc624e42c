//! `cli::heap::expect`: once told a command will allocate tens of megabytes, the process's
//! heap takes them in 2 MiB transparent huge pages, the compiling thread's allocations too,
//! so touching 16 MiB of small objects costs a few page faults, not one per 4 KiB page.
//! Its own process (no harness): the heap's settings are the process's.

fn minor_faults() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    ru.ru_minflt
}

/// Faults taken making `bytes` of 1 KiB blocks, touching them, and freeing them.
fn faults_making(bytes: usize) -> i64 {
    let before = minor_faults();
    let blocks: Vec<Vec<u8>> = (0..bytes / 1024).map(|i| vec![i as u8; 1000]).collect();
    std::hint::black_box(blocks);
    minor_faults() - before
}

/// The check itself: Err says what went wrong.
fn huge_pages_after_expect() -> Result<String, String> {
    const MIB: usize = 1 << 20;
    // glibc's defaults: ~4 000 faults for 16 MiB (4 KiB pages, given back once freed)
    let defaults = faults_making(16 * MIB);
    bpf_iptables::cli::heap::expect(64 * MIB);
    let main_thread = faults_making(16 * MIB);
    // a thread started afterwards, as the compiling one is, allocates in the same heap
    let other_thread = std::thread::spawn(|| faults_making(16 * MIB)).join().map_err(|_| "the thread panicked")?;
    let seen = format!("16 MiB of 1 KiB blocks: {defaults} faults by default, then {main_thread} on the main thread, {other_thread} on another");
    // 4 096 pages of 4 KiB, or 8 huge ones (and a few of the allocator's own)
    if defaults <= 2048 {
        return Err(format!("{seen}: the defaults took too few to compare with"));
    }
    if main_thread >= defaults / 16 || other_thread >= defaults / 16 {
        return Err(format!("{seen}: not in huge pages"));
    }
    Ok(seen)
}

// (reported as libtest reports, for scripts/test.sh's summary)
fn main() {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !thp.contains("[madvise]") && !thp.contains("[always]") {
        eprintln!("skipped: heap needs transparent huge pages ({})", thp.trim());
        println!("test result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out");
        return;
    }
    match huge_pages_after_expect() {
        Ok(seen) => {
            println!("{seen}\ntest huge_pages_after_expect ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
        }
        Err(why) => {
            println!("{why}\ntest huge_pages_after_expect ... FAILED\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
            std::process::exit(101);
        }
    }
}

//! The store against the real kernel (root): pins per network namespace, atomic model commits,
//! stable rule ids and counters, the layout-version check, and the xtables lock.
//! Each test enters a fresh network namespace on its own thread, so nothing touches the host's.

use std::time::Duration;

use bpf_iptables::error::Error;
use bpf_iptables::model::{Counters, Rule, Ruleset, Target};
use bpf_iptables::store::{LockWait, Store};

fn is_root() -> bool {
    // SAFETY: trivial libc call.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` on a thread inside a new, empty network namespace (dies with the thread), then
/// removes that namespace's pins.
fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    Some(
        std::thread::spawn(move || {
            // SAFETY: only this thread's network namespace changes.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
            struct Cleanup;
            impl Drop for Cleanup {
                fn drop(&mut self) {
                    if let Ok(s) = Store::open(LockWait::Block) {
                        let _ = std::fs::remove_dir_all(s.pin_dir());
                    }
                }
            }
            let _c = Cleanup;
            f()
        })
        .join()
        .expect("test thread"),
    )
}

fn rule(target: Target) -> Rule {
    Rule { id: Rule::UNASSIGNED, ip: Default::default(), matches: vec![], target, counters: Counters::default() }
}

fn filter_input(rs: &mut Ruleset) -> &mut Vec<Rule> {
    &mut rs.tables[0].chain_mut("INPUT").expect("INPUT").rules
}

#[test]
fn commit_load_round_trip_with_stable_ids_and_counters() {
    in_fresh_netns(|| {
        let mut st = Store::open(LockWait::Block).expect("open");
        let mut rs = st.load().expect("load");
        assert_eq!(rs, Ruleset::default(), "a new namespace starts empty");
        filter_input(&mut rs).push(rule(Target::Accept));
        let mut r2 = rule(Target::Drop);
        r2.counters = Counters { packets: 7, bytes: 700 };
        filter_input(&mut rs).push(r2);
        st.commit(&mut rs, None, None).expect("commit");
        let ids: Vec<u32> = filter_input(&mut rs).iter().map(|r| r.id).collect();
        assert!(ids.iter().all(|&i| i != Rule::UNASSIGNED));
        assert_ne!(ids[0], ids[1]);
        drop(st);

        // A new invocation sees the same state, and -c counters were stored.
        let mut st = Store::open(LockWait::Block).expect("reopen");
        let mut back = st.load().expect("load");
        st.load_counters(&mut back).expect("counters");
        assert_eq!(filter_input(&mut back).iter().map(|r| r.id).collect::<Vec<_>>(), ids);
        assert_eq!(filter_input(&mut back)[1].counters, Counters { packets: 7, bytes: 700 });

        // Inserting before them keeps their ids and counters.
        filter_input(&mut back).insert(0, rule(Target::Return));
        st.commit(&mut back, None, None).expect("commit insert");
        let mut again = st.load().expect("load");
        st.load_counters(&mut again).expect("counters");
        let rules = filter_input(&mut again);
        assert_eq!(rules[1].id, ids[0]);
        assert_eq!(rules[2].id, ids[1]);
        assert_eq!(rules[2].counters.packets, 7);
        assert_eq!(rules[0].counters, Counters::default());

        // Zeroing.
        st.set_rule_counters(&[(ids[1], Counters::default())]).expect("zero");
        let mut z = st.load().expect("load");
        st.load_counters(&mut z).expect("counters");
        assert_eq!(filter_input(&mut z)[2].counters, Counters::default());
    });
}

#[test]
fn namespaces_are_separate() {
    in_fresh_netns(|| {
        let mut st = Store::open(LockWait::Block).expect("open");
        let mut rs = st.load().expect("load");
        filter_input(&mut rs).push(rule(Target::Drop));
        st.commit(&mut rs, None, None).expect("commit");
        let dir_a = st.pin_dir().clone();
        drop(st);
        let other = in_fresh_netns(move || {
            let mut st = Store::open(LockWait::Block).expect("open");
            (st.pin_dir().clone(), st.load().expect("load"))
        })
        .expect("root");
        assert_ne!(other.0, dir_a);
        assert_eq!(other.1, Ruleset::default());
    });
}

#[test]
fn lock_timeout_is_exit_4() {
    in_fresh_netns(|| {
        let dir = std::env::temp_dir().join(format!("bpfipt-lock-{}", std::process::id()));
        let lockfile = dir.with_extension("lock");
        // A child holds the lock with flock(1) for a while.
        let mut holder = std::process::Command::new("flock")
            .args([lockfile.to_str().expect("utf8"), "sleep", "3"])
            .spawn()
            .expect("flock");
        std::thread::sleep(Duration::from_millis(300));
        std::env::set_var("XTABLES_LOCKFILE", &lockfile);
        let res = Store::open(LockWait::Timeout(Duration::from_secs(1)));
        std::env::remove_var("XTABLES_LOCKFILE");
        let _ = holder.kill();
        let _ = holder.wait();
        let _ = std::fs::remove_file(&lockfile);
        match res {
            Err(e @ Error::Resource(_)) => {
                assert_eq!(e.exit_code(), 4);
                assert!(e.render("iptables").contains("Stopped waiting after 1s."));
            }
            Err(e) => panic!("expected a lock timeout, got {e}"),
            Ok(_) => panic!("expected a lock timeout, got the lock"),
        }
    });
}

/// The `bpfipt_blob<generation>` pins of `dir`.
fn blob_pins(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("pin dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bpfipt_blob"))
        .collect();
    v.sort();
    v
}

#[test]
fn the_ruleset_lives_in_one_pinned_map_per_commit_and_a_damaged_one_is_refused() {
    use libbpf_rs::{MapCore, MapHandle, MapType};
    use std::os::fd::{AsFd, AsRawFd};
    in_fresh_netns(|| {
        let mut st = Store::open(LockWait::Block).expect("open");
        let dir = st.pin_dir().clone();
        let mut rs = st.load().expect("load");
        filter_input(&mut rs).push(rule(Target::Drop));
        st.commit(&mut rs, None, None).expect("commit");
        let first = blob_pins(&dir);
        assert_eq!(first.len(), 1, "one generation at rest: {first:?}");
        filter_input(&mut rs).push(rule(Target::Accept));
        st.commit(&mut rs, None, None).expect("commit");
        let second = blob_pins(&dir);
        assert_eq!(second.len(), 1, "the old generation is unpinned: {second:?}");
        assert_ne!(first, second, "a commit writes the other generation");

        // A commit killed after pinning its map left it behind: the next commit replaces it.
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let mut stale = MapHandle::create(MapType::Array, Some("stale"), 4, 8, 1, &opts).expect("a map");
        stale.pin(dir.join(&first[0])).expect("a stale pin");
        filter_input(&mut rs).push(rule(Target::Return));
        st.commit(&mut rs, None, None).expect("commit over a stale pin");
        assert_eq!(blob_pins(&dir), first);
        assert_eq!(filter_input(&mut st.load().expect("load")).len(), 3);

        // One byte of the stored ruleset changed: refused, not misread.
        let live = MapHandle::from_pinned_path(dir.join(&first[0])).expect("the live blob");
        let len = live.value_size() as usize;
        // SAFETY: a shared mapping of the live blob map's first value, unmapped below.
        let mem = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, live.as_fd().as_raw_fd(), 0)
        };
        assert_ne!(mem, libc::MAP_FAILED, "mapping the blob");
        let byte = mem.cast::<u8>();
        // SAFETY: within the mapping.
        unsafe { *byte ^= 0x40 };
        let err = st.load().expect_err("a damaged ruleset");
        assert!(err.to_string().contains("corrupt (hash mismatch)"), "{err}");
        // SAFETY: as above; then unmapping what was mapped.
        unsafe {
            *byte ^= 0x40;
            libc::munmap(mem, len);
        }
        assert_eq!(filter_input(&mut st.load().expect("load")).len(), 3);

        // Another map pinned in its place: refused too.
        let path = dir.join(&first[0]);
        std::fs::remove_file(&path).expect("unpin");
        let mut other = MapHandle::create(MapType::Array, Some("other"), 4, 8, 1, &opts).expect("a map");
        other.pin(&path).expect("pin another map");
        let err = st.load().expect_err("another map");
        assert!(err.to_string().contains("corrupt (not the size recorded)"), "{err}");
        std::fs::remove_file(&path).expect("unpin");
        let mut live = live;
        live.pin(&path).expect("pin the blob back");
        assert_eq!(filter_input(&mut st.load().expect("load")).len(), 3);
    });
}

/// `Store::before_rebuild`: a change meant to patch the datapath's image in place that
/// rebuilds it instead (decoding and compiling every stored rule) calls the hook first, with
/// the stored rules' count, so that the command readies its heap; one patched in place does
/// not.
#[test]
fn a_change_that_rebuilds_instead_of_patching_calls_the_rebuild_hook() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use bpf_iptables::model::{Chain, TableKind};
    static SEEN: AtomicUsize = AtomicUsize::new(usize::MAX);
    fn record(rules: usize) {
        SEEN.store(rules, Ordering::SeqCst);
    }
    in_fresh_netns(|| {
        let mut st = Store::open(LockWait::Block).expect("open");
        let mut rs = st.load().expect("load");
        let filter = rs.table_mut(TableKind::Filter);
        filter.chains.push(Chain::user("U"));
        filter_input(&mut rs).extend((0..3).map(|_| rule(Target::None)));
        filter_input(&mut rs).push(rule(Target::Jump("U".into())));
        st.commit(&mut rs, None, None).expect("commit");
        drop(st);

        let delete = |at: usize| {
            let mut st = Store::open(LockWait::Block).expect("open");
            st.before_rebuild(record);
            let mut outline = st.load_outline().expect("outline");
            let deleted = outline.remove(TableKind::Filter, "INPUT", &[at]).expect("remove").expect("a rule there");
            let left = outline.rule_count();
            st.commit_delete(outline, &deleted).expect("delete");
            left
        };
        // a rule that does not jump: turned into a no-op in the installed image
        delete(0);
        assert_eq!(SEEN.load(Ordering::SeqCst), usize::MAX, "a delete patched in place readied the heap");
        // the jump: its chain is inlined after it, so the image is rebuilt
        let left = delete(2);
        assert_eq!(SEEN.load(Ordering::SeqCst), left, "the rebuild did not ready the heap first");
        assert_eq!(filter_input(&mut Store::open(LockWait::Block).expect("open").load().expect("load")).len(), 2);
    });
}

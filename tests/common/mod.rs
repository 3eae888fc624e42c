//! Shared helpers for the integration tests that drive a whole iptables implementation from the
//! outside: which implementation (ours or a real one, as the oracle), running its three
//! personalities (`iptables`, `iptables-save`, `iptables-restore`) by name through symlinks in a
//! private directory, fresh network namespaces that are cleaned up even when a test fails, and
//! the `target/conformance/` report directory.
//!
//! Each integration test binary uses a subset of these helpers, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bpf_iptables::store::{LockWait, Store};

pub mod topo;

/// The personalities every implementation is called by. Our binary, like xtables-legacy-multi,
/// picks its behaviour from the name it was called by.
pub const PERSONALITIES: [&str; 3] = ["iptables", "iptables-save", "iptables-restore"];

/// A single command longer than this is a hang (a lock never released, a read on a closed
/// stdin); it is killed and reported instead of stalling the whole suite.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when the test may run; otherwise prints why it is skipped.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("skipped: {test} needs root (network namespaces)");
    false
}

/// `target/` of this build (the parent of Cargo's per-build temp dir, which follows
/// `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// Where reports for the other engineers go: `target/conformance/`.
pub fn report_dir() -> PathBuf {
    let dir = target_dir().join("conformance");
    if let Err(e) = fs::create_dir_all(&dir) {
        panic!("creating {}: {e}", dir.display());
    }
    dir
}

/// A fresh, unique scratch directory under Cargo's temp dir, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(purpose: &str) -> ScratchDir {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bpfipt-{purpose}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        if let Err(e) = fs::create_dir_all(&dir) {
            panic!("creating {}: {e}", dir.display());
        }
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One iptables implementation, reachable as `iptables`, `iptables-save` and `iptables-restore`
/// through symlinks in a private directory that is put first in `PATH` for shell commands.
pub struct Tools {
    label: String,
    ours: bool,
    dir: ScratchDir,
    /// Run ours with `BPF_IPTABLES_DATAPATH=off` (store and list, no enforcement).
    front_end_only: bool,
}

impl Tools {
    /// Our binary (`target/debug/bpf-iptables`).
    pub fn ours() -> Tools {
        Tools::multi_call("bpf-iptables", true, Path::new(env!("CARGO_BIN_EXE_bpf-iptables")))
    }

    /// Real iptables-legacy 1.8.9 (kernel netfilter): the oracle.
    pub fn legacy() -> Tools {
        Tools::multi_call("iptables-legacy", false, &which("xtables-legacy-multi"))
    }

    /// The implementation named by environment variable `var`: unset or `bpf-iptables` means
    /// ours, `iptables-legacy` / `iptables-nft` the real ones, anything else is taken as the
    /// path of a multi-call binary that dispatches on its name as xtables-*-multi do.
    pub fn from_env(var: &str) -> Tools {
        match std::env::var(var).ok().as_deref().map(str::trim) {
            None | Some("") | Some("bpf-iptables") => Tools::ours(),
            Some("iptables-legacy") | Some("legacy") => Tools::legacy(),
            Some("iptables-nft") | Some("nft") => Tools::multi_call("iptables-nft", false, &which("xtables-nft-multi")),
            Some(path) => Tools::multi_call(path, false, Path::new(path)),
        }
    }

    fn multi_call(label: &str, ours: bool, binary: &Path) -> Tools {
        assert!(binary.exists(), "{} ({label}) does not exist", binary.display());
        let dir = ScratchDir::new("tools");
        for name in PERSONALITIES {
            if let Err(e) = std::os::unix::fs::symlink(binary, dir.path().join(name)) {
                panic!("linking {name} -> {}: {e}", binary.display());
            }
        }
        Tools { label: label.to_string(), ours, dir, front_end_only: false }
    }

    /// For tests of the command-line front end only (text, exit codes, stored state): our binary
    /// stores rules without handing them to the datapath, so rules it does not enforce yet can
    /// still be listed back. Packet verdicts are tested elsewhere, always with the datapath on.
    pub fn front_end_only(mut self) -> Tools {
        self.front_end_only = true;
        self
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Path of personality `name` (one of `PERSONALITIES`), for running it directly, e.g.
    /// through `ip netns exec`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Whether this is bpf-iptables (whose per-namespace pins the tests must remove).
    pub fn is_ours(&self) -> bool {
        self.ours
    }

    fn search_path(&self) -> std::ffi::OsString {
        let mut p = self.dir.path().as_os_str().to_owned();
        p.push(":");
        p.push(std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()));
        p
    }
}

/// Full path of a system program, from `PATH` plus the sbin directories a non-login root shell
/// may lack.
pub fn which(program: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists());
    found.unwrap_or_else(|| PathBuf::from(program))
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Exited(i32),
    Signalled(i32),
    TimedOut,
}

/// A finished command.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        match self.status {
            Status::Exited(c) => Some(c),
            _ => None,
        }
    }

    pub fn success(&self) -> bool {
        self.status == Status::Exited(0)
    }

    /// A crash rather than an answer: a signal, a timeout, or a Rust panic (exit 101).
    pub fn crashed(&self) -> bool {
        !matches!(self.status, Status::Exited(c) if c != 101) || self.stderr.contains("panicked at")
    }

    /// Short human form of the status, for reports.
    pub fn describe(&self) -> String {
        match self.status {
            Status::Exited(c) => format!("exit {c}"),
            Status::Signalled(s) => format!("killed by signal {s}"),
            Status::TimedOut => format!("timed out after {}s", COMMAND_TIMEOUT.as_secs()),
        }
    }
}

/// Commands run inside one fresh network namespace, with that namespace's own xtables lock file
/// so that namespaces tested in parallel do not wait for each other.
pub struct Session<'a> {
    tools: &'a Tools,
    lockfile: PathBuf,
    timeouts: AtomicUsize,
}

impl Session<'_> {
    pub fn tools(&self) -> &Tools {
        self.tools
    }

    /// How many commands of this session hung and were killed: callers give up on a namespace
    /// whose implementation keeps hanging rather than wait out every remaining command.
    pub fn timeouts(&self) -> usize {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Runs personality `name` (`iptables`, ...) with `args`, feeding `stdin` if given.
    pub fn run<S: AsRef<OsStr>>(&self, name: &str, args: &[S], stdin: Option<&str>) -> Outcome {
        let mut cmd = Command::new(self.tools.dir.path().join(name));
        cmd.args(args);
        self.spawn(cmd, stdin)
    }

    /// Runs `script` through `/bin/sh -c` (shell quoting applies, as in iptables' own runner),
    /// with our personalities first in `PATH`.
    pub fn sh(&self, script: &str, stdin: Option<&str>) -> Outcome {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        self.spawn(cmd, stdin)
    }

    /// `iptables-save` output, or a description of the failure.
    pub fn save(&self, args: &[&str]) -> Result<String, String> {
        let out = self.run("iptables-save", args, None);
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(format!("iptables-save {}: {}: {}", args.join(" "), out.describe(), out.stderr.trim_end()))
        }
    }

    fn spawn(&self, mut cmd: Command, stdin: Option<&str>) -> Outcome {
        if self.tools.ours && self.tools.front_end_only {
            cmd.env("BPF_IPTABLES_DATAPATH", "off");
        }
        cmd.env("PATH", self.tools.search_path())
            .env("XTABLES_LOCKFILE", &self.lockfile)
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so a timeout kills the shell and whatever it started.
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Outcome { status: Status::Exited(127), stdout: String::new(), stderr: format!("spawn {cmd:?}: {e}") }
            }
        };
        let out = wait_with_timeout(&mut child, stdin);
        if out.status == Status::TimedOut {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        out
    }
}

fn wait_with_timeout(child: &mut Child, stdin: Option<&str>) -> Outcome {
    // Feed stdin and drain both pipes on their own threads: a child blocked writing a full pipe
    // would otherwise never exit.
    let writer = child.stdin.take().zip(stdin.map(str::to_owned)).map(|(mut pipe, text)| {
        std::thread::spawn(move || {
            // A child that exits without reading its input is its own business.
            let _ = pipe.write_all(text.as_bytes());
        })
    });
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));

    let start = Instant::now();
    let mut nap = Duration::from_micros(200);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                break match (st.code(), st.signal()) {
                    (Some(c), _) => Status::Exited(c),
                    (None, Some(s)) => Status::Signalled(s),
                    (None, None) => Status::Exited(-1),
                }
            }
            Ok(None) if start.elapsed() > COMMAND_TIMEOUT => {
                // SAFETY: kill on the child's own process group (created by process_group(0)).
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break Status::TimedOut;
            }
            Ok(None) => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            Err(e) => panic!("waiting for child: {e}"),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Outcome {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `f` on a new thread inside a new, empty network namespace (it dies with the thread, so
/// the host's firewall and interfaces are never touched). Our pins for that namespace are removed
/// afterwards, also when `f` panics.
pub fn in_fresh_netns<T: Send>(tools: &Tools, f: impl FnOnce(&Session) -> T + Send) -> T {
    let scratch = ScratchDir::new("netns");
    let session = Session { tools, lockfile: scratch.path().join("xtables.lock"), timeouts: AtomicUsize::new(0) };
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare only changes this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
            }
            let _pins = PinCleanup { ours: tools.is_ours() };
            f(&session)
        })
        .join()
    });
    match result {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Removes our pinned state of the current network namespace on drop.
struct PinCleanup {
    ours: bool,
}

impl Drop for PinCleanup {
    fn drop(&mut self) {
        if !self.ours {
            return;
        }
        // This takes the default xtables lock briefly (setting XTABLES_LOCKFILE here would race
        // with the other test threads' environment reads).
        match Store::open(LockWait::Block) {
            Ok(store) => {
                let dir = store.pin_dir().clone();
                drop(store);
                let _ = fs::remove_dir_all(dir);
            }
            Err(e) => eprintln!("warning: could not open the store to remove this namespace's pins: {e}"),
        }
    }
}

/// `iptables-save` text without the `#` comment lines (which carry dates and versions).
pub fn strip_save_comments(save: &str) -> String {
    save.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
}

/// `f` over `items` on a few worker threads, results in input order. The tests' work is mostly
/// waiting for short-lived processes, so more workers than cores pays off.
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(4).clamp(1, items.len().max(1));
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, f(item)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// `BPFIPT_CONFORMANCE_REPORT_ONLY=1`: write reports but do not fail (while features land).
pub fn report_only() -> bool {
    std::env::var("BPFIPT_CONFORMANCE_REPORT_ONLY").is_ok_and(|v| v == "1")
}

/// The `*filter` ... `COMMIT` part of a dump, without comment lines, or None if it has none.
pub fn filter_part(dump: &str) -> Option<String> {
    let mut out = String::new();
    let mut inside = false;
    for line in dump.lines() {
        let t = line.trim();
        if !inside && t == "*filter" {
            inside = true;
        }
        if inside && !t.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
        if inside && t == "COMMIT" {
            return Some(out);
        }
    }
    None
}

/// The vendored test data (`tests/data/`, see its README).
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Every saved dump and restore input (iptables' own, Docker's, kube-proxy's), sorted.
pub fn dump_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    for sub in ["save-dumps", "docker", "kube-proxy"] {
        walk(&data_dir().join(sub), &mut files);
    }
    files
}

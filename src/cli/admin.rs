//! Commands of our own, which iptables has no words for: only when called as `bpf-iptables`
//! with one of these as the first argument (iptables would reject them, so nothing clashes).
//!
//! `--pin-dir`, `--reset`, `--detach`, `--gc`, `--watch`, `--log-follow [--stdout]`,
//! `--conntrack-list`, `--conntrack-flush`, `--conntrack-sweep`.

use crate::error::{param, Result};
use crate::store::{gc_stale, LockWait, Store};

pub const USAGE: &str = "\
bpf-iptables administration (besides every iptables command):
  bpf-iptables --pin-dir          print where this namespace's pinned state lives
  bpf-iptables --reset            detach the programs and delete this namespace's ruleset
  bpf-iptables --detach           detach the programs, keeping the ruleset (the next change reattaches)
  bpf-iptables --gc               delete the pinned state of namespaces that no longer exist
  bpf-iptables --watch            keep every interface of this namespace filtered as interfaces
                                  and addresses come and go (run it as a service)
  bpf-iptables --log-follow [--stdout]
                                  write LOG target lines to the kernel log (/dev/kmsg), or stdout
  bpf-iptables --conntrack-list   list tracked connections, like conntrack -L
  bpf-iptables --conntrack-flush  delete every tracked connection
  bpf-iptables --conntrack-sweep  delete the expired connections (--watch does it every 30 s)
";

/// Runs an admin command if `args` starts with one; `None` when it is an iptables command line.
pub fn run(args: &[String]) -> Option<Result<i32>> {
    let first = args.first()?.as_str();
    let rest = &args[1..];
    let known = [
        "--pin-dir",
        "--reset",
        "--detach",
        "--gc",
        "--watch",
        "--log-follow",
        "--conntrack-list",
        "--conntrack-flush",
        "--conntrack-sweep",
        "--admin-help",
    ];
    if !known.contains(&first) {
        return None;
    }
    Some(dispatch(first, rest))
}

fn dispatch(cmd: &str, rest: &[String]) -> Result<i32> {
    let stdout_flag = cmd == "--log-follow" && rest.first().map(String::as_str) == Some("--stdout");
    if rest.len() > usize::from(stdout_flag) {
        return Err(param(format!("{cmd} takes no argument `{}'", rest[usize::from(stdout_flag)])));
    }
    match cmd {
        "--admin-help" => super::print(USAGE),
        "--gc" => {
            for dir in gc_stale()? {
                super::print(&format!("removed {}\n", dir.display()));
            }
        }
        // Only where the state lives: printing it must not create it.
        "--pin-dir" => super::print(&format!("{}\n", crate::store::namespace_dir()?.0.display())),
        "--reset" => Store::reset(LockWait::Block)?,
        "--detach" => crate::datapath::detach(Store::open(LockWait::Block)?.pin_dir())?,
        "--watch" => {
            let dir = Store::open(LockWait::Block)?.pin_dir().clone();
            crate::datapath::watch(&dir, || {
                // Take the lock only while reading, so rule changes are never held up.
                let mut store = Store::open(LockWait::Block)?;
                let rs = store.load()?;
                if rs.is_pass_all() {
                    return Ok(None);
                }
                Ok(Some(crate::compile::compile(&rs)?))
            })?
        }
        "--log-follow" => {
            let dir = Store::open(LockWait::Block)?.pin_dir().clone();
            crate::datapath::log::follow(&dir, stdout_flag)?
        }
        "--conntrack-list" => {
            let dir = Store::open(LockWait::Block)?.pin_dir().clone();
            let mut out = std::io::stdout().lock();
            let n = crate::conntrack::list(&dir, &mut out)?;
            eprintln!("conntrack v1.4.7 (bpf-iptables): {n} flow entries have been shown.");
        }
        "--conntrack-flush" => {
            let dir = Store::open(LockWait::Block)?.pin_dir().clone();
            let n = crate::conntrack::flush(&dir)?;
            eprintln!("conntrack v1.4.7 (bpf-iptables): {n} flow entries have been deleted.");
        }
        "--conntrack-sweep" => {
            let dir = Store::open(LockWait::Block)?.pin_dir().clone();
            let n = crate::conntrack::sweep(&dir)?;
            eprintln!("conntrack v1.4.7 (bpf-iptables): {n} expired flow entries have been deleted.");
        }
        _ => unreachable!("checked by run()"),
    }
    Ok(0)
}

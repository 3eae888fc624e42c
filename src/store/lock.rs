//! The xtables lock: `flock(LOCK_EX)` on `/run/xtables.lock` (or `$XTABLES_LOCKFILE`), the lock
//! iptables-legacy takes, so bpf-iptables, iptables-legacy and concurrent callers (Docker and a
//! script at once) serialise against each other.
//!
//! 1.8.9 semantics: without `-w` (or with `-w` and no number) the call blocks until the lock is
//! free; with `-w N` it gives up after N seconds with exit 4 and two lines on stderr.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::error::{Error, Result};

pub const LOCK_ENV: &str = "XTABLES_LOCKFILE";
pub const DEFAULT_LOCK: &str = "/run/xtables.lock";

/// What `-w` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// No `-w`, or `-w` without a number: block until free (iptables 1.8.9 blocks in both cases).
    Block,
    /// `-w N`: give up after N seconds with exit 4.
    Timeout(Duration),
}

/// Held until dropped (closing the file releases the flock).
pub struct XtablesLock {
    _file: File,
}

impl XtablesLock {
    pub fn acquire(wait: LockWait) -> Result<XtablesLock> {
        let path = std::env::var(LOCK_ENV).unwrap_or_else(|_| DEFAULT_LOCK.to_string());
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("Fatal: can't open lock file {path}"))?;
        let fd = file.as_raw_fd();
        match wait {
            LockWait::Block => loop {
                // SAFETY: valid fd.
                if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
                    break;
                }
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINTR) {
                    return Err(Error::Other(anyhow::anyhow!("can't lock {path}: {err}")));
                }
            },
            LockWait::Timeout(limit) => {
                let start = Instant::now();
                loop {
                    // SAFETY: valid fd.
                    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                        break;
                    }
                    let err = std::io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                        return Err(Error::Other(anyhow::anyhow!("can't lock {path}: {err}")));
                    }
                    if start.elapsed() >= limit {
                        return Err(Error::Resource(format!(
                            "Can't lock {path}: Resource temporarily unavailable\n\
                             Another app is currently holding the xtables lock. Stopped waiting after {}s.",
                            limit.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(10).min(limit.saturating_sub(start.elapsed()).max(Duration::from_millis(1))));
                }
            }
        }
        Ok(XtablesLock { _file: file })
    }
}

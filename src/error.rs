//! Errors whose kind decides the exit code, and the exact way iptables 1.8.9 prints them.
//!
//! iptables' contract with its callers is the exit status: 1 for a state error (no such chain,
//! bad rule), 2 for a parameter problem (followed by the `Try ... -h` line), 3 for an unknown
//! table, 4 for a resource problem (lock timeout). Callers such as Docker and kube-proxy branch
//! on these, so every failure path produces an `Error` of the right kind.

use std::fmt;

/// The version we report; callers parse `vX.Y.Z` out of it.
pub const VERSION: &str = "1.8.9";
/// The variant tag printed where iptables prints `(legacy)` or `(nf_tables)`.
pub const VARIANT: &str = "bpf";

#[derive(Debug)]
pub enum Error {
    /// Exit 2. Printed as `PROG v1.8.9 (bpf): MSG` then the `Try` line.
    Param(String),
    /// Exit 2. Printed verbatim (no version prefix) then the `Try` line; iptables does this for a
    /// few messages such as "Bad argument `name'".
    ParamBare(String),
    /// Exit 1. Printed as `PROG: MSG` (e.g. `iptables: Chain already exists.`).
    State(String),
    /// Exit 1. Printed verbatim.
    StateBare(String),
    /// Exit 3: unknown table. Printed as `PROG v1.8.9 (bpf): MSG` with the `Perhaps ...` line.
    Table(String),
    /// Exit 4: lock or resource problem. Printed verbatim.
    Resource(String),
    /// Exit 1: anything else (system errors), with context.
    Other(anyhow::Error),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Param(_) | Error::ParamBare(_) => 2,
            Error::State(_) | Error::StateBare(_) | Error::Other(_) => 1,
            Error::Table(_) => 3,
            Error::Resource(_) => 4,
        }
    }

    /// The full stderr text for program `prog` (`iptables`, `iptables-restore`, ...).
    pub fn render(&self, prog: &str) -> String {
        let try_line = format!("Try `{prog} -h' or '{prog} --help' for more information.\n");
        match self {
            Error::Param(m) => format!("{prog} v{VERSION} ({VARIANT}): {m}\n{try_line}"),
            Error::ParamBare(m) => format!("{m}\n{try_line}"),
            Error::State(m) => format!("{prog}: {m}\n"),
            Error::StateBare(m) => format!("{m}\n"),
            Error::Table(m) => format!(
                "{prog} v{VERSION} ({VARIANT}): {m}\nPerhaps {prog} or your kernel needs to be upgraded.\n"
            ),
            Error::Resource(m) => format!("{m}\n"),
            Error::Other(e) => format!("{prog}: {e:#}\n"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Param(m) | Error::ParamBare(m) | Error::State(m) | Error::StateBare(m) => f.write_str(m),
            Error::Table(m) | Error::Resource(m) => f.write_str(m),
            Error::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<Error>() {
            Ok(err) => err,
            Err(e) => Error::Other(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for a parameter problem.
pub fn param(msg: impl Into<String>) -> Error {
    Error::Param(msg.into())
}

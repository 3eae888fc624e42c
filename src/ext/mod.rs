//! Match and target extensions: one file per extension, each owning how its options are parsed,
//! checked and printed (the shape of iptables' `libxt_*.c`). The rule walker in `parse` knows
//! nothing of any extension's options: it asks this registry which extension owns an option,
//! feeds it the option with the pending `!`, and calls `check` when the rule is complete.
//!
//! Printing has two forms: `save` (the text `-S` and `iptables-save` print after `-m NAME`, or
//! after `-j NAME` for targets) and `list` (the text in the last column of `-L`).

pub mod addrtype;
pub mod comment;
pub mod conntrack;
pub mod dscp;
pub mod icmp;
pub mod iprange;
pub mod length;
pub mod limit;
pub mod log;
pub mod mac;
pub mod mark;
pub mod mark_target;
pub mod multiport;
pub mod pkttype;
pub mod reject;
pub mod state;
pub mod statistic;
pub mod tcp;
pub mod tos;
pub mod ttl;
pub mod udp;
pub mod util;
pub mod xtopt;

#[cfg(test)]
mod conformance_tests;

use crate::error::Result;
use crate::model::{IpHeader, Match, Target};

/// Whether an option takes an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    None,
    Required,
    /// Takes the next word only if it does not start with `-` or `!` (e.g. `--log-level`? no:
    /// used by a few options such as `-w`-like ones; most extensions use `Required`).
    Optional,
    /// Takes an argument and also consumes the word after it (`--tcp-flags mask comp`): the walker
    /// passes the first as `arg` and the following word, if any, as `ParseCtx::next`, and skips
    /// that word whether or not it exists (the extension rejects a missing or `-`/`!` word).
    Two,
}

/// One long option of an extension (`--dport`), with its argument kind.
#[derive(Debug, Clone, Copy)]
pub struct Opt {
    pub name: &'static str,
    pub arg: Arg,
}

/// What an extension may look at while parsing: the fixed part of the rule parsed so far
/// (`-p` decides whether `-m tcp` is allowed) and whether we are in `iptables-restore`.
pub struct ParseCtx<'a> {
    pub ip: &'a IpHeader,
    pub restore: bool,
    /// Options (names as listed in `options`) already applied to this match/target instance;
    /// in `check`, all of them. libxtables' generic checks ("can only be used once", "must be
    /// specified", "cannot be used together") are made from this.
    pub seen: &'a [&'static str],
    /// For an `Arg::Two` option, the word after its argument (`None` at the end of the line).
    pub next: Option<&'a str>,
    /// The chain the rule goes into: some kernel checks depend on the hook (`addrtype
    /// --limit-iface-in` only in PREROUTING/INPUT/FORWARD). Only built-in names are checked.
    pub chain: &'a str,
}

/// A match extension.
pub struct MatchDef {
    /// Name after `-m`.
    pub name: &'static str,
    /// Options this match understands once loaded by `-m NAME` (or implicitly by `-p NAME`).
    pub options: &'static [Opt],
    /// Fresh match data before any option is seen.
    pub new: fn() -> Match,
    /// Apply one option. `opt` is the long name without dashes as listed in `options`; `invert`
    /// is the pending `!` (an extension that cannot invert this option returns the iptables
    /// error for it).
    pub parse: fn(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()>,
    /// Called once the whole rule is read: mandatory options, combinations, and `-p`
    /// requirements (`-m tcp` without `-p tcp` fails here with iptables' message).
    pub check: fn(m: &Match, ctx: &ParseCtx) -> Result<()>,
    /// Text printed after `-m NAME` by `-S`/save, starting with a space (e.g. ` --dport 22`).
    pub save: fn(m: &Match, out: &mut String),
    /// Text for `-L`'s last column (e.g. `tcp dpt:22`); `numeric` is `-n`.
    pub list: fn(m: &Match, numeric: bool, out: &mut String),
    /// For the few matches whose `-L` text depends on the rule (multiport names ports with the
    /// rule's `-p`): used instead of `list` by [`list_match`].
    pub list_ip: Option<fn(m: &Match, ip: &IpHeader, numeric: bool, out: &mut String)>,
}

/// A target extension (the standard verdicts and user chains are handled by the walker).
pub struct TargetDef {
    pub name: &'static str,
    pub options: &'static [Opt],
    pub new: fn() -> Target,
    pub parse: fn(t: &mut Target, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()>,
    pub check: fn(t: &Target, ctx: &ParseCtx) -> Result<()>,
    /// Text printed after `-j NAME` by `-S`/save, starting with a space, or empty.
    pub save: fn(t: &Target, out: &mut String),
    /// Text for `-L`'s last column.
    pub list: fn(t: &Target, numeric: bool, out: &mut String),
}

/// All match extensions we support, by name.
pub static MATCHES: &[&MatchDef] = &[
    &tcp::DEF, &udp::DEF, &comment::DEF, &mark::DEF, &multiport::DEF, &conntrack::DEF, &state::DEF, &iprange::DEF,
    &icmp::DEF, &addrtype::DEF, &length::DEF, &ttl::DEF, &mac::DEF, &pkttype::DEF, &limit::DEF, &tos::DEF, &dscp::DEF,
    &statistic::DEF,
];

/// All target extensions we support, by name.
pub static TARGETS: &[&TargetDef] = &[&reject::DEF, &log::DEF, &mark_target::DEF];

pub fn find_match(name: &str) -> Option<&'static MatchDef> {
    MATCHES.iter().copied().find(|m| m.name == name)
}

pub fn find_target(name: &str) -> Option<&'static TargetDef> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

/// The definition that prints/parses a given match value.
pub fn def_of_match(m: &Match) -> &'static MatchDef {
    find_match(m.name()).expect("every Match variant has a registered extension")
}

/// A match's `-L` text in the context of its rule (what `-L` prints must use).
pub fn list_match(m: &Match, ip: &IpHeader, numeric: bool, out: &mut String) {
    let def = def_of_match(m);
    match def.list_ip {
        Some(f) => f(m, ip, numeric, out),
        None => (def.list)(m, numeric, out),
    }
}

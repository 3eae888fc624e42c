//! Parsing of iptables command lines and restore input into commands on the model.
//!
//! `cmdline` is iptables' order-sensitive rule-spec walker (getopt_long emulation, pending `!`,
//! `-p` implying its match, `-m X` scoping X's options, the option/command legality table);
//! `restore` splits `iptables-restore` input into table/chain/commit lines and argv vectors that
//! go through the same walker.

pub mod cmdline;
pub mod generic;
pub mod options;
pub mod restore;

use crate::model::{Counters, IpHeader, Ipv4Mask, Match, Target};
use crate::store::LockWait;

/// The target as the walker leaves it: extension and standard targets are final, a bare name
/// must still be resolved against the table's chains (iptables does this after loading the
/// table, which is why `-j nosuchtarget` is reported only then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A standard verdict, an extension target, or no `-j` at all.
    Final(Target),
    /// `-j NAME`: a user chain if the table has one, else an unknown target.
    Chain(String),
    /// `-g NAME`: must be a user chain.
    Goto(String),
}

/// `-s`/`-d` addresses: one, nearly always (kept inline, no allocation).
pub type Addrs = smallvec::SmallVec<[Ipv4Mask; 1]>;

/// A parsed rule: everything but the addresses, which iptables expands into one rule per
/// source x destination pair (`-s a,b -d c` makes two rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// `ip.src`/`ip.dst` are `None` here; see `srcs`/`dsts`.
    pub ip: IpHeader,
    pub src_invert: bool,
    pub dst_invert: bool,
    /// Source addresses (empty: any).
    pub srcs: Addrs,
    /// Destination addresses (empty: any).
    pub dsts: Addrs,
    pub matches: Vec<Match>,
    pub target: TargetSpec,
    /// `-c P B`.
    pub counters: Option<Counters>,
}

/// The command of one invocation (iptables' CMD_* after parsing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Append { chain: String, rule: RuleSpec },
    Check { chain: String, rule: RuleSpec },
    Delete { chain: String, rule: RuleSpec },
    DeleteNum { chain: String, num: u32 },
    Insert { chain: String, num: u32, rule: RuleSpec },
    Replace { chain: String, num: u32, rule: RuleSpec },
    /// `-L` and/or `-S`, possibly combined with `-Z` (list first, then zero).
    List { rules_format: bool, chain: Option<String>, num: Option<u32>, zero: bool },
    Flush { chain: Option<String> },
    /// `-Z [chain [num]]` alone.
    Zero { chain: Option<String>, num: Option<u32> },
    NewChain { chain: String },
    DeleteChain { chain: Option<String> },
    Rename { old: String, new: String },
    Policy { chain: String, policy: String, counters: Option<Counters> },
}

/// Everything one `iptables` argv (or one restore rule line) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub table: String,
    pub command: Command,
    /// Number of `-v`.
    pub verbose: u32,
    pub numeric: bool,
    pub exact: bool,
    pub line_numbers: bool,
    pub wait: LockWait,
}

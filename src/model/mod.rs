//! The rule model: tables, chains, rules, matches, targets and counters as pure data.
//!
//! This is the contract between every stage of the pipeline (parse -> model -> store ->
//! compile -> datapath -> output). Nothing here does I/O. Values are stored *normalised* the way
//! iptables 1.8.9 normalises them at parse time (address masked, service names resolved to
//! numbers, `--syn` as flags, MARK variants as `--set-xmark`), so printing is a pure function of
//! the model and two rules that print the same compare equal.
//!
//! Every rule carries a stable `id` assigned by the store when the rule is created; per-rule
//! counters in the datapath are indexed by it, so inserting or deleting other rules never moves a
//! rule's counters.

pub mod matches;
pub mod targets;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

pub use matches::*;
pub use targets::*;

/// Longest chain name iptables accepts is 28 characters (`XT_EXTENSION_MAXNAMELEN - 1` = 28,
/// "must be under 29 chars").
pub const MAX_CHAIN_NAME_LEN: usize = 28;

/// Packet and byte counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

impl Counters {
    pub fn add(&mut self, other: Counters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// Policy of a built-in chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    Accept,
    Drop,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Accept => "ACCEPT",
            Policy::Drop => "DROP",
        }
    }
}

/// The tables iptables knows. Only `Filter` is enforced by the datapath today; the others are
/// recognised so that errors can be precise (a known table we can't enforce is refused with
/// exit 2; an unknown one gives iptables' exit 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TableKind {
    Filter,
    Nat,
    Mangle,
    Raw,
    Security,
}

impl TableKind {
    pub fn from_name(name: &str) -> Option<TableKind> {
        Some(match name {
            "filter" => TableKind::Filter,
            "nat" => TableKind::Nat,
            "mangle" => TableKind::Mangle,
            "raw" => TableKind::Raw,
            "security" => TableKind::Security,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            TableKind::Filter => "filter",
            TableKind::Nat => "nat",
            TableKind::Mangle => "mangle",
            TableKind::Raw => "raw",
            TableKind::Security => "security",
        }
    }

    /// Built-in chains in hook order (the order iptables lists them).
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            TableKind::Filter | TableKind::Security => &["INPUT", "FORWARD", "OUTPUT"],
            TableKind::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            TableKind::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
            TableKind::Raw => &["PREROUTING", "OUTPUT"],
        }
    }

    /// Whether the datapath can enforce rules of this table.
    pub fn supported(self) -> bool {
        matches!(self, TableKind::Filter)
    }
}

/// An IPv4 address with a mask (not necessarily a CIDR mask: iptables accepts `/255.0.255.0`).
/// The address is stored already masked. Both in host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ipv4Mask {
    pub addr: u32,
    pub mask: u32,
}

impl Ipv4Mask {
    pub const ANY: Ipv4Mask = Ipv4Mask { addr: 0, mask: 0 };

    pub fn new(addr: u32, mask: u32) -> Self {
        Ipv4Mask { addr: addr & mask, mask }
    }

    /// Prefix length if the mask is contiguous.
    pub fn prefix_len(&self) -> Option<u8> {
        let ones = self.mask.leading_ones();
        (self.mask.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
    }

    pub fn contains(&self, ip: u32) -> bool {
        ip & self.mask == self.addr
    }
}

/// An interface name as iptables matches it: exact, or a prefix when written with a trailing `+`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Iface {
    /// The name without the trailing `+`.
    pub name: String,
    /// `true` for `eth+` (matches every name starting with `eth`; a bare `+` matches all).
    pub wildcard: bool,
}

impl Iface {
    pub fn matches(&self, ifname: &str) -> bool {
        if self.wildcard {
            ifname.starts_with(&self.name)
        } else {
            ifname == self.name
        }
    }
}

/// A value with iptables' `!` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Inv<T> {
    pub value: T,
    pub invert: bool,
}

impl<T> Inv<T> {
    pub fn new(value: T, invert: bool) -> Self {
        Inv { value, invert }
    }
}

/// The fixed part of a rule (`struct ipt_ip`): `-s -d -i -o -p -f`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpHeader {
    pub src: Option<Inv<Ipv4Mask>>,
    pub dst: Option<Inv<Ipv4Mask>>,
    pub in_iface: Option<Inv<Iface>>,
    pub out_iface: Option<Inv<Iface>>,
    /// Protocol number; `None` means `all` (iptables' 0). `-p all` is stored as `None`.
    pub proto: Option<Inv<u8>>,
    /// `-f` (second and further fragments) / `! -f` (head or unfragmented).
    pub fragment: Option<bool>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Stable identity, assigned by the store; indexes the per-rule counters in the datapath.
    pub id: u32,
    pub ip: IpHeader,
    /// Matches in the order they were given (that order is printed back).
    pub matches: Vec<Match>,
    pub target: Target,
    /// Counter offsets set with `-c`/`--set-counters` or restore `[p:b]`; the datapath's counts
    /// are added to these when printing.
    pub counters: Counters,
}

impl Rule {
    /// The id of a rule not yet stored; the store assigns a real one on commit.
    pub const UNASSIGNED: u32 = u32::MAX;

    /// Two rules are "the same rule" for `-C`, `-D` by spec and restore's `-D`: every field but the
    /// identity and counters equal (iptables compares the whole entry except counters).
    pub fn same_spec(&self, other: &Rule) -> bool {
        self.ip == other.ip && self.matches == other.matches && self.target == other.target
    }

    /// Whether the rule always ends its chain's walk: an unconditional ACCEPT, DROP or RETURN.
    /// The kernel's `mark_source_chains` stops there, so rules after it are never reached (and
    /// their jumps never followed).
    pub fn ends_walk(&self) -> bool {
        matches!(self.target, Target::Accept | Target::Drop | Target::Return)
            && self.matches.is_empty()
            && self.ip == IpHeader::default()
    }
}

/// A chain. Built-in chains have a policy; user chains have `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub name: String,
    pub policy: Option<Policy>,
    /// Policy counters (built-in chains only): offsets set by `-c` in restore; datapath adds.
    pub counters: Counters,
    pub rules: Vec<Rule>,
}

impl Chain {
    pub fn builtin(name: &str) -> Self {
        Chain { name: name.to_string(), policy: Some(Policy::Accept), counters: Counters::default(), rules: Vec::new() }
    }

    pub fn user(name: &str) -> Self {
        Chain { name: name.to_string(), policy: None, counters: Counters::default(), rules: Vec::new() }
    }

    pub fn is_builtin(&self) -> bool {
        self.policy.is_some()
    }
}

/// A table: its built-in chains (hook order) followed by user chains (kept sorted by name, the
/// order iptables prints them in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub kind: TableKind,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn new(kind: TableKind) -> Self {
        Table { kind, chains: kind.builtin_chains().iter().map(|c| Chain::builtin(c)).collect() }
    }

    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    pub fn chain_mut(&mut self, name: &str) -> Option<&mut Chain> {
        self.chains.iter_mut().find(|c| c.name == name)
    }

    pub fn builtins(&self) -> impl Iterator<Item = &Chain> {
        self.chains.iter().filter(|c| c.is_builtin())
    }

    pub fn user_chains(&self) -> impl Iterator<Item = &Chain> {
        self.chains.iter().filter(|c| !c.is_builtin())
    }

    /// Adds a user chain keeping user chains sorted by name (strcmp order, as iptables does).
    pub fn add_user_chain(&mut self, chain: Chain) {
        let nbuiltin = self.chains.iter().filter(|c| c.is_builtin()).count();
        let pos = self.chains[nbuiltin..]
            .iter()
            .position(|c| c.name.as_bytes() > chain.name.as_bytes())
            .map(|p| p + nbuiltin)
            .unwrap_or(self.chains.len());
        self.chains.insert(pos, chain);
    }

    /// Number of rules in this table that jump or go to `chain` (the "references" of `-L`).
    pub fn references(&self, chain: &str) -> usize {
        self.chains
            .iter()
            .flat_map(|c| c.rules.iter())
            .filter(|r| matches!(&r.target, Target::Jump(n) | Target::Goto(n) if n == chain))
            .count()
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.chains.iter().flat_map(|c| c.rules.iter())
    }

    /// The names of the chains a packet can walk: the built-in ones, then every chain a rule
    /// of a chain so reached jumps or goes to (whether or not an earlier rule always ends
    /// the walk: what the compiler would look at).
    pub fn reachable_chains(&self) -> Vec<&str> {
        let by_name: HashMap<&str, &Chain> = self.chains.iter().map(|c| (c.name.as_str(), c)).collect();
        let mut order: Vec<&str> = self.builtins().map(|c| c.name.as_str()).collect();
        let mut seen: HashSet<&str> = order.iter().copied().collect();
        let mut i = 0;
        while let Some(chain) = order.get(i).and_then(|n| by_name.get(n)) {
            i += 1;
            for r in &chain.rules {
                if let Target::Jump(n) | Target::Goto(n) = &r.target {
                    if seen.insert(n) {
                        order.push(n);
                    }
                }
            }
        }
        order
    }
}

/// All tables of one network namespace, plus the allocator of rule ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// Tables that exist, in the order iptables-save prints them (legacy prints in the order
    /// the kernel lists them; we keep filter first and add others as they are used).
    pub tables: Vec<Table>,
    /// Next rule id to try; ids are recycled from the smallest free one when this wraps.
    pub next_rule_id: u32,
}

impl Default for Ruleset {
    fn default() -> Self {
        Ruleset { tables: vec![Table::new(TableKind::Filter)], next_rule_id: 0 }
    }
}

impl Ruleset {
    pub fn table(&self, kind: TableKind) -> Option<&Table> {
        self.tables.iter().find(|t| t.kind == kind)
    }

    /// The table, created empty (built-in chains, ACCEPT policies) on first use, as the kernel
    /// does when a table module is loaded.
    pub fn table_mut(&mut self, kind: TableKind) -> &mut Table {
        if let Some(i) = self.tables.iter().position(|t| t.kind == kind) {
            return &mut self.tables[i];
        }
        self.tables.push(Table::new(kind));
        self.tables.last_mut().expect("just pushed")
    }

    /// `true` when nothing would filter: no rules anywhere and every policy ACCEPT. The
    /// datapath then passes every packet unjudged (`datapath::apply`).
    pub fn is_pass_all(&self) -> bool {
        self.tables.iter().all(|t| {
            t.chains.iter().all(|c| c.rules.is_empty() && c.policy != Some(Policy::Drop))
        })
    }
}

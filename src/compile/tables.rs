//! The compiled form of a ruleset: what `compile` produces and `datapath` writes into maps.
//!
//! One `HookTable` per filter hook (INPUT, FORWARD, OUTPUT). User chains are inlined into the
//! hooks that reach them, so a hook table is a flat, ordered list of *compiled rules* numbered
//! 0..n. Classification is Linear Bit Vector Search with sparse vectors:
//!
//! * For each *field* some rule of the hook constrains, the packet's value of that field maps to
//!   a vector: the set of compiled rules whose constraints on that field accept the value.
//!   Rules that do not constrain the field are kept apart in the field's *wildcard* vector, so
//!   vectors stay sparse (an unconstrained rule is not repeated in every value's vector).
//! * The candidate rules for a packet are, per 64-rule word w,
//!   `AND over used fields f of (value_vector_f[w] | wildcard_f[w])`.
//!   The first set bit is the matching rule, unless its residual checks fail, in which case the
//!   search goes on from the next bit.
//!
//! A `Vector` lists only its non-zero 64-bit words, sorted by word index. Rule `r` is bit
//! `r % 64` of word `r / 64`.
//!
//! Everything here is plain data; no map layout is implied beyond the meaning of the fields.

use smallvec::SmallVec;

use crate::model::{Iface, LogTarget, RejectWith, TtlOp};

/// The filter hooks, in the order of `HookTable`s in `Compiled::hooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Input = 0,
    Forward = 1,
    Output = 2,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::Input, Hook::Forward, Hook::Output];

    /// The hook of built-in chain `name`.
    pub fn of_chain(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.chain_name() == name)
    }

    pub fn chain_name(self) -> &'static str {
        match self {
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Output => "OUTPUT",
        }
    }
}

/// The fields LBVS classifies on. The packet value of each is described on the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// IPv4 source address (LPM).
    Src = 0,
    /// IPv4 destination address (LPM).
    Dst = 1,
    /// IP protocol number (0..=255).
    Proto = 2,
    /// Transport source port (TCP/UDP/SCTP/DCCP/UDPLITE; 0 for other protocols and for
    /// non-first fragments — rules with port constraints also constrain `Proto`, and carry a
    /// `Check::L4Header` so fragments never match them).
    Sport = 3,
    /// Transport destination port, as `Sport`.
    Dport = 4,
    /// Input interface name (LPM over the name bytes; see `IfacePattern`). Absent at OUTPUT,
    /// where netfilter's input name is empty: the compiler resolves such constraints itself.
    InIface = 5,
    /// Output interface name. Absent at INPUT (empty name there, resolved by the compiler).
    OutIface = 6,
    /// TCP flags byte (0..=255; 0 for non-TCP).
    TcpFlags = 7,
    /// ICMP `type << 8 | code` (0..=65535; 0 for non-ICMP, with `Check::L4Header` as for ports).
    Icmp = 8,
    /// Conntrack state of the packet as one `ct_state` bit index (0..=15; see `model::ct_state`).
    CtState = 9,
}

pub const NR_FIELDS: usize = 10;

impl Field {
    pub const ALL: [Field; NR_FIELDS] = [
        Field::Src,
        Field::Dst,
        Field::Proto,
        Field::Sport,
        Field::Dport,
        Field::InIface,
        Field::OutIface,
        Field::TcpFlags,
        Field::Icmp,
        Field::CtState,
    ];
}

/// Index of a vector in `HookTable::vectors`.
pub type VecId = u32;

/// A sparse bitvector over the compiled rules of one hook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Vector {
    /// `(word index, bits)`, word index strictly increasing, bits never 0. Most vectors of a
    /// large hook are one word (an address's few rules): kept inline, not allocated.
    pub words: SmallVec<[(u32, u64); 1]>,
}

/// An IPv4 prefix (LPM trie key). Host byte order, `addr` masked to `len` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: u32,
    pub len: u8,
}

/// An interface-name LPM key: `name` bytes, matched as a prefix of the packet's interface name
/// when `exact` is false (`eth+`), or as the whole name when `exact` is true (the key then
/// includes the terminating NUL). The empty wildcard pattern (`+`) matches every name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfacePattern {
    pub name: Vec<u8>,
    pub exact: bool,
}

/// A value-to-vector mapping for one field of one hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldMap {
    /// Longest-prefix-match entries. Always contains the default `0.0.0.0/0` entry, so every
    /// address finds exactly one entry: the longest one containing it.
    Prefixes(Vec<(Prefix, VecId)>),
    /// Longest-prefix-match entries on interface names. Always contains the empty wildcard
    /// pattern as the default.
    Ifaces(Vec<(IfacePattern, VecId)>),
    /// Sorted, disjoint, inclusive intervals covering the whole value domain of the field
    /// (0..=255 or 0..=65535 or 0..=15), each with its vector.
    Intervals(Vec<(u32, u32, VecId)>),
}

impl FieldMap {
    /// How many entries (prefixes, patterns or intervals) it maps.
    pub fn entries(&self) -> usize {
        match self {
            FieldMap::Prefixes(p) => p.len(),
            FieldMap::Ifaces(p) => p.len(),
            FieldMap::Intervals(iv) => iv.len(),
        }
    }
}

/// Per-field part of a hook table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTable {
    pub field: Field,
    pub map: FieldMap,
    /// Rules that do not constrain this field.
    pub wildcard: VecId,
}

/// A check that LBVS does not cover, evaluated on a candidate rule before it is taken. A rule's
/// checks are all ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Check {
    /// The packet has a transport header at offset 0 (not a non-first fragment, and long enough).
    L4Header,
    /// `-f` (true: non-first fragment) / `! -f` (false).
    Fragment(bool),
    Mark { value: u32, mask: u32, invert: bool },
    /// IP total length in `lo..=hi`.
    Length { lo: u16, hi: u16, invert: bool },
    Ttl { op: TtlOp, value: u8 },
    /// `(tos & mask) == value`.
    Tos { value: u8, mask: u8, invert: bool },
    Dscp { value: u8, invert: bool },
    /// Link-layer packet type (0 unicast to us, 1 broadcast, 2 multicast).
    Pkttype { pkttype: u8, invert: bool },
    MacSource { addr: [u8; 6], invert: bool },
    TcpOption { kind: u8, invert: bool },
    /// Token bucket; `state` indexes per-rule limiter state.
    Limit { state: u32, avg: u32, burst: u32 },
    StatisticRandom { probability: u32, invert: bool },
    /// `state` indexes the per-rule packet counter.
    StatisticNth { state: u32, every: u32, packet: u32, invert: bool },
    /// Address type of source/destination (`model::addr_type` bits); `None` = not checked.
    Addrtype { src: Option<(u16, bool)>, dst: Option<(u16, bool)>, limit_iface_in: bool, limit_iface_out: bool },
    /// A `-m conntrack`/`-m state` match that LBVS does not cover (options beyond a plain
    /// `--ctstate`, SNAT/DNAT states, or after a stateful match). Every option present is
    /// evaluated, `state` included, exactly as `conntrack_mt` does (untracked/invalid packets
    /// match iff `state` is present and passes).
    Conntrack(Box<crate::model::ConntrackMatch>),
    /// The packet's value of `field` (as defined on `Field`; addresses as host-order `u32`) is
    /// in one of `ranges` (sorted, disjoint, inclusive). Used for field matches that follow a
    /// stateful match in their rule, which must be evaluated after it, in order.
    FieldIn { field: Field, ranges: Vec<(u32, u32)> },
    /// The source or the destination port is in `ranges` (sorted, disjoint, inclusive):
    /// `-m multiport --ports` after a stateful match.
    PortEither { ranges: Vec<(u32, u32)> },
    /// The input (`out` false) or output interface's name passes every `(pattern, inverted)`
    /// literal: the interface matches of a rule added in place (`compile_tail`,
    /// `compile_in_chain`), resolved per interface of the namespace as the image is patched,
    /// an interface it does not know as the vectors see one (no pattern but `+` matches it).
    Ifaces { out: bool, lits: Vec<(Iface, bool)> },
    /// `(addr & mask) == value`, inverted if `invert`, on `field` (`Src` or `Dst`): a
    /// non-contiguous mask too costly to expand into prefixes.
    AddrMask { field: Field, value: u32, mask: u32, invert: bool },
}

/// What happens when a compiled rule is taken.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ActionKind {
    Accept,
    Drop,
    Reject(RejectWith),
    /// Log, then continue with the next rule. Index into `Compiled::logs`.
    Log(u32),
    /// Set the mark (`(mark & !mask) ^ value`), then continue.
    Mark { value: u32, mask: u32 },
    /// Count and continue with the next rule (a rule without target).
    Continue,
    /// Continue at compiled rule `to` (> this rule): RETURN, or the end of a `-g` block.
    /// `to` is `POLICY` where the built-in chain itself returns: its policy applies, whatever
    /// rules are appended to the hook later. `depth`: how deep the block whose end `to` is
    /// sits in user chains (0: the built-in chain): rules inserted in place at that end by
    /// chains that deep or deeper are skipped too (see "inserted rules" in bpf_iptables.h).
    SkipTo { to: u32, depth: u32 },
    /// A jump into an inlined user chain: when taken, count and continue with the next rule
    /// (as `Continue`); when one of its residual checks fails, continue at compiled rule `end`
    /// (> this rule) instead of the next bit, skipping the chain's block, of depth `depth` (as
    /// `SkipTo`). (The block's rules carry only the jump rule's field constraints, not its
    /// checks: a check must not be evaluated twice — limits consume tokens, MARK may change
    /// the mark in between.) A `-g` block ends with the rule that returns for the chain.
    Enter { end: u32, depth: u32 },
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Action {
    /// The model rule whose counters this compiled rule feeds; `None` for synthetic rules.
    pub rule_id: Option<u32>,
    pub kind: ActionKind,
    /// Residual checks, all of which must hold.
    pub checks: Vec<Check>,
}

/// `SkipTo` target of a RETURN from the built-in chain: past every compiled rule.
pub const POLICY: u32 = super::MAX_RULES_PER_HOOK as u32;

/// The classifier for one hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookTable {
    pub hook: Hook,
    /// Compiled rules, in evaluation order; `actions.len()` is the number of compiled rules.
    pub actions: Vec<Action>,
    /// The first `lbvs_rules` actions are the ones the vectors cover; the others were appended
    /// after them (`compile_tail`), their field matches as `FieldIn` checks, and are tried in
    /// order once LBVS has no candidate left.
    pub lbvs_rules: u32,
    /// Vectors referenced by the field tables.
    pub vectors: Vec<Vector>,
    /// Only fields some compiled rule constrains; the others are skipped by the datapath.
    /// When empty, every compiled rule is a candidate.
    pub fields: Vec<FieldTable>,
    /// Verdict when no rule decides: `true` = ACCEPT, `false` = DROP.
    pub policy_accept: bool,
}

/// The whole compiled filter table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub hooks: Vec<HookTable>,
    /// LOG targets referenced by `ActionKind::Log`.
    pub logs: Vec<LogTarget>,
    /// Number of `Check::Limit`/`Check::StatisticNth` state slots used.
    pub n_states: u32,
}

//! The linear reference classifier: netfilter's `ipt_do_table` walked directly over the model,
//! rule by rule, with jumps, gotos, RETURN and policies, and each match evaluated in order as
//! the kernel's `*_mt` function does. It is the oracle the compiled LBVS tables are tested
//! against; it is not used on the datapath.
//!
//! Also here: the `Packet` both classifiers look at, and the per-match packet predicates that
//! both share (the compiler moves matches around, it never changes what one match means, so
//! sharing the leaf predicates keeps the comparison about what the compiler does).
//!
//! Simplifications, identical on both sides: a truncated transport header makes a transport
//! match fail (the kernel hot-drops the packet, which the datapath's parser does before
//! classification); `addrtype`'s address types are given by the packet (routing is the
//! datapath's job) and `--limit-iface-*` does not change them.

use std::collections::HashMap;

use super::tables::{Field, Hook};
use crate::error::Error;
use crate::model::{
    AddrtypeMatch, ConntrackMatch, CtDir, Inv, LimitMatch, Match, MultiportDir, PortRange, RejectWith, Rule,
    StatisticMode, Table, Target, TtlOp,
};

/// Conntrack entry of a tracked packet (what `-m conntrack` options beyond `--ctstate` see).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub proto: u8,
    /// `(src, dst, sport, dport)` of the original and reply directions.
    pub orig: (u32, u32, u16, u16),
    pub repl: (u32, u32, u16, u16),
    /// `IPS_*` status bits (`IPS_SRC_NAT` = 1 << 4, `IPS_DST_NAT` = 1 << 5).
    pub status: u32,
    /// Seconds until expiry.
    pub expire: u32,
    /// The packet travels in the reply direction.
    pub reply_dir: bool,
}

/// `IPS_SRC_NAT_BIT`, `IPS_DST_NAT_BIT`.
const IPS_SRC_NAT: u32 = 1 << 4;
const IPS_DST_NAT: u32 = 1 << 5;

/// Everything the classifiers look at in a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub hook: Hook,
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    /// Transport ports (TCP, UDP, UDPLITE, SCTP, DCCP); ignored for other protocols.
    pub sport: u16,
    pub dport: u16,
    /// Interface names; netfilter sees an empty input name at OUTPUT and an empty output name
    /// at INPUT whatever these say.
    pub in_iface: String,
    pub out_iface: String,
    pub tcp_flags: u8,
    /// TCP option kinds present.
    pub tcp_options: Vec<u8>,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// IP total length.
    pub length: u16,
    pub ttl: u8,
    pub tos: u8,
    pub mark: u32,
    /// Fragment offset in 8-byte units (non-zero: a non-first fragment).
    pub frag_off: u16,
    /// The transport header is present and complete (only meaningful when `frag_off == 0`).
    pub l4_ok: bool,
    /// Conntrack state as a `ct_state` bit index: 0 INVALID, 1 ESTABLISHED, 2 RELATED, 3 NEW,
    /// 6 UNTRACKED.
    pub ct_state: u8,
    /// The conntrack entry; `None` exactly when the state is INVALID or UNTRACKED.
    pub conn: Option<Conn>,
    /// Effective `pkttype` (0 host, 1 broadcast, 2 multicast, 3 other host).
    pub pkttype: u8,
    /// Ethernet source address; `None` on a non-Ethernet device.
    pub mac_src: Option<[u8; 6]>,
    /// `addr_type` bit of the source and destination addresses.
    pub src_type: u16,
    pub dst_type: u16,
    /// Time in jiffies (`HZ` per second), for `-m limit`.
    pub now: u64,
    /// The random number `-m statistic --mode random` draws.
    pub random: u32,
}

/// Protocols whose transport header starts with 16-bit source and destination ports.
pub const PORT_PROTOS: [u8; 5] = [6, 17, 33, 132, 136];

impl Packet {
    /// The packet's value of an LBVS field other than the interfaces, as `Field` defines it.
    pub fn field_value(&self, f: Field) -> u32 {
        let l4 = self.frag_off == 0 && self.l4_ok;
        match f {
            Field::Src => self.src,
            Field::Dst => self.dst,
            Field::Proto => self.proto as u32,
            Field::Sport if l4 && PORT_PROTOS.contains(&self.proto) => self.sport as u32,
            Field::Dport if l4 && PORT_PROTOS.contains(&self.proto) => self.dport as u32,
            Field::TcpFlags if l4 && self.proto == 6 => self.tcp_flags as u32,
            Field::Icmp if l4 && self.proto == 1 => (self.icmp_type as u32) << 8 | self.icmp_code as u32,
            Field::CtState => self.ct_state as u32,
            Field::Sport | Field::Dport | Field::TcpFlags | Field::Icmp => 0,
            Field::InIface | Field::OutIface => 0,
        }
    }

    /// The interface name netfilter compares for `-i` (`out == false`) or `-o`.
    pub fn iface(&self, out: bool) -> &str {
        match (out, self.hook) {
            (false, Hook::Output) | (true, Hook::Input) => "",
            (false, _) => &self.in_iface,
            (true, _) => &self.out_iface,
        }
    }

    /// A transport match can look at the header (else it fails).
    pub fn has_l4(&self) -> bool {
        self.frag_off == 0 && self.l4_ok
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Reject(RejectWith),
}

/// The result of classifying one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The verdict is the hook's policy (policy counters count it).
    pub by_policy: bool,
    /// Ids of the rules that matched, in order (what the rule counters see).
    pub matched: Vec<u32>,
    /// The mark after every MARK target that ran.
    pub mark: u32,
}

/// Kernel `HZ` assumed by the limit model.
pub const HZ: u64 = 1000;
/// `CREDITS_PER_JIFFY` for `HZ` 1000: the power of two below `0xFFFFFFFF / (HZ * 86400)`.
const CREDITS_PER_JIFFY: u64 = 32;

/// `user2credit` of `xt_limit.c`.
fn user2credit(user: u64) -> u64 {
    user * HZ * CREDITS_PER_JIFFY / LimitMatch::SCALE as u64
}

/// The token bucket of one `-m limit` rule (`xt_limit_priv`), full when created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limiter {
    credit: u64,
    prev: u64,
}

impl Limiter {
    pub fn new(avg: u32, burst: u32, now: u64) -> Limiter {
        Limiter { credit: user2credit(avg as u64 * burst as u64), prev: now }
    }

    /// `limit_mt`: refill by elapsed time, then take one packet's cost if available.
    pub fn pass(&mut self, avg: u32, burst: u32, now: u64) -> bool {
        let cap = user2credit(avg as u64 * burst as u64);
        let cost = user2credit(avg as u64);
        let credit = (self.credit + now.saturating_sub(self.prev) * CREDITS_PER_JIFFY).min(cap);
        self.prev = now.max(self.prev);
        let ok = credit >= cost;
        self.credit = if ok { credit - cost } else { credit };
        ok
    }
}

/// `-m statistic --mode nth` on its shared counter.
pub fn nth_pass(count: &mut u32, every: u32, packet: u32, invert: bool) -> bool {
    *count = if *count == every { 0 } else { *count + 1 };
    (*count == packet) ^ invert
}

pub fn random_pass(probability: u32, invert: bool, p: &Packet) -> bool {
    ((p.random & 0x7FFF_FFFF) < probability) ^ invert
}

pub fn port_in(r: &Inv<PortRange>, port: u16) -> bool {
    r.value.contains(port) ^ r.invert
}

pub fn ttl_matches(op: TtlOp, value: u8, ttl: u8) -> bool {
    match op {
        TtlOp::Eq => ttl == value,
        TtlOp::Ne => ttl != value,
        TtlOp::Lt => ttl < value,
        TtlOp::Gt => ttl > value,
    }
}

pub fn mac_matches(addr: &[u8; 6], invert: bool, p: &Packet) -> bool {
    p.mac_src.is_some_and(|m| (m == *addr) ^ invert)
}

pub fn addrtype_matches(src: Option<(u16, bool)>, dst: Option<(u16, bool)>, p: &Packet) -> bool {
    src.map_or(true, |(t, inv)| ((t & p.src_type) != 0) ^ inv) && dst.map_or(true, |(t, inv)| ((t & p.dst_type) != 0) ^ inv)
}

/// `conntrack_mt` (revision 3).
pub fn conntrack_matches(m: &ConntrackMatch, p: &Packet) -> bool {
    if let Some(s) = m.state {
        let mut bit = 1u16 << p.ct_state;
        if let Some(c) = &p.conn {
            if c.status & IPS_SRC_NAT != 0 {
                bit |= crate::model::ct_state::SNAT;
            }
            if c.status & IPS_DST_NAT != 0 {
                bit |= crate::model::ct_state::DNAT;
            }
        }
        if ((s.value & bit) != 0) == s.invert {
            return false;
        }
    }
    let Some(c) = &p.conn else { return m.state.is_some() };
    let addr = |o: &Option<Inv<crate::model::Ipv4Mask>>, a: u32| o.map_or(true, |i| i.value.contains(a) ^ i.invert);
    let port = |o: &Option<Inv<PortRange>>, v: u16| o.as_ref().map_or(true, |r| port_in(r, v));
    m.dir.map_or(true, |d| (d == CtDir::Reply) == c.reply_dir)
        && addr(&m.orig_src, c.orig.0)
        && addr(&m.orig_dst, c.orig.1)
        && addr(&m.repl_src, c.repl.0)
        && addr(&m.repl_dst, c.repl.1)
        && m.proto.map_or(true, |i| (c.proto == i.value) ^ i.invert)
        && port(&m.orig_src_port, c.orig.2)
        && port(&m.orig_dst_port, c.orig.3)
        && port(&m.repl_src_port, c.repl.2)
        && port(&m.repl_dst_port, c.repl.3)
        && m.status.map_or(true, |i| ((i.value as u32 & c.status) != 0) ^ i.invert)
        && m.expire.map_or(true, |i| (i.value.0 <= c.expire && c.expire <= i.value.1) ^ i.invert)
}

/// State of the stateful matches, keyed by (rule id, match index): one per rule as in the
/// kernel, however many times the rule is reached.
#[derive(Debug, Default)]
pub struct RefState {
    limits: HashMap<(u32, usize), Limiter>,
    nth: HashMap<(u32, usize), u32>,
}

/// Rules a packet may traverse before we call the ruleset looping (compile refuses loops).
const MAX_STEPS: usize = 1 << 24;

/// Classifies `p` against the filter table at `p.hook`.
pub fn classify(table: &Table, p: &Packet, st: &mut RefState) -> Result<Outcome, Error> {
    let chain_of = |name: &str| {
        table.chain(name).ok_or_else(|| Error::State(format!("Couldn't load target `{name}'")))
    };
    let builtin = chain_of(p.hook.chain_name())?;
    let policy = || match builtin.policy {
        Some(crate::model::Policy::Drop) => Verdict::Drop,
        _ => Verdict::Accept,
    };
    let mut out = Outcome { verdict: Verdict::Accept, by_policy: false, matched: Vec::new(), mark: p.mark };
    let mut stack: Vec<(&crate::model::Chain, usize)> = Vec::new();
    let (mut chain, mut i) = (builtin, 0usize);
    for _ in 0..MAX_STEPS {
        let Some(rule) = chain.rules.get(i) else {
            // End of a chain: back to the caller, or the policy from a built-in chain or when
            // only gotos led here.
            match stack.pop() {
                Some((c, n)) if !chain.is_builtin() => (chain, i) = (c, n),
                _ => return Ok(Outcome { verdict: policy(), by_policy: true, ..out }),
            }
            continue;
        };
        if !rule_matches(rule, p, out.mark, st) {
            i += 1;
            continue;
        }
        out.matched.push(rule.id);
        match &rule.target {
            Target::Accept => return Ok(Outcome { verdict: Verdict::Accept, ..out }),
            Target::Drop => return Ok(Outcome { verdict: Verdict::Drop, ..out }),
            Target::Reject(w) => return Ok(Outcome { verdict: Verdict::Reject(*w), ..out }),
            Target::None | Target::Log(_) => i += 1,
            Target::Mark(m) => {
                out.mark = (out.mark & !m.mask) ^ m.value;
                i += 1;
            }
            Target::Return => match stack.pop() {
                Some((c, n)) if !chain.is_builtin() => (chain, i) = (c, n),
                _ => return Ok(Outcome { verdict: policy(), by_policy: true, ..out }),
            },
            Target::Jump(x) => {
                stack.push((chain, i + 1));
                (chain, i) = (chain_of(x)?, 0);
            }
            Target::Goto(x) => (chain, i) = (chain_of(x)?, 0),
        }
    }
    Err(Error::State("Too many levels of symbolic links.".into()))
}

/// `ip_packet_match`, then every match in order (short-circuit: a stateful match only runs
/// when everything before it passed).
fn rule_matches(rule: &Rule, p: &Packet, mark: u32, st: &mut RefState) -> bool {
    let ip = &rule.ip;
    let header = ip.src.map_or(true, |s| s.value.contains(p.src) ^ s.invert)
        && ip.dst.map_or(true, |s| s.value.contains(p.dst) ^ s.invert)
        && ip.in_iface.as_ref().map_or(true, |i| i.value.matches(p.iface(false)) ^ i.invert)
        && ip.out_iface.as_ref().map_or(true, |i| i.value.matches(p.iface(true)) ^ i.invert)
        && ip.proto.map_or(true, |pr| pr.value == 0 || (p.proto == pr.value) ^ pr.invert)
        && ip.fragment.map_or(true, |f| (p.frag_off != 0) == f);
    header && rule.matches.iter().enumerate().all(|(k, m)| match_matches(m, (rule.id, k), p, mark, st))
}

fn match_matches(m: &Match, key: (u32, usize), p: &Packet, mark: u32, st: &mut RefState) -> bool {
    let port = |r: &Option<Inv<PortRange>>, v: u16| r.as_ref().map_or(true, |r| port_in(r, v));
    match m {
        Match::Tcp(t) => {
            p.has_l4()
                && port(&t.sport, p.sport)
                && port(&t.dport, p.dport)
                && t.flags.map_or(true, |f| ((p.tcp_flags & f.value.mask) == f.value.comp) ^ f.invert)
                && t.option.map_or(true, |o| p.tcp_options.contains(&o.value) ^ o.invert)
        }
        Match::Udp(u) => p.has_l4() && port(&u.sport, p.sport) && port(&u.dport, p.dport),
        Match::Icmp(i) => {
            p.has_l4()
                && (i.icmp_type == crate::model::IcmpMatch::ANY_TYPE
                    || (p.icmp_type == i.icmp_type && i.code_lo <= p.icmp_code && p.icmp_code <= i.code_hi))
                    ^ i.invert
        }
        Match::Multiport(mp) => {
            let hit = mp.ports.iter().any(|r| match mp.dir {
                MultiportDir::Source => r.contains(p.sport),
                MultiportDir::Destination => r.contains(p.dport),
                MultiportDir::Either => r.contains(p.sport) || r.contains(p.dport),
            });
            p.has_l4() && hit ^ mp.invert
        }
        Match::Iprange(r) => {
            let within = |o: &Option<Inv<(u32, u32)>>, a: u32| o.map_or(true, |i| (i.value.0 <= a && a <= i.value.1) ^ i.invert);
            within(&r.src, p.src) && within(&r.dst, p.dst)
        }
        Match::Conntrack(c) => conntrack_matches(c, p),
        Match::State(s) => ((s.state & (1 << p.ct_state)) != 0) ^ s.invert,
        Match::Comment(_) => true,
        Match::Mark(mm) => ((mark & mm.mask) == mm.mark) ^ mm.invert,
        Match::Addrtype(a) => addrtype_matches(addrtype_parts(a).0, addrtype_parts(a).1, p),
        Match::Length(l) => (l.lo <= p.length && p.length <= l.hi) ^ l.invert,
        Match::Ttl(t) => ttl_matches(t.op, t.value, p.ttl),
        Match::Mac(mm) => mac_matches(&mm.addr, mm.invert, p),
        Match::Pkttype(t) => (p.pkttype == t.pkttype) ^ t.invert,
        Match::Limit(l) => st.limits.entry(key).or_insert_with(|| Limiter::new(l.avg, l.burst, p.now)).pass(l.avg, l.burst, p.now),
        Match::Tos(t) => ((p.tos & t.mask) == t.value) ^ t.invert,
        Match::Dscp(d) => ((p.tos >> 2) == d.dscp) ^ d.invert,
        Match::Statistic(s) => match s.mode {
            StatisticMode::Random { probability } => random_pass(probability, s.invert, p),
            StatisticMode::Nth { every, packet } => nth_pass(st.nth.entry(key).or_default(), every, packet, s.invert),
        },
    }
}

/// The source and destination conditions of an addrtype match as `(types, invert)`.
pub fn addrtype_parts(a: &AddrtypeMatch) -> (Option<(u16, bool)>, Option<(u16, bool)>) {
    (a.src_type.map(|i| (i.value, i.invert)), a.dst_type.map(|i| (i.value, i.invert)))
}

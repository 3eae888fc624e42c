//! The classifier image: a `Compiled` ruleset laid out as the flat array of u64 slots the BPF
//! programs walk (layout documented at the top of `bpf/bpf_iptables.h`). Pure: no syscalls.
//!
//! Two resolutions happen here rather than in the programs: LPM prefixes become the disjoint
//! intervals they partition the address space into (each with the longest prefix's vector),
//! and interface-name patterns are resolved once per interface of the namespace, so the
//! programs look both up by binary search over (value -> vector) intervals, the interface
//! fields keyed by ifindex. An ifindex the image does not know (an interface created after
//! it was written, until `attach_new_interfaces` rewrites it) gets the vector of the
//! wildcard pattern only.

use std::borrow::Cow;

use anyhow::{anyhow, bail, Result};
use rustc_hash::FxHashMap as HashMap;

use super::skel::types::{
    bpfipt_action, bpfipt_addrtype_flags, bpfipt_check, bpfipt_const, bpfipt_ct_match, bpfipt_ctm_const, bpfipt_flow_key,
};
use crate::compile::tables::{Action, ActionKind, Check, Compiled, Field, FieldMap, Hook, HookTable, IfacePattern, Prefix, Vector};
use crate::compile::Inlined;
use crate::model::{Iface, TtlOp};

const fn k(c: bpfipt_const) -> usize {
    c.0 as usize
}

const HEADER: usize = k(bpfipt_const::BPFIPT_IMG_HEADER_SLOTS);
const HOOK0: usize = k(bpfipt_const::BPFIPT_IMG_SLOT_HOOK0);
const HOOK_SLOTS: usize = k(bpfipt_const::BPFIPT_IMG_HOOK_SLOTS);
const FIELD_SLOTS: usize = k(bpfipt_const::BPFIPT_IMG_FIELD_SLOTS);
const ACTION_SLOTS: usize = k(bpfipt_const::BPFIPT_IMG_ACTION_SLOTS);
const CHECK_SLOTS: usize = k(bpfipt_const::BPFIPT_IMG_CHECK_SLOTS);
const LOG_SLOTS: usize = k(bpfipt_const::BPFIPT_IMG_LOG_SLOTS);
const LOG_PREFIX: usize = k(bpfipt_const::BPFIPT_LOG_PREFIX);
const MAX_RULES: usize = k(bpfipt_const::BPFIPT_MAX_RULES);
const MAX_LEAD: usize = k(bpfipt_const::BPFIPT_IMG_MAX_LEAD);
const MAX_CHECKS: usize = k(bpfipt_const::BPFIPT_MAX_CHECKS);
const INDEX_MIN: usize = k(bpfipt_const::BPFIPT_IMG_INDEX_MIN);
const INDEX_CHILD: u64 = 1 << bpfipt_const::BPFIPT_IMG_INDEX_CHILD_BIT.0;
const IV_ALL: u32 = bpfipt_const::BPFIPT_IMG_IV_ALL.0;
const TAIL_CAP: usize = k(bpfipt_const::BPFIPT_IMG_TAIL_CAP);
const TAIL_PER: usize = k(bpfipt_const::BPFIPT_IMG_TAIL_PER);
const SLOT_LEN: usize = k(bpfipt_const::BPFIPT_IMG_SLOT_LEN);
const SLOT_FLAGS: usize = k(bpfipt_const::BPFIPT_IMG_SLOT_FLAGS);
const NO_RULE: u32 = bpfipt_const::BPFIPT_NO_RULE.0;
const TCP_RESET: u32 = bpfipt_const::BPFIPT_REJECT_TCP_RESET.0;
const CTM_SLOTS: usize = bpfipt_ctm_const::BPFIPT_IMG_CTM_SLOTS.0 as usize;
const INS_DEPTH_BITS: u32 = bpfipt_const::BPFIPT_IMG_INS_DEPTH_BITS.0;
const INS_MAX_DEPTH: u32 = bpfipt_const::BPFIPT_IMG_INS_MAX_DEPTH.0;
const A_ENTER: u32 = bpfipt_action::BPFIPT_A_ENTER.0;

/// The ifindexes (ranges) whose interface names pass every `(pattern, inverted)` literal in
/// `lits`: among `ifaces`, and the ifindexes of no interface of `ifaces` when no pattern but
/// `+` has to match, as `iface_intervals` resolves an ifindex it does not know (to the
/// wildcard pattern's vector).
fn iface_ranges(lits: &[(Iface, bool)], ifaces: &[IfaceName]) -> Vec<(u32, u32)> {
    let passes = |name: &str| lits.iter().all(|(i, inv)| i.matches(name) != *inv);
    let mut known: Vec<(u32, bool)> = ifaces.iter().map(|i| (i.ifindex, passes(&i.name))).collect();
    known.sort_unstable();
    let unknown_passes = lits.iter().all(|(i, inv)| *inv || (i.wildcard && i.name.is_empty()));
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut push = |lo: u64, hi: u64| match out.last_mut() {
        Some(l) if l.1 as u64 + 1 == lo => l.1 = hi as u32,
        _ => out.push((lo as u32, hi as u32)),
    };
    let mut next = 0u64;
    for (ifindex, pass) in known {
        let ifindex = ifindex as u64;
        if unknown_passes && ifindex > next {
            push(next, ifindex - 1);
        }
        if pass {
            push(ifindex, ifindex);
        }
        next = ifindex + 1;
    }
    if unknown_passes && next <= u32::MAX as u64 {
        push(next, u32::MAX as u64);
    }
    out
}

/// An interface of the namespace, as the image resolves `-i`/`-o` patterns against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceName {
    pub ifindex: u32,
    pub name: String,
}

fn pack(lo: u32, hi: u32) -> u64 {
    lo as u64 | (hi as u64) << 32
}

/// The two halves `pack` put in a slot, as indexes.
fn unpack(s: u64) -> (usize, usize) {
    (s as u32 as usize, (s >> 32) as usize)
}

/// A skeleton struct as the image slots it fills.
///
/// # Safety
/// `T` is a `#[repr(C)]` struct of integers without padding bytes of unknown value, exactly
/// `N` * 8 bytes long (checked).
unsafe fn struct_slots<T, const N: usize>(v: &T) -> [u64; N] {
    const { assert!(std::mem::size_of::<T>() == N * 8, "a struct of whole slots") };
    // SAFETY: the caller's contract; the size was checked.
    let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), N * 8) };
    let mut out = [0u64; N];
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *o = u64::from_ne_bytes(b.try_into().expect("8 bytes"));
    }
    out
}

/// Builds the image of `c` for the interfaces `ifaces`.
pub fn build(c: &Compiled, ifaces: &[IfaceName]) -> Result<Vec<u64>> {
    let mut img = vec![0u64; HEADER];
    img[0] = magic();

    // Vectors of every hook in one table; a hook's local VecId v is global id base + v. The
    // programs try a hook's lead (`lead_masks`) first and walk the vectors from past it, so the
    // lead's rules are left out of them, and a field only they constrain out of the image.
    let leads: Vec<Vec<u64>> = c.hooks.iter().map(lead_masks).collect();
    let mut bases = Vec::new();
    let mut all: Vec<Cow<[(u32, u64)]>> = Vec::new();
    for (h, lead) in c.hooks.iter().zip(&leads) {
        bases.push(all.len() as u32);
        all.extend(h.vectors.iter().map(|v| past_lead(v, lead.len())));
    }
    // About the image's size, reserved at once: grown a push at a time, 10 000 rules' image
    // was copied ~20 times on its way to 1.2 MB.
    let field_entries = |h: &HookTable| h.fields.iter().map(|f| f.map.entries()).sum::<usize>();
    img.reserve(
        all.iter().map(|w| 1 + 2 * w.len()).sum::<usize>()
            + c.hooks.iter().map(|h| (h.actions.len() + 2 * TAIL_CAP) * ACTION_SLOTS + 2 * field_entries(h)).sum::<usize>(),
    );
    let vectab = img.len();
    img.resize(vectab + all.len(), 0);
    for (i, words) in all.iter().enumerate() {
        img[vectab + i] = pack(img.len() as u32, words.len() as u32);
        for &(w, bits) in words.iter() {
            img.push(w as u64);
            img.push(bits);
        }
    }
    img[k(bpfipt_const::BPFIPT_IMG_SLOT_VECTAB)] = pack(vectab as u32, all.len() as u32);

    let logs = img.len();
    for l in &c.logs {
        let mut prefix = [0u8; LOG_PREFIX];
        let n = l.prefix.len().min(LOG_PREFIX - 1);
        prefix[..n].copy_from_slice(&l.prefix.as_bytes()[..n]);
        img.push(l.level as u64 | (l.flags as u64) << 8);
        for chunk in prefix.chunks(8) {
            img.push(u64::from_ne_bytes(chunk.try_into().expect("8 bytes")));
        }
    }
    debug_assert_eq!(img.len() - logs, c.logs.len() * LOG_SLOTS);
    img[k(bpfipt_const::BPFIPT_IMG_SLOT_LOGS)] = pack(logs as u32, c.logs.len() as u32);

    let states = img.len();
    img.resize(states + c.n_states as usize, 0);
    img[k(bpfipt_const::BPFIPT_IMG_SLOT_STATES)] = pack(states as u32, c.n_states);
    let ct_field = |h: &HookTable| h.fields.iter().any(|f| f.field == Field::CtState);
    img[SLOT_FLAGS] = c.hooks.iter().fold(0, |flags, h| flags | flags_for(&h.actions, ct_field(h)));

    for ((h, base), lead) in c.hooks.iter().zip(&bases).zip(&leads) {
        let hook = h.hook as usize;
        if h.actions.len() > MAX_RULES {
            bail!("{} has {} compiled rules; the datapath walks at most {MAX_RULES}", h.hook.chain_name(), h.actions.len());
        }
        let past = h.lbvs_rules as usize - lead.len().min(h.lbvs_rules as usize);
        let constraining: Vec<_> = h
            .fields
            .iter()
            .filter(|f| !covers(&[], &all[(base + f.wildcard) as usize], past))
            .collect();
        let fields = img.len();
        img.resize(fields + constraining.len() * FIELD_SLOTS, 0);
        for (i, f) in constraining.iter().enumerate() {
            let intervals = match &f.map {
                FieldMap::Prefixes(p) => prefix_intervals(p),
                FieldMap::Intervals(iv) => iv.iter().map(|&(lo, _, v)| (lo, v)).collect(),
                FieldMap::Ifaces(p) => iface_intervals(p, ifaces)?,
            };
            if intervals.first().map(|iv| iv.0) != Some(0) {
                bail!("field {:?} of {} does not cover its domain", f.field, h.hook.chain_name());
            }
            let wild = &all[(base + f.wildcard) as usize];
            let mut passes_all = HashMap::with_capacity_and_hasher(intervals.len(), Default::default());
            let off = img.len();
            for &(lo, v) in &intervals {
                let id = base + v;
                let flag = *passes_all.entry(id).or_insert_with(|| if covers(&all[id as usize], wild, past) { IV_ALL } else { 0 });
                img.push((lo as u64) << 32 | (id | flag) as u64);
            }
            let shift = top_shift(f.field);
            let index = if intervals.len() > INDEX_MIN {
                let los: Vec<u32> = intervals.iter().map(|iv| iv.0).collect();
                let mut budget = 4 * los.len() + 256;
                index_node(&los, 0, shift, &mut budget, &mut img)
            } else {
                0
            };
            let d = fields + i * FIELD_SLOTS;
            img[d] = f.field as u64 | (shift as u64) << 8 | (intervals.len() as u64) << 32;
            img[d + 1] = pack(off as u32, index as u32);
            img[d + 2] = (base + f.wildcard) as u64;
        }

        // Room for rules appended later (`append`), then for rules inserted (`insert`).
        let actions = img.len();
        img.resize(actions + (h.actions.len() + 2 * TAIL_CAP) * ACTION_SLOTS, 0);
        for (r, a) in h.actions.iter().enumerate() {
            if a.checks.len() > MAX_CHECKS {
                bail!("a rule of {} has {} residual checks; at most {MAX_CHECKS}", h.hook.chain_name(), a.checks.len());
            }
            let s = encode_action(a, &mut img, 0, ifaces);
            img[actions + r * ACTION_SLOTS..][..ACTION_SLOTS].copy_from_slice(&s);
        }

        let lead_off = img.len();
        img.extend(lead);

        let hs = HOOK0 + hook * HOOK_SLOTS;
        img[hs] = pack(h.actions.len() as u32, h.policy_accept as u32);
        img[hs + 1] = pack(actions as u32, h.lbvs_rules);
        img[hs + 2] = pack(fields as u32, constraining.len() as u32);
        img[hs + 3] = pack(lead_off as u32, lead.len() as u32);
        img[hs + 4] = 0;
        img[hs + 5] = (h.actions.len() + TAIL_CAP) as u64;
    }
    if img.len() > u32::MAX as usize / 2 {
        bail!("ruleset too large for the datapath ({} slots)", img.len());
    }
    img[SLOT_LEN] = img.len() as u64;
    Ok(img)
}

const F_CONNTRACK: u64 = bpfipt_const::BPFIPT_IMG_F_CONNTRACK.0 as u64;
const F_PASS_ALL: u64 = bpfipt_const::BPFIPT_IMG_F_PASS_ALL.0 as u64;
const F_TCP_OPTIONS: u64 = bpfipt_const::BPFIPT_IMG_F_TCP_OPTIONS.0 as u64;
const F_FLOW: u64 = bpfipt_const::BPFIPT_IMG_F_FLOW.0 as u64;
const F_FLOW_HOOKS: u64 = bpfipt_const::BPFIPT_IMG_F_FLOW_HOOKS.0 as u64;
const SLOT_FLOW_MASK: usize = k(bpfipt_const::BPFIPT_IMG_SLOT_FLOW_MASK);

/// Makes image `img` pass every packet, judging none (for a ruleset that passes all while the
/// programs stay attached: see `datapath::apply`).
pub fn mark_pass_all(img: &mut [u64]) {
    if let Some(flags) = img.get_mut(SLOT_FLAGS) {
        *flags |= F_PASS_ALL;
    }
}

/// Whether image `img` passes every packet (`mark_pass_all`): it enforces no ruleset with a
/// rule to patch.
pub fn passes_all(img: &[u64]) -> bool {
    img.get(SLOT_FLAGS).is_some_and(|f| f & F_PASS_ALL != 0)
}

/// Fills in the flow cache's part of image `img` (see `bpfipt_flows` in bpf_iptables.h): which
/// hooks judge a packet by its flow key alone, and the key's mask, from the rules the image
/// holds, so that rules added in place count as built ones. A hook is cached unless a rule of
/// it (reached or not) logs, marks, keeps state (limit, statistic) or matches what the key
/// leaves out (MAC address, TCP options, conntrack beyond the state); its residual checks and
/// fields add what they look at to the key. The addresses, protocol, TOS and interface are
/// always in it (the chain and the route follow from them); the ports only when a rule looks
/// at them or connections are tracked (and, added by the programs, while the FIB sees them),
/// so that the flows of one host to one service share an entry.
pub fn set_flow_header(img: &mut [u64]) {
    if img.len() < HEADER {
        return;
    }
    let mut key = bpfipt_flow_key {
        src: !0,
        dst: !0,
        ifindex: !0,
        proto: !0,
        tos: !0,
        prog: !0,
        frag: !0,
        ..Default::default()
    };
    if img[SLOT_FLAGS] & F_CONNTRACK != 0 {
        // The state, and what the state of a packet of no connection follows from: its
        // connection's tuple and a TCP packet's flags (an entry keyed "no connection" stands
        // for that state, flow.h).
        key.ct_state = !0;
        key.tcp_flags = !0;
        key.sport = !0;
        key.dport = !0;
    }
    let mut cached = 0;
    for hook in Hook::ALL {
        let hs = HOOK0 + hook as usize * HOOK_SLOTS;
        let (fields, n_fields) = unpack(img[hs + 2]);
        for d in (0..n_fields).filter_map(|i| img.get(fields + i * FIELD_SLOTS)) {
            key_field(&mut key, *d as u8);
        }
        let actions = img[hs + 1] as u32 as usize;
        let img: &[u64] = img;
        let ins = inserted(img, hook).map(|(_, a)| a);
        if (0..img[hs] as u32).chain(ins).all(|a| keyed_action(img, actions + a as usize * ACTION_SLOTS, &mut key)) {
            cached |= F_FLOW << hook as u32;
        }
    }
    img[SLOT_FLAGS] = img[SLOT_FLAGS] & !F_FLOW_HOOKS | cached;
    // SAFETY: bpfipt_flow_key is a repr(C) struct of integers without padding, 32 bytes.
    let mask: [u64; 4] = unsafe { struct_slots(&key) };
    img[SLOT_FLOW_MASK..SLOT_FLOW_MASK + 4].copy_from_slice(&mask);
}

/// Adds field `f` (a `Field`'s number) to the flow key where it is not always in it.
fn key_field(key: &mut bpfipt_flow_key, f: u8) {
    if f == Field::TcpFlags as u8 {
        key.tcp_flags = !0;
    } else if f == Field::Icmp as u8 {
        key.icmp = !0;
    } else if f == Field::Sport as u8 {
        key.sport = !0;
    } else if f == Field::Dport as u8 {
        key.dport = !0;
    }
}

/// Whether the action at slot `a` of `img` judges by the flow key alone, given what it adds
/// to the key.
fn keyed_action(img: &[u64], a: usize, key: &mut bpfipt_flow_key) -> bool {
    let (Some(&a0), Some(&a2)) = (img.get(a), img.get(a + 2)) else { return false };
    let kind = a0 as u32 & 0xff;
    if kind == bpfipt_action::BPFIPT_A_LOG.0 || kind == bpfipt_action::BPFIPT_A_MARK.0 {
        return false;
    }
    let (checks, n) = unpack(a2);
    (0..n).all(|i| {
        let Some(&c0) = img.get(checks + i * CHECK_SLOTS) else { return false };
        use bpfipt_check as C;
        match bpfipt_check(c0 as u32 & 0xff) {
            C::BPFIPT_C_MARK => key.mark = !0,
            C::BPFIPT_C_LENGTH => key.len = !0,
            C::BPFIPT_C_TTL => key.ttl = !0,
            C::BPFIPT_C_PKTTYPE => key.pkttype = !0,
            C::BPFIPT_C_FIELD_IN => key_field(key, (c0 >> 16) as u8),
            C::BPFIPT_C_PORT_EITHER => (key.sport, key.dport) = (!0, !0),
            C::BPFIPT_C_L4HDR
            | C::BPFIPT_C_FRAGMENT
            | C::BPFIPT_C_TOS
            | C::BPFIPT_C_DSCP
            | C::BPFIPT_C_ADDR_MASK
            | C::BPFIPT_C_ADDRTYPE => {}
            _ => return false,
        }
        true
    })
}

/// The slots of action `a`; its checks are appended to `img`, whose slot 0 is image slot
/// `base` (interface checks resolved against `ifaces`).
fn encode_action(a: &Action, img: &mut Vec<u64>, base: usize, ifaces: &[IfaceName]) -> [u64; ACTION_SLOTS] {
    let checks = img.len();
    img.resize(checks + a.checks.len() * CHECK_SLOTS, 0);
    for (i, ch) in a.checks.iter().enumerate() {
        let s = encode_check(ch, img, base, ifaces);
        img[checks + i * CHECK_SLOTS..checks + (i + 1) * CHECK_SLOTS].copy_from_slice(&s);
    }
    let (kind, arg0, arg1) = match a.kind {
        ActionKind::Accept => (bpfipt_action::BPFIPT_A_ACCEPT, 0, 0),
        ActionKind::Drop => (bpfipt_action::BPFIPT_A_DROP, 0, 0),
        ActionKind::Reject(w) => (bpfipt_action::BPFIPT_A_REJECT, w.icmp_code().map_or(TCP_RESET, u32::from), 0),
        ActionKind::Log(i) => (bpfipt_action::BPFIPT_A_LOG, i, 0),
        ActionKind::Mark { value, mask } => (bpfipt_action::BPFIPT_A_MARK, value, mask),
        ActionKind::Continue => (bpfipt_action::BPFIPT_A_CONTINUE, 0, 0),
        ActionKind::SkipTo { to, depth } => (bpfipt_action::BPFIPT_A_SKIP_TO, to, skip_floor(to, depth)),
        ActionKind::Enter { end, depth } => (bpfipt_action::BPFIPT_A_ENTER, end, skip_floor(end, depth)),
    };
    [pack(kind.0, a.rule_id.unwrap_or(NO_RULE)), pack(arg0, arg1), pack((base + checks) as u32, a.checks.len() as u32)]
}

/// The key of a rule inserted before compiled rule `before`, inside a chain inlined `depth`
/// jumps deep (see "inserted rules" in bpf_iptables.h): at one `before`, deeper first.
fn ins_key(before: u32, depth: u32) -> u32 {
    before << INS_DEPTH_BITS | (INS_MAX_DEPTH - depth)
}

/// The key of the first inserted rule a skip to the end `to` of a block `depth` deep does
/// not pass over: those of its block and the blocks in it all have lower keys. (Rules are
/// never inserted deeper than `INS_MAX_DEPTH`, so a deeper block skips as one that deep.)
fn skip_floor(to: u32, depth: u32) -> u32 {
    ins_key(to, depth.min(INS_MAX_DEPTH)) + 1
}

/// The bit the interval index of a field starts at: its top byte.
fn top_shift(f: Field) -> u32 {
    match f {
        Field::Src | Field::Dst | Field::InIface | Field::OutIface => 24,
        Field::Sport | Field::Dport | Field::Icmp => 8,
        Field::Proto | Field::TcpFlags | Field::CtState => 0,
    }
}

/// Appends the interval index node for the values `base..base + 256 << shift` of a field
/// whose sorted intervals start at `los` (`los[0]` = 0), returning its offset. A bucket
/// overlapping more than 8 intervals gets a child for its next 8 bits while `budget` (slots)
/// lasts; the programs bisect the rest.
fn index_node(los: &[u32], base: u64, shift: u32, budget: &mut usize, img: &mut Vec<u64>) -> usize {
    let off = img.len();
    img.resize(off + 256, 0);
    *budget = budget.saturating_sub(256);
    // The interval holding a bucket's `lo`, and the end of those starting at or below its
    // `hi`: both only move forward from bucket to bucket (two searches of every bucket were a
    // millisecond of a 10 000-rule image).
    let mut first = los.partition_point(|&l| l as u64 <= base) - 1;
    let mut end = first + 1;
    for b in 0..256u64 {
        let lo = base + (b << shift);
        let hi = lo + (1u64 << shift) - 1;
        while los.get(first + 1).is_some_and(|&l| l as u64 <= lo) {
            first += 1;
        }
        end = end.max(first + 1);
        while los.get(end).is_some_and(|&l| l as u64 <= hi) {
            end += 1;
        }
        img[off + b as usize] = if end - first > 8 && shift >= 8 && *budget >= 256 {
            INDEX_CHILD | index_node(los, lo, shift - 8, budget, img) as u64
        } else {
            pack(first as u32, (end - first) as u32)
        };
    }
    off
}

/// Slot 0 of an image of this layout.
pub fn magic() -> u64 {
    pack(bpfipt_const::BPFIPT_IMG_MAGIC.0, bpfipt_const::BPFIPT_IMG_VERSION.0)
}

/// How many compiled rules a hook takes appended (or inserted) in place, in an image of
/// `lbvs` LBVS rules in all: a rebuild recompiles every hook, so what a change saves by going
/// in place follows the whole image's size, not the hook's (Docker's few FORWARD rules beside
/// 10 000 in INPUT).
pub fn tail_room(lbvs: usize) -> usize {
    TAIL_CAP.min(lbvs / TAIL_PER)
}

/// The LBVS rules of `hook` in image `img` (its compiled rules past them were added in place).
fn hook_lbvs(img: &[u64], hook: Hook) -> usize {
    unpack(img[HOOK0 + hook as usize * HOOK_SLOTS + 1]).1
}

/// The LBVS rules of image `img`, all hooks together.
fn image_lbvs(img: &[u64]) -> usize {
    Hook::ALL.iter().map(|&h| hook_lbvs(img, h)).sum()
}

/// How many compiled rules `hook` has in image `img`.
pub fn hook_rules(img: &[u64], hook: Hook) -> Result<u32> {
    if img.len() < HEADER || img[0] != magic() {
        bail!("the installed classifier image has another layout");
    }
    Ok(img[HOOK0 + hook as usize * HOOK_SLOTS] as u32)
}

/// How many of `hook`'s compiled rules in image `img` were appended in place (past its LBVS
/// rules, walked in order).
pub fn hook_appended(img: &[u64], hook: Hook) -> Result<u32> {
    let n = hook_rules(img, hook)?;
    Ok(n.saturating_sub(hook_lbvs(img, hook) as u32))
}

/// An image derived from an installed one (rules appended or deleted in place): the old
/// image's first `keep` slots, then `extra`, with the slots `writes` changed.
#[derive(Debug)]
pub struct Patch {
    pub keep: usize,
    pub extra: Vec<u64>,
    pub writes: Vec<(usize, u64)>,
}

impl Patch {
    /// No change yet of an image of `used` slots.
    fn new(used: usize) -> Patch {
        Patch { keep: used, extra: Vec::new(), writes: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.keep + self.extra.len()
    }

    /// Writes the compiled `rules` as the actions from index `at` of a hook whose actions
    /// start at slot `actions` of `img`, their checks after the image (resolved against the
    /// namespace's interfaces `ifaces`).
    fn place_rules(&mut self, img: &[u64], actions: usize, at: usize, rules: &[Action], ifaces: &[IfaceName]) {
        for (j, a) in rules.iter().enumerate() {
            let s = encode_action(a, &mut self.extra, self.keep, ifaces);
            self.writes.extend((0..ACTION_SLOTS).map(|i| (actions + (at + j) * ACTION_SLOTS + i, s[i])));
        }
        // writes apply in order: the last one to the flags has them all
        let flags = self.writes.iter().rev().find(|w| w.0 == SLOT_FLAGS).map_or(img[SLOT_FLAGS], |w| w.1);
        self.writes.push((SLOT_FLAGS, flags | flags_for(rules, false)));
    }

    /// Writes the new image into `dst` (`len()` slots) from the old one, `img`.
    pub fn write(&self, img: &[u64], dst: &mut [u64]) {
        dst[..self.keep].copy_from_slice(&img[..self.keep]);
        dst[self.keep..].copy_from_slice(&self.extra);
        for &(i, v) in &self.writes {
            dst[i] = v;
        }
        dst[SLOT_LEN] = self.len() as u64;
    }
}

/// Appends compiled rules (`compile::compile_tail`) to `hook` of image `img` (as built by
/// `build`, possibly appended to before), in the room `build` left after the hook's actions.
/// `None` when they do not fit: a full rebuild is needed.
pub fn append(img: &[u64], hook: Hook, tail: &[Action], ifaces: &[IfaceName]) -> Result<Option<Patch>> {
    let n = hook_rules(img, hook)? as usize;
    let used = img[SLOT_LEN] as usize;
    let hs = HOOK0 + hook as usize * HOOK_SLOTS;
    let (actions, lbvs) = unpack(img[hs + 1]);
    if used > img.len()
        || n + tail.len() > lbvs + tail_room(image_lbvs(img))
        || n + tail.len() > MAX_RULES
        || tail.iter().any(|a| a.checks.len() > MAX_CHECKS)
    {
        return Ok(None);
    }
    let mut patch = Patch::new(used);
    patch.place_rules(img, actions, n, tail, ifaces);
    patch.writes.push((hs, (n + tail.len()) as u64 | img[hs] >> 32 << 32));
    Ok(Some(patch))
}

/// The inserted rules of `hook` in image `img`: its slots `(before, action)` (see "inserted
/// rules" in bpf_iptables.h).
fn inserted(img: &[u64], hook: Hook) -> impl Iterator<Item = (u32, u32)> + '_ {
    let ins = img[HOOK0 + hook as usize * HOOK_SLOTS + 4];
    let (off, n) = unpack(ins);
    img.get(off..off + n).unwrap_or_default().iter().map(|&e| (e as u32, (e >> 32) as u32))
}

/// Inserts compiled rules in place (see "inserted rules" in bpf_iptables.h): in each hook of
/// `places`, in each place it inlines the chain they were added to (`compile::Inlined`; for
/// a built-in chain, `compile::compile_tail` as the one place with an empty path), before
/// the chain's rule `before` (its id; the programs take them before the compiled rule that
/// rule starts at there, or before it when it was inserted itself) or at the end of the
/// chain's block (`-A` to a user chain); the compiled rules of `replaced` become no-ops, as
/// `delete` makes them. `None` when they do not fit (as many as `append` takes, per hook),
/// one of them jumps or returns (it would skip within the hook), a place or `before` is not
/// found, or `replaced` cannot be deleted in place: a full rebuild is needed.
pub fn insert(
    img: &[u64],
    places: &[(Hook, Vec<Inlined>)],
    before: Option<u32>,
    replaced: &[u32],
    ifaces: &[IfaceName],
) -> Result<Option<Patch>> {
    hook_rules(img, Hook::Input)?;
    let used = img[SLOT_LEN] as usize;
    if used > img.len() {
        return Ok(None);
    }
    let mut patch = Patch::new(used);
    for (hook, inlined) in places {
        if insert_in_hook(img, &mut patch, (*hook, inlined), before, replaced, ifaces)?.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(patch))
}

/// `insert` in one hook, into `patch`.
fn insert_in_hook(
    img: &[u64],
    patch: &mut Patch,
    (hook, places): (Hook, &[Inlined]),
    before: Option<u32>,
    replaced: &[u32],
    ifaces: &[IfaceName],
) -> Result<Option<()>> {
    let n = hook_rules(img, hook)? as usize;
    let used = patch.keep;
    let hs = HOOK0 + hook as usize * HOOK_SLOTS;
    let (actions, _) = unpack(img[hs + 1]);
    let room = img[hs + 5] as usize;
    let list: Vec<(u32, u32)> = inserted(img, hook).collect();
    let rules = places.iter().flat_map(|p| &p.actions);
    let flows = |a: &Action| matches!(a.kind, ActionKind::SkipTo { .. } | ActionKind::Enter { .. });
    if list.len() + rules.clone().count() > tail_room(image_lbvs(img))
        || n >= MAX_RULES
        || actions + (n.max(room + TAIL_CAP)) * ACTION_SLOTS > used
        || rules.clone().any(|a| a.checks.len() > MAX_CHECKS || flows(a))
    {
        return Ok(None);
    }
    let Some(deleted) = delete_in_hook(img, hook, replaced)? else { return Ok(None) };
    patch.writes.extend(deleted.writes);
    // (index in the list it goes at, key, action) of each new entry
    let mut entries = Vec::new();
    let mut next = room + list.len();
    for place in places.iter().filter(|p| !p.actions.is_empty()) {
        let Some((at, key)) = spot(img, actions, n as u32, &list, place, before) else { return Ok(None) };
        patch.place_rules(img, actions, next, &place.actions, ifaces);
        entries.extend((next..next + place.actions.len()).map(|a| (at, key, a as u32)));
        next += place.actions.len();
    }
    entries.sort_by_key(|e| e.0);
    let mut merged = Vec::with_capacity(list.len() + entries.len());
    let mut new = entries.iter().peekable();
    for i in 0..=list.len() {
        while let Some(&(_, key, a)) = new.next_if(|e| e.0 == i) {
            merged.push((key, a));
        }
        merged.extend(list.get(i));
    }
    patch.writes.push((hs + 4, pack(patch.len() as u32, merged.len() as u32)));
    patch.extra.extend(merged.iter().map(|&(k, a)| pack(k, a)));
    Ok(Some(()))
}

/// Where the rules of `place` go in the list `list` of inserted rules of a hook of `n`
/// compiled rules whose actions start at slot `actions`: the index they go at (after those
/// already due at the same point) and their key. `None` when the place or the rule `before`
/// is not in the image.
fn spot(img: &[u64], actions: usize, n: u32, list: &[(u32, u32)], place: &Inlined, before: Option<u32>) -> Option<(usize, u32)> {
    let action = |r: u32| &img[actions + r as usize * ACTION_SLOTS..][..ACTION_SLOTS];
    let id = |r: u32| (action(r)[0] >> 32) as u32;
    // the chain's block: the compiled rules after the last jump's, up to its end
    let (mut lo, mut hi) = (0, n);
    for &(jump, copy) in &place.path {
        let at = (lo..hi).filter(|&r| id(r) == jump && action(r)[0] as u32 == A_ENTER).nth(copy as usize)?;
        (lo, hi) = (at + 1, (action(at)[1] as u32).min(n));
    }
    // a goto's block ends with the rule that returns for the chain
    if place.goto {
        hi = hi.checked_sub(1)?;
    }
    let depth = place.path.len() as u32;
    if depth > INS_MAX_DEPTH {
        return None;
    }
    let at_key = |key: u32| Some((list.partition_point(|&(k, _)| k <= key), key));
    let Some(before) = before else { return at_key(ins_key(hi, depth)) };
    // `before` was inserted itself (in this block), or is compiled in it
    let here = |k: u32| (lo..=hi).contains(&(k >> INS_DEPTH_BITS));
    if let Some(i) = list.iter().position(|&(k, a)| id(a) == before && here(k)) {
        return Some((i, list[i].0));
    }
    at_key(ins_key((lo..hi).find(|&r| id(r) == before)?, depth))
}

/// Turns the compiled rules that came from rules `ids` (inserted or not, in any hook) into
/// no-ops that count nothing (`-D`): every rule after them is compiled already, unless a
/// deleted rule jumped to a chain (its inlined body would stay) or always ended its chain's
/// walk (what follows it is not compiled), which the caller rules out. `None` when a compiled
/// rule of `ids` enters an inlined chain: a full rebuild is needed.
pub fn delete(img: &[u64], ids: &[u32]) -> Result<Option<Patch>> {
    let mut patch = Patch::new(img[SLOT_LEN] as usize);
    for hook in Hook::ALL {
        let Some(p) = delete_in_hook(img, hook, ids)? else { return Ok(None) };
        patch.writes.extend(trimmed(img, hook, &p.writes));
        patch.writes.extend(p.writes);
    }
    Ok(Some(patch))
}

/// `delete` in `hook`.
fn delete_in_hook(img: &[u64], hook: Hook, ids: &[u32]) -> Result<Option<Patch>> {
    let n = hook_rules(img, hook)? as usize;
    let used = img[SLOT_LEN] as usize;
    let hs = HOOK0 + hook as usize * HOOK_SLOTS;
    let actions = img[hs + 1] as u32 as usize;
    let room = img[hs + 5] as usize;
    if used > img.len() || actions + n.max(room + TAIL_CAP) * ACTION_SLOTS > used {
        return Ok(None);
    }
    let mut writes = Vec::new();
    let compiled = (0..n).chain(inserted(img, hook).map(|(_, a)| a as usize));
    for a in compiled.map(|r| actions + r * ACTION_SLOTS) {
        if !ids.contains(&((img[a] >> 32) as u32)) {
            continue;
        }
        if img[a] as u32 == bpfipt_action::BPFIPT_A_ENTER.0 {
            return Ok(None);
        }
        writes.push((a, NOOP));
        writes.push((a + 1, 0));
        writes.push((a + 2, 0)); // no checks: nothing to evaluate, no limit or nth state to spend
    }
    Ok(Some(Patch { keep: used, extra: Vec::new(), writes }))
}

/// After `writes` (deletions in `hook`): appended rules that are no-ops at the end of the hook
/// give their room back, so that rules appended and deleted again (`-A`, then `-D`) do not use
/// it up and force a rebuild. Not while rules are inserted (their places are indices of
/// these) or an appended rule inlines a chain (a block whose end is an index).
fn trimmed(img: &[u64], hook: Hook, writes: &[(usize, u64)]) -> Option<(usize, u64)> {
    let hs = HOOK0 + hook as usize * HOOK_SLOTS;
    let n = img[hs] as u32 as usize;
    let (actions, lbvs) = unpack(img[hs + 1]);
    let action = |r: usize| img.get(actions + r * ACTION_SLOTS).copied();
    let noop = |r: usize| action(r) == Some(NOOP) || writes.contains(&(actions + r * ACTION_SLOTS, NOOP));
    if inserted(img, hook).next().is_some() || (lbvs..n).any(|r| action(r).is_some_and(|a| a as u32 == bpfipt_action::BPFIPT_A_ENTER.0)) {
        return None;
    }
    let mut kept = n;
    while kept > lbvs && noop(kept - 1) {
        kept -= 1;
    }
    // the slot's high half is the policy
    (kept < n).then(|| (hs, pack(kept as u32, (img[hs] >> 32) as u32)))
}

/// A compiled rule that does nothing (a rule deleted in place).
const NOOP: u64 = bpfipt_action::BPFIPT_A_CONTINUE.0 as u64 | (NO_RULE as u64) << 32;

/// Sets the policies of hooks in image `img` (true: accept): one slot each. `None` when the
/// image is not whole.
pub fn set_policies(img: &[u64], policies: &[(Hook, bool)]) -> Result<Option<Patch>> {
    hook_rules(img, Hook::Input)?;
    let used = img[SLOT_LEN] as usize;
    if used > img.len() {
        return Ok(None);
    }
    let writes = policies
        .iter()
        .map(|&(h, accept)| {
            let hs = HOOK0 + h as usize * HOOK_SLOTS;
            (hs, pack(img[hs] as u32, accept as u32))
        })
        .collect();
    Ok(Some(Patch { keep: used, extra: Vec::new(), writes }))
}

/// The leading compiled rules of a hook that constrain nothing but the conntrack state and
/// have no residual checks, each as the mask of the `Field::CtState` values it accepts (bit
/// v: value v). `-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT` heads most firewalls:
/// the programs try these rules before any field lookup, so that the bulk of the traffic,
/// established packets, skips LBVS altogether.
fn lead_masks(h: &HookTable) -> Vec<u64> {
    let has = |v: u32, r: usize| -> bool {
        let words = &h.vectors[v as usize].words;
        words.binary_search_by_key(&((r / 64) as u32), |w| w.0).is_ok_and(|i| words[i].1 >> (r % 64) & 1 == 1)
    };
    let mut out = Vec::new();
    'rules: for (r, a) in h.actions.iter().enumerate().take(MAX_LEAD) {
        if !a.checks.is_empty() {
            break;
        }
        let mut mask = u64::MAX;
        for f in &h.fields {
            if has(f.wildcard, r) {
                continue;
            }
            let (Field::CtState, FieldMap::Intervals(iv)) = (f.field, &f.map) else { break 'rules };
            mask = iv
                .iter()
                .filter(|&&(_, _, v)| has(v, r))
                .flat_map(|&(lo, hi, _)| lo.min(64)..=hi.min(63))
                .fold(0, |m, v| m | 1 << v);
        }
        out.push(mask);
    }
    out
}

/// The words of `v` without the bits of its first `n` rules (the lead).
fn past_lead(v: &Vector, n: usize) -> Cow<'_, [(u32, u64)]> {
    let low = |w: u32| -> u64 {
        let from = (w as usize * 64).min(n);
        let to = (w as usize * 64 + 64).min(n);
        if to > from { (u64::MAX >> (64 - (to - from))) << (from % 64) } else { 0 }
    };
    if !v.words.iter().take_while(|w| (w.0 as usize) * 64 < n).any(|&(w, bits)| bits & low(w) != 0) {
        return Cow::Borrowed(&v.words);
    }
    Cow::Owned(v.words.iter().map(|&(w, bits)| (w, bits & !low(w))).filter(|w| w.1 != 0).collect())
}

/// Whether vector `v` and wildcard `w` (sorted word lists, disjoint or not) together hold
/// `n` rules, i.e. all of them: the vectors only hold rules past the lead.
fn covers(v: &[(u32, u64)], w: &[(u32, u64)], n: usize) -> bool {
    if (v.len() + w.len()) * 64 < n {
        return false;
    }
    let (mut i, mut j, mut count) = (0, 0, 0usize);
    loop {
        // the next word of either list, both when they have the same index
        let bits = match (v.get(i), w.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                (i, j) = (i + 1, j + 1);
                a.1 | b.1
            }
            (Some(a), Some(b)) if b.0 < a.0 => {
                j += 1;
                b.1
            }
            (Some(a), _) => {
                i += 1;
                a.1
            }
            (None, Some(b)) => {
                j += 1;
                b.1
            }
            (None, None) => break,
        };
        count += bits.count_ones() as usize;
    }
    count == n
}

/// The IMG_SLOT_FLAGS bits `actions` call for (`ct_field`: a field on conntrack state):
/// tracking is on once a rule looks at conntrack state, TCP options are read once a rule
/// checks them.
fn flags_for(actions: &[Action], ct_field: bool) -> u64 {
    let checks = || actions.iter().flat_map(|a| &a.checks);
    let ct = ct_field || checks().any(|ch| matches!(ch, Check::Conntrack(_) | Check::FieldIn { field: Field::CtState, .. }));
    let opts = checks().any(|ch| matches!(ch, Check::TcpOption { .. }));
    (if ct { F_CONNTRACK } else { 0 }) | (if opts { F_TCP_OPTIONS } else { 0 })
}

/// `struct bpfipt_ct_match` as image slots.
fn ct_match_slots(m: &bpfipt_ct_match) -> [u64; CTM_SLOTS] {
    // SAFETY: bpfipt_ct_match is a repr(C) struct of integers without padding bytes of
    // unknown value (its explicit `pad` is part of it), exactly CTM_SLOTS * 8 bytes long.
    unsafe { struct_slots(m) }
}

/// The three slots of one check; lists (ranges, conntrack matches) are appended to `img`,
/// whose slot 0 is image slot `base`.
fn encode_check(c: &Check, img: &mut Vec<u64>, base: usize, ifaces: &[IfaceName]) -> [u64; CHECK_SLOTS] {
    let s0 = |kind: bpfipt_check, invert: bool, field: u32, op: u32, a: u32| {
        kind.0 as u64 | (invert as u64) << 8 | (field as u64 & 0xff) << 16 | (op as u64 & 0xff) << 24 | (a as u64) << 32
    };
    let mut ranges = |rs: &[(u32, u32)]| {
        let off = (base + img.len()) as u32;
        img.extend(rs.iter().map(|&(lo, hi)| (lo as u64) << 32 | hi as u64));
        (off, rs.len() as u64)
    };
    use bpfipt_check as C;
    match c {
        Check::L4Header => [s0(C::BPFIPT_C_L4HDR, false, 0, 0, 0), 0, 0],
        Check::Fragment(f) => [s0(C::BPFIPT_C_FRAGMENT, *f, 0, 0, 0), 0, 0],
        Check::Mark { value, mask, invert } => [s0(C::BPFIPT_C_MARK, *invert, 0, 0, *value), *mask as u64, 0],
        Check::Length { lo, hi, invert } => [s0(C::BPFIPT_C_LENGTH, *invert, 0, 0, *lo as u32), *hi as u64, 0],
        Check::Ttl { op, value } => {
            let op = match op {
                TtlOp::Eq => 0,
                TtlOp::Ne => 1,
                TtlOp::Lt => 2,
                TtlOp::Gt => 3,
            };
            [s0(C::BPFIPT_C_TTL, false, 0, op, *value as u32), 0, 0]
        }
        Check::Tos { value, mask, invert } => [s0(C::BPFIPT_C_TOS, *invert, 0, 0, *value as u32), *mask as u64, 0],
        Check::Dscp { value, invert } => [s0(C::BPFIPT_C_DSCP, *invert, 0, 0, *value as u32), 0, 0],
        Check::Pkttype { pkttype, invert } => [s0(C::BPFIPT_C_PKTTYPE, *invert, 0, 0, *pkttype as u32), 0, 0],
        Check::MacSource { addr, invert } => {
            let b = addr.iter().rev().fold(0u64, |m, &x| m << 8 | x as u64);
            [s0(C::BPFIPT_C_MAC, *invert, 0, 0, 0), b, 0]
        }
        Check::TcpOption { kind, invert } => [s0(C::BPFIPT_C_TCPOPT, *invert, 0, 0, *kind as u32), 0, 0],
        Check::Limit { state, avg, burst } => [s0(C::BPFIPT_C_LIMIT, false, 0, 0, *state), pack(*avg, *burst), 0],
        Check::StatisticRandom { probability, invert } => {
            [s0(C::BPFIPT_C_RANDOM, *invert, 0, 0, *probability), 0, 0]
        }
        Check::StatisticNth { state, every, packet, invert } => {
            [s0(C::BPFIPT_C_NTH, *invert, 0, 0, *state), pack(*every, *packet), 0]
        }
        Check::FieldIn { field, ranges: rs } => {
            let (off, n) = ranges(rs);
            [s0(C::BPFIPT_C_FIELD_IN, false, *field as u32, 0, off), n, 0]
        }
        Check::Ifaces { out, lits } => {
            let field = if *out { Field::OutIface } else { Field::InIface };
            let (off, n) = ranges(&iface_ranges(lits, ifaces));
            [s0(C::BPFIPT_C_FIELD_IN, false, field as u32, 0, off), n, 0]
        }
        Check::PortEither { ranges: rs } => {
            let (off, n) = ranges(rs);
            [s0(C::BPFIPT_C_PORT_EITHER, false, 0, 0, off), n, 0]
        }
        Check::AddrMask { field, value, mask, invert } => {
            [s0(C::BPFIPT_C_ADDR_MASK, *invert, *field as u32, 0, *value), *mask as u64, 0]
        }
        Check::Addrtype { src, dst, limit_iface_in, limit_iface_out } => {
            use bpfipt_addrtype_flags as F;
            let flag = |on: bool, f: F| if on { f.0 } else { 0 };
            let types = src.map_or(0, |s| s.0 as u32) | dst.map_or(0, |d| d.0 as u32) << 16;
            let flags = flag(src.is_some_and(|s| s.1), F::BPFIPT_AT_INVERT_SRC)
                | flag(dst.is_some_and(|d| d.1), F::BPFIPT_AT_INVERT_DST)
                | flag(*limit_iface_in, F::BPFIPT_AT_LIMIT_IN)
                | flag(*limit_iface_out, F::BPFIPT_AT_LIMIT_OUT);
            [s0(C::BPFIPT_C_ADDRTYPE, false, 0, 0, types), flags as u64, 0]
        }
        Check::Conntrack(m) => {
            let off = (base + img.len()) as u32;
            img.extend(ct_match_slots(&crate::conntrack::encode_match(m)));
            [s0(C::BPFIPT_C_CONNTRACK, false, 0, 0, off), 0, 0]
        }
    }
}

/// The partition of the address space by longest matching prefix: sorted `(lo, vector)`
/// intervals, adjacent equal vectors merged. `prefixes` contains 0.0.0.0/0.
fn prefix_intervals(prefixes: &[(Prefix, u32)]) -> Vec<(u32, u32)> {
    let end = |p: &Prefix| p.addr as u64 + (1u64 << (32 - p.len as u32)) - 1;
    let mut sorted: Vec<&(Prefix, u32)> = prefixes.iter().collect();
    sorted.sort_by_key(|(p, _)| (p.addr, p.len));
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut emit = |lo: u64, v: u32| {
        if out.last().map(|l| l.1) != Some(v) {
            out.push((lo as u32, v));
        }
    };
    // Prefixes are nested or disjoint: a stack of the ones covering the sweep position.
    let mut stack: Vec<(u64, u32)> = Vec::new();
    let mut cur = 0u64;
    for (p, v) in sorted {
        let start = p.addr as u64;
        while let Some(&(top_end, top_v)) = stack.last() {
            if top_end >= start {
                break;
            }
            if cur <= top_end {
                emit(cur, top_v);
                cur = top_end + 1;
            }
            stack.pop();
        }
        if let Some(&(_, top_v)) = stack.last() {
            if cur < start {
                emit(cur, top_v);
            }
        }
        cur = start;
        stack.push((end(p), *v));
    }
    while let Some((top_end, top_v)) = stack.pop() {
        if cur <= top_end {
            emit(cur, top_v);
            cur = top_end + 1;
        }
    }
    out
}

/// The bytes a pattern matches as a prefix of `name` + NUL (see `IfacePattern`).
fn pattern_key(p: &IfacePattern) -> Vec<u8> {
    let mut k = p.name.clone();
    if p.exact {
        k.push(0);
    }
    k
}

/// Interface fields keyed by ifindex: each interface gets the vector of the longest pattern
/// its name matches; unknown ifindexes the wildcard (empty) pattern's.
fn iface_intervals(patterns: &[(IfacePattern, u32)], ifaces: &[IfaceName]) -> Result<Vec<(u32, u32)>> {
    let resolve = |name: &[u8]| {
        patterns
            .iter()
            .filter(|(p, _)| name.starts_with(&pattern_key(p)))
            .max_by_key(|(p, _)| pattern_key(p).len())
            .map(|e| e.1)
    };
    let default = resolve(b"").ok_or_else(|| anyhow!("interface patterns lack the wildcard default"))?;
    let mut sorted: Vec<&IfaceName> = ifaces.iter().collect();
    sorted.sort_by_key(|i| i.ifindex);
    // Each interface's own interval, then the default up to the next one; an interface at
    // the previous one's ifindex + 1 replaces that default.
    let mut out: Vec<(u32, u32)> = vec![(0, default)];
    let mut put = |lo: u32, v: u32| match out.last_mut() {
        Some(l) if l.0 == lo => l.1 = v,
        _ => out.push((lo, v)),
    };
    for i in sorted {
        let mut key = i.name.as_bytes().to_vec();
        key.push(0);
        put(i.ifindex, resolve(&key).unwrap_or(default));
        if let Some(next) = i.ifindex.checked_add(1) {
            put(next, default);
        }
    }
    out.dedup_by(|b, a| a.1 == b.1);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pfx(a: [u8; 4], len: u8) -> Prefix {
        Prefix { addr: u32::from_be_bytes(a), len }
    }

    #[test]
    fn prefixes_partition_by_longest_match() {
        let p = vec![(pfx([0, 0, 0, 0], 0), 0), (pfx([10, 0, 0, 0], 8), 1), (pfx([10, 1, 0, 0], 16), 2), (pfx([11, 0, 0, 0], 8), 3)];
        let iv = prefix_intervals(&p);
        let ip = |a: [u8; 4]| u32::from_be_bytes(a);
        assert_eq!(
            iv,
            vec![(0, 0), (ip([10, 0, 0, 0]), 1), (ip([10, 1, 0, 0]), 2), (ip([10, 2, 0, 0]), 1), (ip([11, 0, 0, 0]), 3), (ip([12, 0, 0, 0]), 0)]
        );
        let host = vec![(pfx([0, 0, 0, 0], 0), 0), (pfx([255, 255, 255, 255], 32), 1)];
        assert_eq!(prefix_intervals(&host), vec![(0, 0), (u32::MAX, 1)]);
        let all = vec![(pfx([0, 0, 0, 0], 0), 7)];
        assert_eq!(prefix_intervals(&all), vec![(0, 7)]);
    }

    /// The leading rules on conntrack state alone become masks of ct_state values (bit
    /// index = the `ct_state` bit), up to the first rule that looks at anything else.
    #[test]
    fn leading_conntrack_rules_become_state_masks() {
        use crate::model::*;
        let rule = |ip: IpHeader, matches: Vec<Match>, target: Target| Rule { id: Rule::UNASSIGNED, ip, matches, target, counters: Counters::default() };
        let state = |bits: u16| Match::State(StateMatch { state: bits, invert: false });
        let mut rs = Ruleset::default();
        let input = rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT");
        for (id, mut r) in [
            rule(IpHeader::default(), vec![state(ct_state::ESTABLISHED | ct_state::RELATED)], Target::Accept),
            rule(IpHeader::default(), vec![state(ct_state::INVALID)], Target::Drop),
            rule(IpHeader { proto: Some(Inv::new(6, false)), ..Default::default() }, vec![state(ct_state::NEW)], Target::Accept),
            rule(IpHeader::default(), vec![state(ct_state::NEW)], Target::Drop),
        ]
        .into_iter()
        .enumerate()
        {
            r.id = id as u32;
            input.rules.push(r);
        }
        let c = crate::compile::compile(&rs).expect("compiles");
        let bit = |s: u16| 1u64 << s.trailing_zeros();
        assert_eq!(lead_masks(&c.hooks[0]), vec![bit(ct_state::ESTABLISHED) | bit(ct_state::RELATED), bit(ct_state::INVALID)]);
        // Without a conntrack rule in front there is no lead; a rule without matches leads.
        assert!(lead_masks(&c.hooks[1]).is_empty());
        let mut rs = Ruleset::default();
        let fwd = rs.table_mut(TableKind::Filter).chain_mut("FORWARD").expect("FORWARD");
        fwd.rules.push(Rule { id: 0, ..rule(IpHeader::default(), vec![], Target::Accept) });
        let c = crate::compile::compile(&rs).expect("compiles");
        assert_eq!(lead_masks(&c.hooks[1]), vec![u64::MAX]);
    }

    /// The lead's rules are out of the vectors (the programs walk them from past the lead),
    /// and a field only the lead constrains is out of the image: here the conntrack state,
    /// while protocol, port and source stay.
    #[test]
    fn the_lead_stays_out_of_the_vectors() {
        use crate::model::*;
        let rule = |ip: IpHeader, matches: Vec<Match>, target: Target| Rule { id: Rule::UNASSIGNED, ip, matches, target, counters: Counters::default() };
        let state = |bits: u16| Match::State(StateMatch { state: bits, invert: false });
        let tcp = IpHeader { proto: Some(Inv::new(6, false)), ..Default::default() };
        let dport = Match::Tcp(TcpMatch { dport: Some(Inv::new(PortRange { lo: 22, hi: 22 }, false)), ..Default::default() });
        let src = IpHeader { src: Some(Inv::new(Ipv4Mask::new(0x0a00_0001, u32::MAX), false)), ..Default::default() };
        let mut rs = Ruleset::default();
        let input = rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT");
        for (id, mut r) in [
            rule(IpHeader::default(), vec![state(ct_state::ESTABLISHED | ct_state::RELATED)], Target::Accept),
            rule(IpHeader::default(), vec![state(ct_state::INVALID)], Target::Drop),
            rule(tcp, vec![dport], Target::Accept),
            rule(src, vec![], Target::Drop),
        ]
        .into_iter()
        .enumerate()
        {
            r.id = id as u32;
            input.rules.push(r);
        }
        let c = crate::compile::compile(&rs).expect("compiles");
        let h = &c.hooks[0];
        assert_eq!(h.hook, Hook::Input);
        assert!(h.fields.iter().any(|f| f.field == Field::CtState), "compiled with the state as a field");
        let img = build(&c, &[]).expect("image");
        let hs = HOOK0 + Hook::Input as usize * HOOK_SLOTS;
        assert_eq!(img[hs + 3] >> 32, 2, "two lead rules");
        let (fields, n) = unpack(img[hs + 2]);
        let mut kept: Vec<u64> = (0..n).map(|i| img[fields + i * FIELD_SLOTS] & 0xff).collect();
        kept.sort_unstable();
        let mut want: Vec<u64> = h.fields.iter().filter(|f| f.field != Field::CtState).map(|f| f.field as u64).collect();
        want.sort_unstable();
        assert_eq!(kept, want);
        let vt = img[k(bpfipt_const::BPFIPT_IMG_SLOT_VECTAB)];
        for v in 0..(vt >> 32) as usize {
            let e = img[vt as u32 as usize + v];
            for w in 0..(e >> 32) as usize {
                let at = e as u32 as usize + 2 * w;
                assert!(img[at] != 0 || img[at + 1] & 0b11 == 0, "vector {v} holds a lead rule");
                assert_ne!(img[at + 1], 0, "an empty word");
            }
        }
    }

    /// The interval index narrows every value to a range of intervals that holds the one
    /// containing it, as the programs walk it (bpf/lbvs.h, setup_field).
    #[test]
    fn interval_index_narrows_to_the_right_interval() {
        let mut g = crate::testutil::SplitMix64(42);
        for (field, max) in [(Field::Src, u32::MAX as u64), (Field::Dport, 65535), (Field::Proto, 255)] {
            for n in [40usize, 300, 5000] {
                let mut los: Vec<u32> = (0..n).map(|_| (g.next() % (max + 1)) as u32).collect();
                // clusters, as real rulesets have (many hosts of one subnet, many ports)
                los.extend((0..n as u32).map(|i| (max as u32 / 3).wrapping_add(i * 3) & max as u32));
                los.push(0);
                los.sort_unstable();
                los.dedup();
                let mut img = vec![0u64; 8];
                let shift = top_shift(field);
                let mut budget = 4 * los.len() + 256;
                let root = index_node(&los, 0, shift, &mut budget, &mut img);
                let probes = los.iter().flat_map(|&l| [l, l.wrapping_sub(1), l.saturating_add(1)]).chain((0..2000).map(|_| (g.next() % (max + 1)) as u32));
                for v in probes.map(|v| v & max as u32) {
                    let (mut node, mut sh, mut lo, mut hi) = (root, shift, 0usize, los.len());
                    for _ in 0..4 {
                        let e = img[node + ((v >> sh) & 0xff) as usize];
                        if e & INDEX_CHILD == 0 {
                            (lo, hi) = (e as u32 as usize, (e as u32 + (e >> 32) as u32) as usize);
                            break;
                        }
                        node = e as u32 as usize;
                        sh -= 8;
                    }
                    let want = los.partition_point(|&l| l <= v) - 1;
                    assert!(lo <= want && want < hi && los[lo] <= v, "{field:?} v={v}: [{lo}, {hi}) misses {want}");
                    assert!(hi - lo <= 8 || budget < 256 || sh == 0, "{field:?} v={v}: {} intervals left to bisect", hi - lo);
                }
            }
        }
    }

    #[test]
    fn covers_counts_the_union_of_vector_and_wildcard() {
        // 70 rules: words 0 (64 rules) and 1 (6 rules)
        let full0 = (0, u64::MAX);
        let w1 = (1, 0b11_1111);
        assert!(covers(&[full0, w1], &[], 70));
        assert!(covers(&[full0], &[w1], 70));
        assert!(covers(&[(0, u64::MAX >> 1), w1], &[(0, 1 << 63)], 70));
        // overlapping bits count once
        assert!(!covers(&[(0, u64::MAX >> 1), w1], &[(0, 1), (1, 1)], 70));
        assert!(!covers(&[full0], &[(1, 0b1_1111)], 70));
        assert!(!covers(&[], &[], 1));
        assert!(covers(&[], &[], 0));
    }

    #[test]
    fn interface_checks_resolve_as_the_vectors_do() {
        let ifaces: Vec<IfaceName> =
            [(1, "lo"), (2, "eth0"), (3, "eth1"), (7, "veth9")].map(|(ifindex, n)| IfaceName { ifindex, name: n.into() }).to_vec();
        let lit = |name: &str, wildcard, inv| (Iface { name: name.into(), wildcard }, inv);
        // a positive pattern: only the interfaces it names, never one the image does not know
        assert_eq!(iface_ranges(&[lit("eth", true, false)], &ifaces), [(2, 3)]);
        assert_eq!(iface_ranges(&[lit("eth", true, false), lit("eth1", false, true)], &ifaces), [(2, 2)]);
        // negative ones only: every ifindex but those they name, unknown ones included
        assert_eq!(iface_ranges(&[lit("eth0", false, true)], &ifaces), [(0, 1), (3, u32::MAX)]);
        assert_eq!(iface_ranges(&[lit("", true, false), lit("veth9", false, true)], &ifaces), [(0, 6), (8, u32::MAX)]);
        assert_eq!(iface_ranges(&[lit("wlan0", false, false)], &ifaces), []);
    }

    #[test]
    fn interfaces_resolve_by_longest_pattern() {
        let pat = |n: &str, exact| IfacePattern { name: n.as_bytes().to_vec(), exact };
        let p = vec![(pat("", false), 0), (pat("eth", false), 1), (pat("eth0", true), 2)];
        let ifs = vec![
            IfaceName { ifindex: 1, name: "lo".into() },
            IfaceName { ifindex: 2, name: "eth0".into() },
            IfaceName { ifindex: 3, name: "eth01".into() },
            IfaceName { ifindex: 7, name: "eth1".into() },
        ];
        assert_eq!(iface_intervals(&p, &ifs).expect("resolves"), vec![(0, 0), (2, 2), (3, 1), (4, 0), (7, 1), (8, 0)]);
    }

    /// The flow cache's header, as the installer sets it: (hooks cached, the key's mask).
    fn flow_header(img: &mut [u64]) -> (Vec<Hook>, bpfipt_flow_key) {
        set_flow_header(img);
        let hooks = Hook::ALL.into_iter().filter(|h| img[SLOT_FLAGS] & F_FLOW << *h as u32 != 0).collect();
        let bytes: Vec<u8> = img[SLOT_FLOW_MASK..SLOT_FLOW_MASK + 4].iter().flat_map(|w| w.to_ne_bytes()).collect();
        // SAFETY: 32 bytes read as the plain-integer struct they were written from.
        (hooks, unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
    }

    /// A hook is cached unless one of its rules keeps state or has side effects; the key
    /// takes what some rule looks at beyond the addresses, ports, protocol, interface, TOS and
    /// fragment bits it always holds; rules appended in place count as built ones.
    #[test]
    fn flow_cache_header_follows_the_rules() {
        use crate::model::*;
        let rule = |ip: IpHeader, matches: Vec<Match>, target: Target| Rule { id: Rule::UNASSIGNED, ip, matches, target, counters: Counters::default() };
        let tcp = IpHeader { proto: Some(Inv::new(6, false)), ..Default::default() };
        let dport = Match::Tcp(TcpMatch { dport: Some(Inv::new(PortRange { lo: 22, hi: 22 }, false)), ..Default::default() });
        let mut rs = Ruleset::default();
        let mut id = 0;
        let mut push = |rs: &mut Ruleset, chain: &str, r: Rule| {
            rs.table_mut(TableKind::Filter).chain_mut(chain).expect("chain").rules.push(Rule { id, ..r });
            id += 1;
        };
        push(&mut rs, "INPUT", rule(tcp.clone(), vec![dport.clone()], Target::Accept));
        let mut img = build(&crate::compile::compile(&rs).expect("compiles"), &[]).expect("image");
        let (hooks, key) = flow_header(&mut img);
        assert_eq!(hooks, Hook::ALL.to_vec());
        assert_eq!((key.src, key.dst, key.dport, key.ifindex, key.proto, key.tos, key.prog, key.frag), (!0, !0, !0, !0, !0, !0, !0, !0));
        // no rule looks at the source port: the flows of one client to port 22 share an entry
        assert_eq!((key.sport, key.ct_state, key.tcp_flags, key.ttl, key.pkttype, key.icmp, key.len, key.mark), (0, 0, 0, 0, 0, 0, 0, 0));

        push(&mut rs, "INPUT", rule(IpHeader::default(), vec![], Target::Log(LogTarget::default())));
        push(&mut rs, "FORWARD", rule(IpHeader::default(), vec![Match::Length(LengthMatch { lo: 0, hi: 60, invert: false })], Target::Drop));
        push(&mut rs, "FORWARD", rule(IpHeader::default(), vec![Match::State(StateMatch { state: ct_state::ESTABLISHED, invert: false })], Target::Accept));
        push(&mut rs, "OUTPUT", rule(IpHeader::default(), vec![Match::Limit(LimitMatch { avg: 100, burst: 5 })], Target::Accept));
        let mut img = build(&crate::compile::compile(&rs).expect("compiles"), &[]).expect("image");
        let (hooks, key) = flow_header(&mut img);
        assert_eq!(hooks, vec![Hook::Forward], "INPUT logs, OUTPUT limits");
        // Tracking: the state, and the tuple and TCP flags the state of a packet of no
        // connection follows from.
        assert_eq!((key.len, key.ct_state, key.tcp_flags, key.sport, key.dport), (!0, !0, !0, !0, !0));

        // A leading ESTABLISHED rule alone (tried before the classifier) keys the state too.
        let mut lead = Ruleset::default();
        push(&mut lead, "INPUT", rule(IpHeader::default(), vec![Match::State(StateMatch { state: ct_state::ESTABLISHED, invert: false })], Target::Accept));
        push(&mut lead, "INPUT", rule(tcp.clone(), vec![dport.clone()], Target::Drop));
        let mut img = build(&crate::compile::compile(&lead).expect("compiles"), &[]).expect("image");
        assert_eq!(flow_header(&mut img).1.ct_state, !0);

        // --syn appended to FORWARD in place: the patched image keys the TCP flags.
        let syn = Match::Tcp(TcpMatch { flags: Some(Inv::new(TcpFlags { mask: 0x17, comp: 0x02 }, false)), ..Default::default() });
        let mut big = Ruleset::default();
        for i in 0..TAIL_PER as u32 {
            let src = IpHeader { src: Some(Inv::new(Ipv4Mask::new(0x0a00_0000 + i, u32::MAX), false)), ..Default::default() };
            push(&mut big, "FORWARD", rule(src, vec![], Target::Drop));
        }
        let mut img = build(&crate::compile::compile(&big).expect("compiles"), &[]).expect("image");
        assert_eq!(flow_header(&mut img).1.tcp_flags, 0);
        push(&mut big, "FORWARD", rule(tcp, vec![syn], Target::Drop));
        let table = big.table(TableKind::Filter).expect("filter");
        let new = &table.chain("FORWARD").expect("FORWARD").rules[TAIL_PER..];
        let tail = crate::compile::compile_tail(table, Hook::Forward, new, true, hook_rules(&img, Hook::Forward).expect("rules"))
            .expect("compiles")
            .expect("appendable");
        let patch = append(&img, Hook::Forward, &tail, &[]).expect("append").expect("room");
        let mut patched = vec![0; patch.len()];
        patch.write(&img, &mut patched);
        let (hooks, key) = flow_header(&mut patched);
        assert_eq!((hooks, key.tcp_flags), (Hook::ALL.to_vec(), !0));
        assert_eq!((hook_appended(&img, Hook::Forward).expect("rules"), hook_appended(&patched, Hook::Forward).expect("rules")), (0, 1));
    }

    /// An appended rule deleted again gives its room back: appending and deleting in turn
    /// never runs out of it (a hook of TAIL_PER rules has room for one); a deleted rule of
    /// the vectors stays, a no-op.
    #[test]
    fn deleting_appended_rules_gives_their_room_back() {
        use crate::model::*;
        let rule = |id: u32, src: u32| Rule {
            id,
            ip: IpHeader { src: Some(Inv::new(Ipv4Mask::new(src, u32::MAX), false)), ..Default::default() },
            matches: vec![],
            target: Target::Drop,
            counters: Counters::default(),
        };
        let mut rs = Ruleset::default();
        let forward = (0..TAIL_PER as u32).map(|i| rule(i, 0x0a00_0000 + i)).collect();
        rs.table_mut(TableKind::Filter).chain_mut("FORWARD").expect("FORWARD").rules = forward;
        let table = rs.table(TableKind::Filter).expect("filter");
        let mut img = build(&crate::compile::compile(&rs).expect("compiles"), &[]).expect("image");
        let lbvs = hook_rules(&img, Hook::Forward).expect("rules");
        let policy = |img: &[u64]| img[HOOK0 + Hook::Forward as usize * HOOK_SLOTS] >> 32;
        assert_eq!(policy(&img), 1, "ACCEPT");
        let patched = |img: &[u64], patch: Patch| {
            let mut out = vec![0; patch.len()];
            patch.write(img, &mut out);
            out
        };
        let add = |img: &[u64], id: u32| {
            let base = hook_rules(img, Hook::Forward).expect("rules");
            let tail = crate::compile::compile_tail(table, Hook::Forward, &[rule(id, 0xc0a8_0000 + id)], true, base);
            append(img, Hook::Forward, &tail.expect("compiles").expect("appendable"), &[]).expect("append")
        };
        for id in 10_000..10_003 {
            img = patched(&img, add(&img, id).expect("room"));
            assert_eq!(hook_rules(&img, Hook::Forward).expect("rules"), lbvs + 1);
            assert!(add(&img, id + 100).is_none(), "room for one");
            img = patched(&img, delete(&img, &[id]).expect("delete").expect("in place"));
            assert_eq!(hook_rules(&img, Hook::Forward).expect("rules"), lbvs, "its room back");
            assert_eq!(policy(&img), 1, "the policy kept");
        }
        img = patched(&img, delete(&img, &[5]).expect("delete").expect("in place"));
        assert_eq!(hook_rules(&img, Hook::Forward).expect("rules"), lbvs);
    }

}

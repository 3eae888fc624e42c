//! Software LBVS: the exact search the BPF program runs over a compiled `HookTable`, written
//! plainly so the datapath's C can mirror it step by step, and so the property tests can check
//! the compiled tables against the reference classifier.
//!
//! # Algorithm (per packet, for the hook's table `t`)
//!
//! 1. For each used field `f` in `t.fields` (fields absent from the list are not looked at),
//!    look the packet's value up in `f.map` — the longest matching prefix (addresses), the
//!    longest matching interface key (`name` + NUL against the patterns' keys), or the
//!    interval containing the value — giving vector `V_f`; the field's wildcard vector is
//!    `W_f`. Rule `r` is a candidate iff for every used field bit `r` is set in `V_f | W_f`.
//!    With no used field every rule is a candidate.
//! 2. Pick the pivot field: the one with the fewest non-zero words in `V_f` plus `W_f`. Only
//!    the pivot's non-zero word indices can hold candidates.
//! 3. `pos = 0` (the first compiled rule still to consider). Walk the pivot's word indices
//!    `w >= pos / 64` in increasing order; for each, `bits = AND over fields of
//!    (V_f[w] | W_f[w])` (a missing word is 0), minus the bits below `pos` when
//!    `w == pos / 64`. The lowest set bit is the next candidate `r`.
//! 4. Evaluate `r`'s residual checks in order, stopping at the first failure (a `Limit` or
//!    `StatisticNth` check updates its state slot only when it is evaluated).
//!    * a check fails: `pos = end` for `Enter { end }`, else `pos = r + 1`; back to 3.
//!    * all pass: the rule is taken; its `rule_id`, if any, counts the packet. Then by kind:
//!      `Accept`/`Drop`/`Reject` end the search with that verdict; `Log`, `Mark` (the mark
//!      becomes `(mark & !mask) ^ value`, seen by later `Mark` checks), `Continue` and
//!      `Enter` set `pos = r + 1`; `SkipTo { to }` sets `pos = to`. Back to 3.
//!      (Rules inserted in place, and the depths that say which of them a skip passes
//!      over, are the image's: `datapath::image::insert`.)
//! 5. No candidate left among the vectors' rules (the first `t.lbvs_rules`): the appended
//!    rules after them are candidates in order, from `pos` on (from the first of them if
//!    `pos` is below it), each as in 4 (their field matches are checks).
//! 6. No candidate left at or after `pos`: the hook's policy.
//!
//! Every taken rule has a larger index than the previous one, so the search ends after at most
//! `actions.len()` steps.

use super::reference::{
    addrtype_matches, conntrack_matches, mac_matches, nth_pass, random_pass, ttl_matches, Limiter, Outcome, Packet,
    Verdict,
};
use super::build::iface_key;
use super::tables::{ActionKind, Check, Compiled, Field, FieldMap, FieldTable, HookTable, Vector};

/// State of the stateful checks, one per state slot.
#[derive(Debug)]
pub struct LbvsState {
    limits: Vec<Option<Limiter>>,
    nth: Vec<u32>,
}

impl LbvsState {
    pub fn new(c: &Compiled) -> LbvsState {
        LbvsState { limits: vec![None; c.n_states as usize], nth: vec![0; c.n_states as usize] }
    }
}

/// Classifies `p` against the compiled table of its hook.
pub fn classify(c: &Compiled, p: &Packet, st: &mut LbvsState) -> Outcome {
    let t = &c.hooks[p.hook as usize];
    let lists: Vec<(&Vector, &Vector)> =
        t.fields.iter().map(|f| (&t.vectors[lookup(f, p) as usize], &t.vectors[f.wildcard as usize])).collect();
    let pivot = (0..lists.len()).min_by_key(|&i| lists[i].0.words.len() + lists[i].1.words.len());
    let mut out = Outcome { verdict: Verdict::Accept, by_policy: false, matched: Vec::new(), mark: p.mark };
    let mut pos = 0u32;
    while let Some(r) = next_candidate(t, &lists, pivot, pos) {
        let a = &t.actions[r as usize];
        if !a.checks.iter().all(|ch| check(ch, p, out.mark, st)) {
            pos = match a.kind {
                ActionKind::Enter { end, .. } => end,
                _ => r + 1,
            };
            continue;
        }
        out.matched.extend(a.rule_id);
        pos = r + 1;
        match &a.kind {
            ActionKind::Accept => return Outcome { verdict: Verdict::Accept, ..out },
            ActionKind::Drop => return Outcome { verdict: Verdict::Drop, ..out },
            ActionKind::Reject(w) => return Outcome { verdict: Verdict::Reject(*w), ..out },
            ActionKind::Mark { value, mask } => out.mark = (out.mark & !mask) ^ value,
            ActionKind::Log(_) | ActionKind::Continue | ActionKind::Enter { .. } => {}
            ActionKind::SkipTo { to, .. } => pos = *to,
        }
    }
    let verdict = if t.policy_accept { Verdict::Accept } else { Verdict::Drop };
    Outcome { verdict, by_policy: true, ..out }
}

/// The first candidate rule at or after `pos`: steps 2 and 3, then the appended rules (every
/// rule when no field is used), in order.
fn next_candidate(t: &HookTable, lists: &[(&Vector, &Vector)], pivot: Option<usize>, pos: u32) -> Option<u32> {
    let from = match pivot {
        None => pos,
        Some(pivot) => match lbvs_candidate(lists, pivot, pos) {
            Some(r) if r < t.lbvs_rules => return Some(r),
            _ => pos.max(t.lbvs_rules),
        },
    };
    ((from as usize) < t.actions.len()).then_some(from)
}

/// The first rule of the vectors at or after `pos` (steps 2 and 3).
fn lbvs_candidate(lists: &[(&Vector, &Vector)], pivot: usize, pos: u32) -> Option<u32> {
    let (v, w) = lists[pivot];
    let first = pos / 64;
    // The pivot's word indices from `first` on, merged in increasing order.
    let (mut i, mut j) = (v.words.partition_point(|x| x.0 < first), w.words.partition_point(|x| x.0 < first));
    loop {
        let word = match (v.words.get(i), w.words.get(j)) {
            (None, None) => return None,
            (Some(a), Some(b)) => a.0.min(b.0),
            (Some(a), None) => a.0,
            (None, Some(b)) => b.0,
        };
        let mut bits = !0u64;
        for (fv, fw) in lists {
            bits &= word_of(fv, word) | word_of(fw, word);
        }
        if word == first {
            bits &= !0u64 << (pos % 64);
        }
        if bits != 0 {
            return Some(word * 64 + bits.trailing_zeros());
        }
        if v.words.get(i).is_some_and(|a| a.0 == word) {
            i += 1;
        }
        if w.words.get(j).is_some_and(|b| b.0 == word) {
            j += 1;
        }
    }
}

fn word_of(v: &Vector, word: u32) -> u64 {
    v.words.binary_search_by_key(&word, |x| x.0).map_or(0, |k| v.words[k].1)
}

/// The vector the packet's value of this field selects (step 1).
fn lookup(f: &FieldTable, p: &Packet) -> u32 {
    match &f.map {
        FieldMap::Prefixes(entries) => {
            let a = p.field_value(f.field);
            entries
                .iter()
                .filter(|(k, _)| k.len == 0 || (k.addr ^ a) >> (32 - k.len as u32) == 0)
                .max_by_key(|(k, _)| k.len)
                .map_or(0, |e| e.1)
        }
        FieldMap::Ifaces(entries) => {
            let mut key = p.iface(f.field == Field::OutIface).as_bytes().to_vec();
            key.push(0);
            entries
                .iter()
                .filter(|(k, _)| key.starts_with(&iface_key(k)))
                .max_by_key(|(k, _)| k.name.len() + k.exact as usize)
                .map_or(0, |e| e.1)
        }
        FieldMap::Intervals(iv) => {
            let v = p.field_value(f.field);
            let k = iv.partition_point(|&(_, hi, _)| hi < v);
            iv.get(k).map_or(0, |e| e.2)
        }
    }
}

fn in_ranges(ranges: &[(u32, u32)], v: u32) -> bool {
    let k = ranges.partition_point(|&(_, hi)| hi < v);
    ranges.get(k).is_some_and(|&(lo, _)| lo <= v)
}

/// One residual check (step 4); `mark` is the current mark.
fn check(c: &Check, p: &Packet, mark: u32, st: &mut LbvsState) -> bool {
    match c {
        Check::L4Header => p.has_l4(),
        Check::Fragment(f) => (p.frag_off != 0) == *f,
        Check::Mark { value, mask, invert } => ((mark & mask) == *value) ^ invert,
        Check::Length { lo, hi, invert } => (*lo <= p.length && p.length <= *hi) ^ invert,
        Check::Ttl { op, value } => ttl_matches(*op, *value, p.ttl),
        Check::Tos { value, mask, invert } => ((p.tos & mask) == *value) ^ invert,
        Check::Dscp { value, invert } => ((p.tos >> 2) == *value) ^ invert,
        Check::Pkttype { pkttype, invert } => (p.pkttype == *pkttype) ^ invert,
        Check::MacSource { addr, invert } => mac_matches(addr, *invert, p),
        Check::TcpOption { kind, invert } => p.tcp_options.contains(kind) ^ invert,
        Check::Limit { state, avg, burst } => st.limits[*state as usize]
            .get_or_insert_with(|| Limiter::new(*avg, *burst, p.now))
            .pass(*avg, *burst, p.now),
        Check::StatisticRandom { probability, invert } => random_pass(*probability, *invert, p),
        Check::StatisticNth { state, every, packet, invert } => {
            nth_pass(&mut st.nth[*state as usize], *every, *packet, *invert)
        }
        Check::Addrtype { src, dst, .. } => addrtype_matches(*src, *dst, p),
        Check::Conntrack(m) => conntrack_matches(m, p),
        Check::FieldIn { field, ranges } => in_ranges(ranges, p.field_value(*field)),
        Check::PortEither { ranges } => {
            in_ranges(ranges, p.field_value(Field::Sport)) || in_ranges(ranges, p.field_value(Field::Dport))
        }
        Check::AddrMask { field, value, mask, invert } => ((p.field_value(*field) & mask) == *value) ^ invert,
        Check::Ifaces { out, lits } => lits.iter().all(|(i, inv)| i.matches(p.iface(*out)) != *inv),
    }
}

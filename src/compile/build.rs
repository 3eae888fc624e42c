//! Builds one hook's LBVS tables from its flattened compiled rules: the action table, and per
//! used field the value-to-vector map and the wildcard vector.
//!
//! Everything is sorting and sweeping, so cost follows the size of the output:
//! * interval fields: the rules' interval ends become +rule/-rule events swept in order; each
//!   elementary interval gets a snapshot of the active set.
//! * LPM fields (addresses, interface names): each rule's set is a few `(key, in/out)`
//!   assignments; keys sorted in preorder are swept with a stack, applying a key's assignments
//!   on the way down and undoing them on the way up, so each entry's vector is "the rules whose
//!   longest assigned key covering this entry says in" — exactly the rules accepting every
//!   value whose longest entry it is.
//!
//! Vectors are sparse and deduplicated within the hook.

use rustc_hash::FxHashMap as HashMap;
use smallvec::SmallVec;

use super::tables::{
    Action, ActionKind, FieldMap, FieldTable, Hook, HookTable, IfacePattern, Prefix, VecId, Vector,
};
use super::{field_max, Block, Field, PreKind, PreRule};
use crate::model::Iface;

/// The interface pattern iptables' name/mask pair amounts to.
fn pattern(i: &Iface) -> IfacePattern {
    IfacePattern { name: i.name.as_bytes().to_vec(), exact: !i.wildcard }
}

/// The LPM key bytes: the name, plus its terminating NUL when exact.
pub(super) fn iface_key(p: &IfacePattern) -> Vec<u8> {
    let mut k = p.name.clone();
    if p.exact {
        k.push(0);
    }
    k
}

fn iface_covers(a: &IfacePattern, b: &IfacePattern) -> bool {
    iface_key(b).starts_with(&iface_key(a))
}

fn prefix_covers(a: &Prefix, b: &Prefix) -> bool {
    a.len <= b.len && (a.len == 0 || (a.addr ^ b.addr) >> (32 - a.len as u32) == 0)
}

const IFACE_ROOT: IfacePattern = IfacePattern { name: Vec::new(), exact: false };

/// A conjunction of interface literals as LPM assignments (see `Set::prefix_assignments`):
/// `None` if it can never hold, `Some(empty)` if it always holds.
pub(super) fn iface_assignments(lits: &[(Iface, bool)]) -> Option<Vec<(IfacePattern, bool)>> {
    // The positive literals must form a chain; the longest decides.
    let mut longest = IFACE_ROOT;
    for (i, _) in lits.iter().filter(|(_, inv)| !inv) {
        let p = pattern(i);
        if iface_covers(&longest, &p) {
            longest = p;
        } else if !iface_covers(&p, &longest) {
            return None;
        }
    }
    let mut out = Vec::new();
    for (i, _) in lits.iter().filter(|(_, inv)| *inv) {
        let n = pattern(i);
        if iface_covers(&n, &longest) {
            return None;
        }
        if iface_covers(&longest, &n) && !out.iter().any(|(o, _)| *o == n) {
            out.push((n, false));
        }
    }
    if longest != IFACE_ROOT || !out.is_empty() {
        out.insert(0, (longest, true));
    }
    Some(out)
}

/// Deduplicated vectors of one hook (each kept once: `list` takes them at the end).
#[derive(Default)]
struct Vectors {
    ids: HashMap<Vector, VecId>,
}

impl Vectors {
    fn intern(&mut self, v: Vector) -> VecId {
        let n = self.ids.len() as VecId;
        *self.ids.entry(v).or_insert(n)
    }

    /// The vectors by id.
    fn list(self) -> Vec<Vector> {
        let mut list = vec![Vector::default(); self.ids.len()];
        for (v, id) in self.ids {
            list[id as usize] = v;
        }
        list
    }

    fn of_rules(&mut self, rules: impl Iterator<Item = u32>) -> VecId {
        let mut bits = Bits::default();
        for r in rules {
            bits.set(r, true);
        }
        self.intern(bits.snapshot())
    }
}

/// A mutable rule set kept as its non-zero words, sorted: few at a time in the sweeps, so a
/// search in a short vector (no allocation once it has grown) beats a tree.
#[derive(Default)]
struct Bits {
    words: Vec<(u32, u64)>,
}

impl Bits {
    /// Sets rule `r` to `on`, returning its previous state.
    fn set(&mut self, r: u32, on: bool) -> bool {
        let (w, bit) = (r / 64, 1u64 << (r % 64));
        match self.words.binary_search_by_key(&w, |e| e.0) {
            Ok(i) => {
                let prev = self.words[i].1 & bit != 0;
                if on {
                    self.words[i].1 |= bit;
                } else {
                    self.words[i].1 &= !bit;
                    if self.words[i].1 == 0 {
                        self.words.remove(i);
                    }
                }
                prev
            }
            Err(i) => {
                if on {
                    self.words.insert(i, (w, bit));
                }
                false
            }
        }
    }

    /// Sets rules `first..=last` to `on`.
    fn set_range(&mut self, first: u32, last: u32, on: bool) {
        for w in first / 64..=last / 64 {
            let lo = if w == first / 64 { first % 64 } else { 0 };
            let hi = if w == last / 64 { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - (hi - lo))) << lo;
            match self.words.binary_search_by_key(&w, |e| e.0) {
                Ok(i) if on => self.words[i].1 |= mask,
                Ok(i) => {
                    self.words[i].1 &= !mask;
                    if self.words[i].1 == 0 {
                        self.words.remove(i);
                    }
                }
                Err(i) if on => self.words.insert(i, (w, mask)),
                Err(_) => {}
            }
        }
    }

    fn snapshot(&self) -> Vector {
        Vector { words: SmallVec::from_slice(&self.words) }
    }
}

/// LPM entries with their vectors, from the rules' assignments `(key, rule, in)` in rule
/// order. `root` is always present.
fn lpm<K: Clone + Eq>(
    assigned: Vec<(K, u32, bool)>,
    root: K,
    order: impl Fn(&K, &K) -> std::cmp::Ordering,
    covers: impl Fn(&K, &K) -> bool,
    vectors: &mut Vectors,
) -> Vec<(K, VecId)> {
    // Sorted by key, each key's assignments in rule order (a stable sort): a flat list, not a
    // map of lists (10 000 prefixes were 10 000 small allocations, and a cache miss each).
    let mut keyed: Vec<(K, Option<(u32, bool)>)> = Vec::with_capacity(assigned.len() + 1);
    keyed.push((root, None));
    keyed.extend(assigned.into_iter().map(|(k, r, on)| (k, Some((r, on)))));
    keyed.sort_by(|a, b| order(&a.0, &b.0));
    let mut bits = Bits::default();
    // (key, undo log of (rule, previous state)).
    let mut stack: Vec<(K, SmallVec<[(u32, bool); 2]>)> = Vec::new();
    let mut out = Vec::new();
    for group in keyed.chunk_by(|a, b| a.0 == b.0) {
        let key = group[0].0.clone();
        let assigns = group.iter().filter_map(|e| e.1);
        while stack.last().is_some_and(|(top, _)| !covers(top, &key)) {
            if let Some((_, undo)) = stack.pop() {
                for &(r, prev) in undo.iter().rev() {
                    bits.set(r, prev);
                }
            }
        }
        let undo: SmallVec<[(u32, bool); 2]> = assigns.map(|(r, on)| (r, bits.set(r, on))).collect();
        out.push((key.clone(), vectors.intern(bits.snapshot())));
        stack.push((key, undo));
    }
    out
}

/// Sorted disjoint intervals covering `0..=max`, each with the vector of the rules whose set
/// contains it.
fn intervals(sets: &[(u32, &[(u32, u32)])], max: u32, vectors: &mut Vectors) -> Vec<(u32, u32, VecId)> {
    // Events (position, first rule, last rule, in): consecutive rules with the same set are
    // one run, entering and leaving together (every rule `-p tcp`: two events, not 20 000 to
    // sort and apply one by one). Runs are disjoint, so only a run's own events (out before
    // in, at a position where two of its ranges touch) need their order.
    let mut events: Vec<(u32, u32, u32, bool)> = Vec::new();
    for run in sets.chunk_by(|a, b| b.0 == a.0 + 1 && b.1 == a.1) {
        let (first, ranges) = run[0];
        let last = run[run.len() - 1].0;
        for &(lo, hi) in ranges {
            events.push((lo, first, last, true));
            if hi < max {
                events.push((hi + 1, first, last, false));
            }
        }
    }
    // (stable: its run detection makes the usual input, rules in port order, nearly free)
    events.sort();
    let mut bits = Bits::default();
    let mut out: Vec<(u32, u32, VecId)> = Vec::new();
    let mut emit = |lo: u32, hi: u32, v: VecId| match out.last_mut() {
        Some(last) if last.2 == v => last.1 = hi,
        _ => out.push((lo, hi, v)),
    };
    let mut start = 0u32;
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        if pos > start {
            emit(start, pos - 1, vectors.intern(bits.snapshot()));
        }
        while i < events.len() && events[i].0 == pos {
            let (_, first, last, on) = events[i];
            bits.set_range(first, last, on);
            i += 1;
        }
        start = pos;
    }
    emit(start, max, vectors.intern(bits.snapshot()));
    out
}

/// A compiled rule's action, its block references resolved by `blocks`.
pub(super) fn resolve(kind: PreKind, blocks: &[Block]) -> ActionKind {
    let end = |b: usize| blocks[b].end.expect("every block is closed once its chain is emitted");
    match kind {
        PreKind::Final(k) => k,
        PreKind::SkipToEnd(b) => ActionKind::SkipTo { to: end(b), depth: blocks[b].depth },
        PreKind::EnterEnd(b) => ActionKind::Enter { end: end(b), depth: blocks[b].depth },
    }
}

/// What one field's constraints look like, gathered in one pass over the hook's rules.
#[derive(Default)]
struct Gathered<'a> {
    /// The rules the field constrains, in order.
    constrained: Vec<u32>,
    /// Address fields: the prefixes each rule is assigned to (in or out), in rule order.
    prefixes: Vec<(Prefix, u32, bool)>,
    /// Interface fields: likewise the patterns.
    ifaces: Vec<(IfacePattern, u32, bool)>,
    /// Interval fields: each constraining rule's set.
    sets: Vec<(u32, &'a [(u32, u32)])>,
}

/// The tables of one hook from its flattened rules; `blocks` resolves block references.
pub(super) fn hook_table(hook: Hook, pre: Vec<PreRule>, blocks: &[Block], policy_accept: bool) -> HookTable {
    let mut vectors = Vectors::default();
    // about one vector per interval or prefix of the busiest field
    vectors.ids.reserve(pre.len());
    // One pass over the rules (each field in turn would read them all once per field).
    let mut gathered: Vec<Gathered> = Field::ALL.iter().map(|_| Gathered::default()).collect();
    for (r, p) in pre.iter().enumerate() {
        let r = r as u32;
        for (f, s) in p.cond.sets.iter().filter(|(f, s)| !s.is_full(field_max(*f))) {
            let g = &mut gathered[*f as usize];
            // room for every rule left, once a rule uses the field: a field one rule uses is
            // used by most (10 000 rules grew these lists ~150 times, copying them each time)
            let left = pre.len() - r as usize;
            if g.constrained.is_empty() {
                g.constrained.reserve(left);
            }
            g.constrained.push(r);
            if matches!(f, Field::Src | Field::Dst) {
                if g.prefixes.is_empty() {
                    g.prefixes.reserve(left);
                }
                g.prefixes.extend(s.prefix_assignments().into_iter().map(|(k, on)| (k, r, on)));
            } else {
                if g.sets.is_empty() {
                    g.sets.reserve(left);
                }
                g.sets.push((r, s.ranges()));
            }
        }
        for (f, lits) in [(Field::InIface, &p.cond.ifaces[0]), (Field::OutIface, &p.cond.ifaces[1])] {
            let assigns = iface_assignments(lits).unwrap_or_default();
            if assigns.is_empty() {
                continue;
            }
            let g = &mut gathered[f as usize];
            g.constrained.push(r);
            g.ifaces.extend(assigns.into_iter().map(|(key, on)| (key, r, on)));
        }
    }
    let mut fields = Vec::new();
    for (f, g) in Field::ALL.into_iter().zip(gathered) {
        if g.constrained.is_empty() {
            continue;
        }
        let map = match f {
            Field::Src | Field::Dst => {
                FieldMap::Prefixes(lpm(g.prefixes, Prefix { addr: 0, len: 0 }, Ord::cmp, prefix_covers, &mut vectors))
            }
            Field::InIface | Field::OutIface => {
                let order = |a: &IfacePattern, b: &IfacePattern| iface_key(a).cmp(&iface_key(b));
                FieldMap::Ifaces(lpm(g.ifaces, IFACE_ROOT, order, iface_covers, &mut vectors))
            }
            _ => FieldMap::Intervals(intervals(&g.sets, field_max(f), &mut vectors)),
        };
        let mut c = g.constrained.into_iter().peekable();
        let wild = (0..pre.len() as u32).filter(|&r| {
            let hit = c.peek() == Some(&r);
            if hit {
                c.next();
            }
            !hit
        });
        let wildcard = vectors.of_rules(wild);
        fields.push(FieldTable { field: f, map, wildcard });
    }
    let actions = pre
        .into_iter()
        .map(|p| Action { rule_id: p.rule_id, kind: resolve(p.kind, blocks), checks: p.checks })
        .collect::<Vec<_>>();
    let lbvs_rules = actions.len() as u32;
    HookTable { hook, actions, lbvs_rules, vectors: vectors.list(), fields, policy_accept }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, wildcard: bool) -> Iface {
        Iface { name: name.into(), wildcard }
    }

    #[test]
    fn iface_literals() {
        let eth = IfacePattern { name: b"eth".to_vec(), exact: false };
        let eth0 = IfacePattern { name: b"eth0".to_vec(), exact: true };
        assert_eq!(iface_assignments(&[]), Some(vec![]));
        assert_eq!(iface_assignments(&[(iface("", true), false)]), Some(vec![]));
        assert_eq!(iface_assignments(&[(iface("", true), true)]), None);
        assert_eq!(
            iface_assignments(&[(iface("eth", true), false), (iface("eth0", false), true)]),
            Some(vec![(eth.clone(), true), (eth0.clone(), false)])
        );
        assert_eq!(iface_assignments(&[(iface("eth0", false), false), (iface("eth", true), true)]), None);
        assert_eq!(iface_assignments(&[(iface("eth0", false), false), (iface("eth1", false), false)]), None);
        assert_eq!(
            iface_assignments(&[(iface("eth0", false), false), (iface("eth", true), false)]),
            Some(vec![(eth0.clone(), true)])
        );
        assert_eq!(
            iface_assignments(&[(iface("eth0", false), true)]),
            Some(vec![(IFACE_ROOT, true), (eth0, false)])
        );
        // `eth0+` covers the exact name `eth0`, not the other way round.
        assert!(iface_covers(&IfacePattern { name: b"eth0".to_vec(), exact: false }, &IfacePattern { name: b"eth0".to_vec(), exact: true }));
        assert!(!iface_covers(&IfacePattern { name: b"eth0".to_vec(), exact: true }, &IfacePattern { name: b"eth0".to_vec(), exact: false }));
    }

    #[test]
    fn interval_sweep() {
        let mut v = Vectors::default();
        let a = [(2u32, 5u32)];
        let b = [(4u32, 9u32), (20, 255)];
        let out = intervals(&[(0, &a), (1, &b)], 255, &mut v);
        let list = v.list();
        let spans: Vec<(u32, u32, Vec<(u32, u64)>)> = out.iter().map(|&(lo, hi, id)| (lo, hi, list[id as usize].words.to_vec())).collect();
        assert_eq!(
            spans,
            vec![
                (0, 1, vec![]),
                (2, 3, vec![(0, 1)]),
                (4, 5, vec![(0, 3)]),
                (6, 9, vec![(0, 2)]),
                (10, 19, vec![]),
                (20, 255, vec![(0, 2)]),
            ]
        );
    }

    /// Runs of consecutive rules with one set (entered and left together) give each interval
    /// exactly the rules whose set holds it, across word boundaries and beside other rules.
    #[test]
    fn interval_sweep_with_runs_of_equal_sets() {
        let mut g = crate::testutil::SplitMix64(7);
        let shapes: [&[(u32, u32)]; 5] = [&[(6, 6)], &[(17, 17)], &[(0, 9), (10, 40)], &[(3, 200)], &[(0, 255)]];
        for _ in 0..50 {
            let mut sets: Vec<(u32, &[(u32, u32)])> = Vec::new();
            let mut r = 0;
            while sets.len() < 300 {
                // some rules skipped (the field does not constrain them), runs of 1 to 150
                r += (g.next() % 3 == 0) as u32;
                let shape = shapes[(g.next() % shapes.len() as u64) as usize];
                for _ in 0..1 + g.next() % 150 {
                    sets.push((r, shape));
                    r += 1;
                }
            }
            let mut v = Vectors::default();
            let out = intervals(&sets, 255, &mut v);
            let list = v.list();
            for &(lo, hi, id) in &out {
                for x in [lo, hi] {
                    let mut want = Bits::default();
                    for &(r, ranges) in &sets {
                        if ranges.iter().any(|&(a, b)| a <= x && x <= b) {
                            want.set(r, true);
                        }
                    }
                    assert_eq!(list[id as usize].words, want.snapshot().words, "value {x}");
                }
            }
            assert_eq!((out[0].0, out[out.len() - 1].1), (0, 255));
        }
    }
}

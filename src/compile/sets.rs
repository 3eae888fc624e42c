//! Exact value sets the compiler reasons with: sorted, disjoint, inclusive `u32` intervals, and
//! their conversion to longest-prefix-match entries.
//!
//! Every field constraint of a rule (a prefix, an `iprange`, a port range, a multiport list, a
//! `--tcp-flags` mask, their negations and conjunctions) is one `Set`, so conjunction is
//! intersection and `!` is complement: exact by construction, whatever the combination.

use smallvec::{smallvec, SmallVec};

use super::tables::Prefix;

/// The intervals of a set: most sets (a prefix, a port, a range) are one, kept inline, so
/// that copying a rule's conditions, as the compiler does for every rule, allocates nothing.
type Intervals = SmallVec<[(u32, u32); 1]>;

/// A set of values as sorted, disjoint, non-adjacent inclusive intervals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Set {
    iv: Intervals,
}

impl Set {
    pub fn empty() -> Set {
        Set { iv: Intervals::new() }
    }

    /// `lo..=hi` (empty when `lo > hi`).
    pub fn range(lo: u32, hi: u32) -> Set {
        Set { iv: if lo <= hi { smallvec![(lo, hi)] } else { Intervals::new() } }
    }

    pub fn full(max: u32) -> Set {
        Set::range(0, max)
    }

    /// Normalises arbitrary intervals (any order, overlapping) into a set.
    pub fn from_ranges(mut ranges: Vec<(u32, u32)>) -> Set {
        ranges.retain(|&(lo, hi)| lo <= hi);
        ranges.sort_unstable();
        let mut iv = Intervals::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match iv.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => iv.push((lo, hi)),
            }
        }
        Set { iv }
    }

    /// `{x : x & mask == value}` (value already masked) within `0..=u32::MAX`, or `None` when
    /// that takes more than `limit` intervals (a mask with many holes).
    pub fn masked(value: u32, mask: u32, limit: usize) -> Option<Set> {
        let low_free = mask.trailing_zeros();
        if low_free >= 32 {
            return Some(Set::full(u32::MAX));
        }
        let span = (1u32 << low_free) - 1;
        // Free bits above the lowest mask bit: each combination is one interval.
        let holes = !mask & !span;
        if 1u64 << holes.count_ones() > limit as u64 {
            return None;
        }
        let mut iv = Intervals::with_capacity(1 << holes.count_ones());
        let mut sub = 0u32;
        loop {
            let lo = value | sub;
            iv.push((lo, lo | span));
            if sub == holes {
                break;
            }
            // Next subset of `holes` in increasing order.
            sub = sub.wrapping_sub(holes) & holes;
        }
        Some(Set { iv })
    }

    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.iv
    }

    pub fn is_empty(&self) -> bool {
        self.iv.is_empty()
    }

    pub fn is_full(&self, max: u32) -> bool {
        self.iv[..] == [(0, max)]
    }

    #[cfg(test)]
    pub fn contains(&self, v: u32) -> bool {
        let i = self.iv.partition_point(|&(_, hi)| hi < v);
        i < self.iv.len() && self.iv[i].0 <= v
    }

    /// Complement within `0..=max`.
    pub fn complement(&self, max: u32) -> Set {
        let mut iv = Intervals::with_capacity(self.iv.len() + 1);
        let mut next = Some(0u32);
        for &(lo, hi) in &self.iv {
            if let Some(n) = next {
                if lo > n {
                    iv.push((n, lo - 1));
                }
            }
            next = hi.checked_add(1);
        }
        if let Some(n) = next {
            if n <= max {
                iv.push((n, max));
            }
        }
        Set { iv }
    }

    pub fn intersect(&self, other: &Set) -> Set {
        let (mut i, mut j) = (0, 0);
        let mut iv = Intervals::new();
        while i < self.iv.len() && j < other.iv.len() {
            let (a, b) = (self.iv[i], other.iv[j]);
            let lo = a.0.max(b.0);
            let hi = a.1.min(b.1);
            if lo <= hi {
                iv.push((lo, hi));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Set { iv }
    }

    /// `Some(true)` if `lo..=hi` is inside the set, `Some(false)` if disjoint from it, `None`
    /// if mixed.
    fn uniform(&self, lo: u32, hi: u32) -> Option<bool> {
        let i = self.iv.partition_point(|&(_, h)| h < lo);
        match self.iv.get(i) {
            None => Some(false),
            Some(&(a, b)) if a <= lo => (b >= hi).then_some(true),
            Some(&(a, _)) => (a > hi).then_some(false),
        }
    }

    /// The fewest LPM assignments expressing this set of addresses: a list of `(prefix, in)`
    /// such that an address belongs to the set iff the assignment of the longest listed prefix
    /// containing it says `in` (no listed prefix: not in the set). Plain prefixes give one
    /// entry, `! -s P` gives `0/0 in, P out`, `10/8 minus 10.1/16` gives two.
    pub fn prefix_assignments(&self) -> Assignments {
        // The common shapes (`-s P`, `! -s P`) directly, without allocating: the general
        // search below allocates at each of up to 32 levels, which dominates compiling many
        // /32 rules.
        match self.iv.as_slice() {
            [] => return Assignments::new(),
            &[(lo, hi)] => {
                if let Some(p) = cidr(lo, hi) {
                    return smallvec![(p, true)];
                }
            }
            &[(0, a), (b, u32::MAX)] if a < u32::MAX && b > 0 => {
                if let Some(p) = cidr(a + 1, b - 1) {
                    return smallvec![(Prefix { addr: 0, len: 0 }, true), (p, false)];
                }
            }
            _ => {}
        }
        let [out, _] = assign(self, 0, 0);
        out.1.into()
    }
}

/// A set's LPM assignments (`Set::prefix_assignments`): one or two for the usual shapes.
pub type Assignments = SmallVec<[(Prefix, bool); 2]>;

/// `lo..=hi` as one prefix, if it is one.
fn cidr(lo: u32, hi: u32) -> Option<Prefix> {
    let size = hi as u64 - lo as u64 + 1;
    (size.is_power_of_two() && lo as u64 % size == 0).then(|| Prefix { addr: lo, len: 32 - size.trailing_zeros() as u8 })
}

/// Minimal assignment lists for the subtree `addr/len`, given that the inherited state is
/// `false` (index 0) or `true` (index 1): `(cost, assignments)`.
fn assign(set: &Set, addr: u32, len: u8) -> [(usize, Vec<(Prefix, bool)>); 2] {
    let hi = addr | (u32::MAX.checked_shr(len as u32).unwrap_or(0));
    let here = Prefix { addr, len };
    match set.uniform(addr, hi) {
        Some(v) => [0, 1].map(|m| if v == (m == 1) { (0, Vec::new()) } else { (1, vec![(here, v)]) }),
        None => {
            // Mixed, so `len < 32`: a single address is always uniform.
            let half = 1u32 << (31 - len);
            let a = assign(set, addr, len + 1);
            let b = assign(set, addr | half, len + 1);
            [0usize, 1].map(|m| {
                let stay = a[m].0 + b[m].0;
                let flip = 1 + a[1 - m].0 + b[1 - m].0;
                if stay <= flip {
                    (stay, [a[m].1.as_slice(), b[m].1.as_slice()].concat())
                } else {
                    let mut list = vec![(here, m == 0)];
                    list.extend_from_slice(&a[1 - m].1);
                    list.extend_from_slice(&b[1 - m].1);
                    (flip, list)
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(addr: u32, len: u8) -> Prefix {
        Prefix { addr, len }
    }

    #[test]
    fn complement_and_intersect() {
        let s = Set::from_ranges(vec![(5, 9), (10, 12), (20, 20)]);
        assert_eq!(s.ranges(), &[(5, 12), (20, 20)]);
        assert_eq!(s.complement(30).ranges(), &[(0, 4), (13, 19), (21, 30)]);
        assert_eq!(s.complement(20).ranges(), &[(0, 4), (13, 19)]);
        assert!(Set::full(u32::MAX).complement(u32::MAX).is_empty());
        assert_eq!(Set::empty().complement(255), Set::full(255));
        let t = Set::range(8, 25);
        assert_eq!(s.intersect(&t).ranges(), &[(8, 12), (20, 20)]);
        assert!(s.contains(20) && s.contains(5) && !s.contains(13) && !s.contains(21));
    }

    #[test]
    fn masked_sets() {
        assert_eq!(Set::masked(0x0a000000, 0xff000000, 8).unwrap().ranges(), &[(0x0a000000, 0x0affffff)]);
        let s = Set::masked(0x0a000100, 0xff00ff00, 1024).unwrap();
        assert_eq!(s.ranges().len(), 256);
        assert_eq!(s.ranges()[1], (0x0a010100, 0x0a0101ff));
        assert!(Set::masked(1, 1, 1024).is_none());
        assert_eq!(Set::masked(0, 0, 1).unwrap(), Set::full(u32::MAX));
        // TCP flags SYN set, ACK clear, within a byte.
        let f = Set::masked(0x02, 0x12 | 0xffff_ff00, 256).unwrap();
        assert!((0..=255u32).all(|v| f.contains(v) == (v & 0x12 == 0x02)));
    }

    #[test]
    fn prefix_assignments_are_minimal_and_exact() {
        let ten = Set::range(0x0a000000, 0x0affffff);
        assert_eq!(ten.prefix_assignments().to_vec(), vec![(p(0x0a000000, 8), true)]);
        assert_eq!(ten.complement(u32::MAX).prefix_assignments().to_vec(), vec![(p(0, 0), true), (p(0x0a000000, 8), false)]);
        let hole = ten.intersect(&Set::range(0x0a010000, 0x0a01ffff).complement(u32::MAX));
        assert_eq!(hole.prefix_assignments().to_vec(), vec![(p(0x0a000000, 8), true), (p(0x0a010000, 16), false)]);
        assert_eq!(Set::full(u32::MAX).prefix_assignments().to_vec(), vec![(p(0, 0), true)]);
        assert!(Set::empty().prefix_assignments().is_empty());
        // The shortcuts agree with the search.
        for set in [Set::range(7, 7), Set::range(0, 0), Set::range(u32::MAX, u32::MAX), ten.clone(), Set::full(u32::MAX)] {
            for s in [set.clone(), set.complement(u32::MAX)] {
                let [general, _] = assign(&s, 0, 0);
                assert_eq!(s.prefix_assignments().to_vec(), general.1, "{s:?}");
            }
        }
        // An arbitrary range: check membership by the longest assignment.
        let r = Set::range(0x0a000003, 0x0a0000f0);
        let a = r.prefix_assignments();
        for ip in 0x09ffff00u32..0x0a000200 {
            let best = a
                .iter()
                .filter(|(q, _)| q.len == 0 || ip >> (32 - q.len) == q.addr >> (32 - q.len))
                .max_by_key(|(q, _)| q.len)
                .map_or(false, |&(_, v)| v);
            assert_eq!(best, r.contains(ip), "{ip:#x}");
        }
    }
}

//! Pure compilation of the ruleset model into per-hook LBVS classifier tables and an action table.
//!
//! `compile` flattens each filter hook (INPUT, FORWARD, OUTPUT) into an ordered list of compiled
//! rules, inlining user chains, then builds the LBVS field tables (`build`). Flattening:
//!
//! * A rule's conditions become, per field, one exact value `Set` (`sets`); everything LBVS
//!   does not classify becomes a residual `Check`, in match order.
//! * `-j X`: the jump rule (action `Enter`: a failed residual check skips the block) is
//!   followed by X's rules with the jump rule's *field* constraints ANDed in. RETURN in X
//!   skips to the end of X's block; RETURN in a built-in chain skips to the policy. Each
//!   skip also says how deep its block is, for rules inserted in place (`compile_in_chain`).
//! * `-g X`: as `-j X`, then a synthetic rule (the goto rule's field constraints, no counter)
//!   that skips to the end of the calling chain's block: where X's end returns to.
//! * `multiport --ports` is a disjunction: it splits its rule into mutually exclusive copies
//!   (sport in S; sport not in S and dport in S), same rule id and action; for a jump rule the
//!   inlined block is repeated under each copy.
//! * A stateful match (`limit`, `statistic --mode nth`) changes state only when every match
//!   before it passed; field matches after it are therefore kept as residual checks after it.
//!   Its state slot is per model rule, shared by every place the rule is inlined.
//! * A compiled rule whose conditions can never hold (an empty field set, `-o eth0` at INPUT
//!   where netfilter's output name is empty) is left out, with the block it would enter.
//!
//! `reference` is the linear classifier over the model and `lbvs` the software LBVS over the
//! compiled tables; the property tests check they agree.

mod build;
pub mod lbvs;
pub mod reference;
mod sets;
pub mod tables;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::model::{
    ConntrackMatch, Iface, Inv, Ipv4Mask, LogTarget, Match, MultiportDir, PortRange, Rule, StatisticMode, Table,
    TableKind, Target,
};
use crate::model::{ct_state, Chain, Policy, Ruleset};
use sets::Set;
use smallvec::SmallVec;
use tables::{ActionKind, Check, Compiled, Field, Hook};

/// Most compiled rules one hook may have (inlining can multiply rules).
pub const MAX_RULES_PER_HOOK: usize = 262_144;

/// A non-contiguous address mask expanding to more intervals than this stays a residual check.
const MAX_MASK_INTERVALS: u32 = 256;

/// Largest value of each field's domain (interfaces are not interval fields).
fn field_max(f: Field) -> u32 {
    match f {
        Field::Src | Field::Dst => u32::MAX,
        Field::Proto | Field::TcpFlags => 255,
        Field::Sport | Field::Dport | Field::Icmp => 65535,
        Field::CtState => 15,
        Field::InIface | Field::OutIface => 0,
    }
}

/// The field constraints of a compiled rule: a conjunction, one exact set per field plus the
/// interface literals.
#[derive(Debug, Clone, Default)]
struct Cond {
    /// The constrained fields' sets, in `Field` order (a field not listed is unconstrained;
    /// never the interface fields). A sparse list: a rule constrains few of the ten fields,
    /// and every compiled rule has one (a slot per field doubled the memory a compile writes).
    sets: SmallVec<[(Field, Set); 4]>,
    /// `(pattern, inverted)` literals on the input (`[0]`) and output (`[1]`) interface.
    ifaces: [Vec<(Iface, bool)>; 2],
    /// Known to match nothing.
    never: bool,
}

impl Cond {
    fn and_set(&mut self, f: Field, s: Set) {
        let at = self.sets.iter().position(|(g, _)| *g >= f).unwrap_or(self.sets.len());
        match self.sets.get_mut(at) {
            Some((g, old)) if *g == f => *old = old.intersect(&s),
            _ => self.sets.insert(at, (f, s)),
        }
        self.never |= self.sets[at].1.is_empty();
    }

    /// Whether it constrains nothing (the conditions of a built-in chain's own rules).
    fn is_true(&self) -> bool {
        !self.never && self.sets.is_empty() && self.ifaces.iter().all(Vec::is_empty)
    }

    fn and(&self, other: &Cond) -> Cond {
        let mut c = self.clone();
        c.never |= other.never;
        for (f, s) in &other.sets {
            c.and_set(*f, s.clone());
        }
        for k in 0..2 {
            c.ifaces[k].extend(other.ifaces[k].iter().cloned());
            c.never |= build::iface_assignments(&c.ifaces[k]).is_none();
        }
        c
    }
}

/// Where a compiled rule goes when taken, with block ends still symbolic.
#[derive(Debug, Clone)]
enum PreKind {
    Final(ActionKind),
    /// `SkipTo` the end of a block.
    SkipToEnd(usize),
    /// `Enter`, skipping to the end of a block when a check fails.
    EnterEnd(usize),
}

/// A compiled rule before block ends are known.
#[derive(Debug, Clone)]
struct PreRule {
    cond: Cond,
    checks: Vec<Check>,
    rule_id: Option<u32>,
    kind: PreKind,
}

/// State shared by the hooks of one compilation: LOG targets and stateful-match slots.
#[derive(Default)]
struct Shared {
    logs: Vec<LogTarget>,
    log_ids: HashMap<LogTarget, u32>,
    /// Keyed by the rule's address in the model and the match's index: one slot per model rule.
    states: HashMap<(usize, usize), u32>,
}

impl Shared {
    fn state_slot(&mut self, rule: &Rule, k: usize) -> u32 {
        let n = self.states.len() as u32;
        *self.states.entry((rule as *const Rule as usize, k)).or_insert(n)
    }

    fn log(&mut self, l: &LogTarget) -> u32 {
        if let Some(&i) = self.log_ids.get(l) {
            return i;
        }
        let i = self.logs.len() as u32;
        self.logs.push(l.clone());
        self.log_ids.insert(l.clone(), i);
        i
    }
}

/// Compiles the filter table of `rs` (IPv4). Pure: no syscalls, no I/O.
pub fn compile(rs: &Ruleset) -> Result<Compiled> {
    let empty;
    let table = match rs.table(TableKind::Filter) {
        Some(t) => t,
        None => {
            empty = Table::new(TableKind::Filter);
            &empty
        }
    };
    check_loops(table)?;
    let mut shared = Shared::default();
    let mut hooks = Vec::with_capacity(Hook::ALL.len());
    for hook in Hook::ALL {
        let chain = find_chain(table, hook.chain_name())?;
        let mut f = Flattener::new(table, hook, 0, &mut shared);
        f.out.reserve(chain.rules.len());
        f.emit(&chain.rules, &Cond::default(), 0)?;
        let Flattener { out, blocks, .. } = f;
        let policy_accept = chain.policy != Some(Policy::Drop);
        hooks.push(build::hook_table(hook, out, &blocks, policy_accept));
    }
    Ok(Compiled { hooks, logs: shared.logs, n_states: shared.states.len() as u32 })
}

/// The compiled rules that `rules`, just appended to `hook`'s built-in chain of filter table
/// `table` (`-A`; user chains they jump to are looked up there), add when the hook has `base`
/// compiled rules: they go after those, their matches as checks (`Flattener::into_checked`),
/// so that appending patches the datapath's image instead of rebuilding it
/// (`HookTable::lbvs_rules`). `reached`: no earlier rule of the chain always ends its walk
/// (else they add nothing). `None` when they need a rebuild: LOG (a new log target) or
/// limit/nth (new state slots).
pub fn compile_tail(
    table: &Table,
    hook: Hook,
    rules: &[Rule],
    reached: bool,
    base: u32,
) -> Result<Option<Vec<tables::Action>>> {
    if !reached {
        return Ok(Some(Vec::new()));
    }
    let mut shared = Shared::default();
    let mut f = Flattener::new(table, hook, base, &mut shared);
    f.emit(rules, &Cond::default(), 0)?;
    Ok(f.into_checked())
}

/// One place where a hook inlines a user chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inlined {
    /// The jumps that inline it, from the hook's built-in chain: each the jump rule's id and
    /// which of that rule's compiled copies it is (`multiport --ports` makes several), counted
    /// among the copies in the block of the jump before it.
    pub path: Vec<(u32, u32)>,
    /// The last jump is a `-g`: the block ends with the rule that returns for the chain.
    pub goto: bool,
    /// The compiled rules of the added rules there, their matches as checks
    /// (`Flattener::into_checked`).
    pub actions: Vec<tables::Action>,
}

/// The compiled rules that `rules` (`-I`, `-R` or `-A`), just added to user chain `chain` of
/// filter table `table`, add in each place `hook` inlines that chain, for the datapath to
/// insert them in place (`datapath::image::insert`): they carry the field constraints of
/// the jumps there. `reached`: no earlier rule of `chain` always ends its walk (else they add
/// nothing). `None` when they need a rebuild, as for `compile_tail`. Of `table`'s rules only
/// those a walk reaches that jump or go to a chain are looked at (`Outline::jump_rules`).
pub fn compile_in_chain(table: &Table, hook: Hook, chain: &str, rules: &[Rule], reached: bool) -> Result<Option<Vec<Inlined>>> {
    if !reached {
        return Ok(Some(Vec::new()));
    }
    let builtin = find_chain(table, hook.chain_name())?;
    let mut shared = Shared::default();
    let mut places = Vec::new();
    Flattener::new(table, hook, 0, &mut shared).inlined(&builtin.rules, &Cond::default(), chain, &mut Vec::new(), &mut places)?;
    let mut out = Vec::with_capacity(places.len());
    for (place, outer) in places {
        let mut shared = Shared::default();
        let mut f = Flattener::new(table, hook, 0, &mut shared);
        f.emit(rules, &outer, 0)?;
        let Some(actions) = f.into_checked() else { return Ok(None) };
        out.push(Inlined { actions, ..place });
    }
    Ok(Some(out))
}

/// `actions`, compiled rules to be inserted in place (`compile_tail` or `compile_in_chain`
/// with no rules before them), as rules that neither jump nor skip, which is all the
/// datapath's inserted rules may be: `None` when they cannot be. A jump whose checks are all
/// field checks (`FieldIn`, `Ifaces`) becomes a rule that counts and goes on: the rules of
/// its block carry its field constraints, so when it is not taken none of them is either,
/// as if the block were skipped. A skip to the very next rule (RETURN as the last rule of an
/// inlined chain) counts and goes on too. A jump with another check (conntrack, `-p tcp`'s
/// header check, a limit: evaluated once, not again for each rule of the block), and any
/// other skip (RETURN further up, a goto's return), need a rebuild. Docker's jumps, to an
/// empty chain or one ending in RETURN, insert in place.
pub fn flat_inserted(mut actions: Vec<tables::Action>) -> Option<Vec<tables::Action>> {
    let field_check = |c: &Check| matches!(c, Check::FieldIn { .. } | Check::Ifaces { .. });
    for (i, a) in actions.iter_mut().enumerate() {
        match a.kind {
            ActionKind::Enter { .. } if a.checks.iter().all(field_check) => a.kind = ActionKind::Continue,
            ActionKind::SkipTo { to, .. } if to as usize == i + 1 => a.kind = ActionKind::Continue,
            ActionKind::Enter { .. } | ActionKind::SkipTo { .. } => return None,
            _ => {}
        }
    }
    Some(actions)
}

fn find_chain<'a>(table: &'a Table, name: &str) -> Result<&'a Chain> {
    table.chain(name).ok_or_else(|| Error::Other(anyhow::anyhow!("chain `{name}' is referenced but does not exist")))
}

/// Refuses jump/goto cycles reachable from a built-in chain, as the kernel's
/// `mark_source_chains` does when the table is loaded (iptables-legacy's behaviour): jumps after
/// an unconditional ACCEPT/DROP/RETURN are not followed, so a loop behind one is accepted.
pub fn check_loops(table: &Table) -> Result<()> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let index: HashMap<&str, usize> = table.chains.iter().enumerate().map(|(i, c)| (c.name.as_str(), i)).collect();
    let targets = |c: &Chain| -> Vec<usize> {
        let live = c.rules.iter().position(Rule::ends_walk).map_or(c.rules.len(), |p| p + 1);
        c.rules[..live]
            .iter()
            .filter_map(|r| match &r.target {
                Target::Jump(x) | Target::Goto(x) => index.get(x.as_str()).copied(),
                _ => None,
            })
            .collect()
    };
    let mut mark = vec![Mark::New; table.chains.len()];
    for root in (0..table.chains.len()).filter(|&i| table.chains[i].is_builtin()) {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative DFS: (chain, its successors, next successor).
        let mut stack = vec![(root, targets(&table.chains[root]), 0usize)];
        mark[root] = Mark::OnPath;
        while let Some(top) = stack.last_mut() {
            let Some(&next) = top.1.get(top.2) else {
                mark[top.0] = Mark::Done;
                stack.pop();
                continue;
            };
            top.2 += 1;
            match mark[next] {
                Mark::OnPath => return Err(Error::State("Too many levels of symbolic links.".into())),
                Mark::Done => {}
                Mark::New => {
                    mark[next] = Mark::OnPath;
                    stack.push((next, targets(&table.chains[next]), 0));
                }
            }
        }
    }
    Ok(())
}

struct Flattener<'a, 's> {
    table: &'a Table,
    hook: Hook,
    out: Vec<PreRule>,
    /// Compiled rules of the hook before `out[0]` (appended rules: `compile_tail`).
    offset: u32,
    /// Block 0 is the built-in chain.
    blocks: Vec<Block>,
    shared: &'s mut Shared,
}

/// A block of compiled rules: an inlined chain, which a RETURN or a failed jump skips.
#[derive(Debug, Clone, Copy)]
struct Block {
    /// Its end (a compiled index) once closed.
    end: Option<u32>,
    /// How many jumps deep it is inlined (0: the built-in chain).
    depth: u32,
}

impl<'a, 's> Flattener<'a, 's> {
    fn new(table: &'a Table, hook: Hook, offset: u32, shared: &'s mut Shared) -> Self {
        let blocks = vec![Block { end: Some(tables::POLICY), depth: 0 }];
        Flattener { table, hook, out: Vec::new(), offset, blocks, shared }
    }

    fn new_block(&mut self, depth: u32) -> usize {
        self.blocks.push(Block { end: None, depth });
        self.blocks.len() - 1
    }

    fn close_block(&mut self, b: usize) {
        self.blocks[b].end = Some(self.offset + self.out.len() as u32);
    }

    /// The compiled rules emitted, each field match a `FieldIn` check and its interface
    /// matches an `Ifaces` one, for the datapath to add them in place of a rebuild; `None`
    /// when they need one: LOG (a new log target) or limit/nth (new state slots).
    fn into_checked(self) -> Option<Vec<tables::Action>> {
        if !self.shared.logs.is_empty() || !self.shared.states.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(self.out.len());
        for p in self.out {
            let fields = p.cond.sets.iter().filter(|(f, s)| !s.is_full(field_max(*f)));
            let fields = fields.map(|(f, s)| Check::FieldIn { field: *f, ranges: s.ranges().to_vec() });
            let [inp, outp] = p.cond.ifaces;
            let ifaces = [(false, inp), (true, outp)].into_iter().filter(|(_, l)| !l.is_empty());
            let ifaces = ifaces.map(|(out, lits)| Check::Ifaces { out, lits });
            let checks = fields.chain(ifaces).chain(p.checks).collect();
            out.push(tables::Action { rule_id: p.rule_id, kind: build::resolve(p.kind, &self.blocks), checks });
        }
        Some(out)
    }

    /// Finds where `emit(rules, outer, ..)` inlines chain `target`: per place, the jumps that
    /// lead there from `path` on and whether the last is a goto (an `Inlined` without its
    /// actions), and the field constraints the chain's rules carry there. Follows `emit` exactly: the same live rules,
    /// the same compiled copies of each jump rule.
    fn inlined(
        &mut self,
        rules: &[Rule],
        outer: &Cond,
        target: &str,
        path: &mut Vec<(u32, u32)>,
        out: &mut Vec<(Inlined, Cond)>,
    ) -> Result<()> {
        let live = rules.iter().position(Rule::ends_walk).map_or(rules.len(), |p| p + 1);
        for rule in &rules[..live] {
            let (Target::Jump(x) | Target::Goto(x)) = &rule.target else { continue };
            let (alts, _) = self.rule_conds(rule)?;
            let mut copy = 0;
            for alt in alts {
                let cond = outer.and(&alt);
                if cond.never {
                    continue;
                }
                path.push((rule.id, copy));
                copy += 1;
                if x == target {
                    let goto = matches!(rule.target, Target::Goto(_));
                    out.push((Inlined { path: path.clone(), goto, actions: Vec::new() }, cond));
                } else {
                    let inner = find_chain(self.table, x)?;
                    self.inlined(&inner.rules, &cond, target, path, out)?;
                }
                path.pop();
            }
        }
        Ok(())
    }

    fn push(&mut self, r: PreRule) -> Result<()> {
        if self.out.len() >= MAX_RULES_PER_HOOK {
            return Err(Error::State(format!(
                "Ruleset too large: chain {} needs more than {MAX_RULES_PER_HOOK} rules once user chains are inlined.",
                self.hook.chain_name()
            )));
        }
        self.out.push(r);
        Ok(())
    }

    /// Emits a chain's `rules` under the conditions `outer`, as block `block` (whose end is
    /// where RETURN goes, and where the end of a chain it goes to with `-g` returns).
    fn emit(&mut self, rules: &[Rule], outer: &Cond, block: usize) -> Result<()> {
        // Rules after one that always ends the chain are unreachable (and `check_loops` did not
        // follow their jumps), so they are not inlined.
        let live = rules.iter().position(Rule::ends_walk).map_or(rules.len(), |p| p + 1);
        let unconditional = outer.is_true();
        for rule in &rules[..live] {
            let (alts, mut rule_checks) = self.rule_conds(rule)?;
            let copies = alts.len();
            for (copy, alt) in alts.into_iter().enumerate() {
                let cond = if unconditional { alt } else { outer.and(&alt) };
                if cond.never {
                    continue;
                }
                // (the last copy takes them: one allocation less per rule)
                let checks = if copy + 1 == copies { std::mem::take(&mut rule_checks) } else { rule_checks.clone() };
                let id = Some(rule.id);
                let fin = |k| PreKind::Final(k);
                let kind = match &rule.target {
                    Target::None => fin(ActionKind::Continue),
                    Target::Accept => fin(ActionKind::Accept),
                    Target::Drop => fin(ActionKind::Drop),
                    Target::Reject(w) => fin(ActionKind::Reject(*w)),
                    Target::Log(l) => fin(ActionKind::Log(self.shared.log(l))),
                    Target::Mark(m) => fin(ActionKind::Mark { value: m.value, mask: m.mask }),
                    Target::Return => PreKind::SkipToEnd(block),
                    Target::Jump(x) | Target::Goto(x) => {
                        let goto = matches!(rule.target, Target::Goto(_));
                        let inner = find_chain(self.table, x)?;
                        // A goto's block includes the synthetic rule after the chain.
                        let depth = self.blocks[block].depth + 1;
                        let outer_block = self.new_block(depth);
                        let x_block = if goto { self.new_block(depth) } else { outer_block };
                        let kind = PreKind::EnterEnd(outer_block);
                        self.push(PreRule { cond: cond.clone(), checks, rule_id: id, kind })?;
                        self.emit(&inner.rules, &cond, x_block)?;
                        if goto {
                            self.close_block(x_block);
                            self.push(PreRule { cond, checks: Vec::new(), rule_id: None, kind: PreKind::SkipToEnd(block) })?;
                        }
                        self.close_block(outer_block);
                        continue;
                    }
                };
                self.push(PreRule { cond, checks, rule_id: id, kind })?;
            }
        }
        Ok(())
    }

    /// A rule's conditions: mutually exclusive conjunctions (more than one only with
    /// `multiport --ports`) and the residual checks, in match order.
    fn rule_conds(&mut self, rule: &Rule) -> Result<(Vec<Cond>, Vec<Check>)> {
        let mut base = Cond::default();
        let mut checks = Vec::new();
        let ip = &rule.ip;
        for (f, a) in [(Field::Src, ip.src), (Field::Dst, ip.dst)] {
            if let Some(a) = a {
                match mask_set(a.value) {
                    Some(s) => base.and_set(f, if a.invert { s.complement(u32::MAX) } else { s }),
                    None => checks.push(Check::AddrMask { field: f, value: a.value.addr, mask: a.value.mask, invert: a.invert }),
                }
            }
        }
        for (k, lit) in [&ip.in_iface, &ip.out_iface].into_iter().enumerate() {
            let Some(lit) = lit else { continue };
            // Netfilter compares an empty name where the hook has no such device.
            let absent = matches!((k, self.hook), (0, Hook::Output) | (1, Hook::Input));
            if absent {
                base.never |= !(lit.value.matches("") ^ lit.invert);
            } else {
                base.ifaces[k].push((lit.value.clone(), lit.invert));
                base.never |= build::iface_assignments(&base.ifaces[k]).is_none();
            }
        }
        if let Some(p) = ip.proto.filter(|p| p.value != 0) {
            base.and_set(Field::Proto, inv_set(Set::range(p.value as u32, p.value as u32), p.invert, 255));
        }
        if let Some(f) = ip.fragment {
            checks.push(Check::Fragment(f));
        }

        let mut c = Conds { alts: vec![base], checks, stateful: false, l4: false };
        for (k, m) in rule.matches.iter().enumerate() {
            match m {
                Match::Tcp(t) => {
                    c.l4();
                    c.field(Field::Sport, t.sport.map(port_set));
                    c.field(Field::Dport, t.dport.map(port_set));
                    c.field(
                        Field::TcpFlags,
                        t.flags.map(|f| {
                            let (comp, mask) = (f.value.comp as u32, f.value.mask as u32);
                            let s = if comp & !mask != 0 {
                                Set::empty()
                            } else {
                                Set::masked(comp, mask | 0xffff_ff00, 256).expect("a byte mask has at most 128 intervals")
                            };
                            inv_set(s, f.invert, 255)
                        }),
                    );
                    if let Some(o) = t.option {
                        c.checks.push(Check::TcpOption { kind: o.value, invert: o.invert });
                    }
                }
                Match::Udp(u) => {
                    c.l4();
                    c.field(Field::Sport, u.sport.map(port_set));
                    c.field(Field::Dport, u.dport.map(port_set));
                }
                Match::Icmp(i) => {
                    c.l4();
                    let s = if i.icmp_type == crate::model::IcmpMatch::ANY_TYPE {
                        Set::full(65535)
                    } else {
                        let t = (i.icmp_type as u32) << 8;
                        Set::range(t | i.code_lo as u32, t | i.code_hi as u32)
                    };
                    c.field(Field::Icmp, Some(inv_set(s, i.invert, 65535)));
                }
                Match::Multiport(mp) => {
                    c.l4();
                    let s = Set::from_ranges(mp.ports.iter().map(|r| (r.lo as u32, r.hi as u32)).collect());
                    let out = s.complement(65535);
                    match (mp.dir, mp.invert) {
                        (MultiportDir::Source, inv) => c.field(Field::Sport, Some(inv_set(s, inv, 65535))),
                        (MultiportDir::Destination, inv) => c.field(Field::Dport, Some(inv_set(s, inv, 65535))),
                        (MultiportDir::Either, true) => {
                            c.field(Field::Sport, Some(out.clone()));
                            c.field(Field::Dport, Some(out));
                        }
                        (MultiportDir::Either, false) if c.stateful => {
                            c.checks.push(Check::PortEither { ranges: s.ranges().to_vec() })
                        }
                        (MultiportDir::Either, false) => c.split_either(s, out),
                    }
                }
                Match::Iprange(r) => {
                    for (f, o) in [(Field::Src, r.src), (Field::Dst, r.dst)] {
                        c.field(f, o.map(|i| inv_set(Set::range(i.value.0, i.value.1), i.invert, u32::MAX)));
                    }
                }
                Match::State(s) => c.ct_state(&ConntrackMatch { state: Some(Inv::new(s.state, s.invert)), ..Default::default() }),
                Match::Conntrack(ct) => c.ct_state(ct),
                Match::Comment(_) => {}
                Match::Mark(mm) => c.checks.push(Check::Mark { value: mm.mark, mask: mm.mask, invert: mm.invert }),
                Match::Addrtype(a) => {
                    let (src, dst) = reference::addrtype_parts(a);
                    c.checks.push(Check::Addrtype {
                        src,
                        dst,
                        limit_iface_in: a.limit_iface_in,
                        limit_iface_out: a.limit_iface_out,
                    })
                }
                Match::Length(l) => c.checks.push(Check::Length { lo: l.lo, hi: l.hi, invert: l.invert }),
                Match::Ttl(t) => c.checks.push(Check::Ttl { op: t.op, value: t.value }),
                Match::Mac(mm) => c.checks.push(Check::MacSource { addr: mm.addr, invert: mm.invert }),
                Match::Pkttype(t) => c.checks.push(Check::Pkttype { pkttype: t.pkttype, invert: t.invert }),
                Match::Tos(t) => c.checks.push(Check::Tos { value: t.value, mask: t.mask, invert: t.invert }),
                Match::Dscp(d) => c.checks.push(Check::Dscp { value: d.dscp, invert: d.invert }),
                Match::Limit(l) => {
                    let state = self.shared.state_slot(rule, k);
                    c.checks.push(Check::Limit { state, avg: l.avg, burst: l.burst });
                    c.stateful = true;
                }
                Match::Statistic(s) => match s.mode {
                    StatisticMode::Random { probability } => {
                        c.checks.push(Check::StatisticRandom { probability, invert: s.invert })
                    }
                    StatisticMode::Nth { every, packet } => {
                        let state = self.shared.state_slot(rule, k);
                        c.checks.push(Check::StatisticNth { state, every, packet, invert: s.invert });
                        c.stateful = true;
                    }
                },
            }
        }
        c.alts.retain(|a| !a.never);
        Ok((c.alts, c.checks))
    }
}

/// A rule's conditions while its matches are read.
struct Conds {
    alts: Vec<Cond>,
    checks: Vec<Check>,
    /// A stateful match was seen: later field matches become checks after it.
    stateful: bool,
    /// `Check::L4Header` is already in `checks`.
    l4: bool,
}

impl Conds {
    fn l4(&mut self) {
        if !self.l4 {
            self.checks.push(Check::L4Header);
            self.l4 = true;
        }
    }

    fn field(&mut self, f: Field, s: Option<Set>) {
        let Some(s) = s else { return };
        if self.stateful {
            self.checks.push(Check::FieldIn { field: f, ranges: s.ranges().to_vec() });
        } else {
            for a in &mut self.alts {
                a.and_set(f, s.clone());
            }
        }
    }

    /// `--ports S`: sport in S, or (exclusively) sport not in S and dport in S.
    fn split_either(&mut self, s: Set, out: Set) {
        let mut next = Vec::with_capacity(self.alts.len() * 2);
        for a in self.alts.drain(..) {
            let mut first = a.clone();
            first.and_set(Field::Sport, s.clone());
            let mut second = a;
            second.and_set(Field::Sport, out.clone());
            second.and_set(Field::Dport, s.clone());
            next.extend([first, second].into_iter().filter(|c| !c.never));
        }
        if next.is_empty() {
            // Keep one impossible alternative so the rule is known to match nothing.
            next.push(Cond { never: true, ..Cond::default() });
        }
        self.alts = next;
    }

    /// A plain `--ctstate` without NAT states is the `CtState` field; anything else is checked
    /// as a whole (`conntrack_mt` treats untracked packets differently when other options are
    /// present, so the state cannot be split off).
    fn ct_state(&mut self, ct: &ConntrackMatch) {
        let plain = ConntrackMatch { state: ct.state, ..Default::default() };
        match ct.state {
            Some(s) if *ct == plain && s.value & (ct_state::SNAT | ct_state::DNAT) == 0 => {
                let bits = Set::from_ranges((0..16u32).filter(|i| s.value & (1 << i) != 0).map(|i| (i, i)).collect());
                self.field(Field::CtState, Some(inv_set(bits, s.invert, 15)));
            }
            _ => self.checks.push(Check::Conntrack(Box::new(ct.clone()))),
        }
    }
}

fn inv_set(s: Set, invert: bool, max: u32) -> Set {
    if invert {
        s.complement(max)
    } else {
        s
    }
}

fn port_set(r: Inv<PortRange>) -> Set {
    inv_set(Set::range(r.value.lo as u32, r.value.hi as u32), r.invert, 65535)
}

/// The addresses an `-s`/`-d` value accepts, if it expands to few enough intervals.
fn mask_set(m: Ipv4Mask) -> Option<Set> {
    Set::masked(m.addr & m.mask, m.mask, MAX_MASK_INTERVALS as usize)
}

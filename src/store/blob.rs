//! The stored form of the ruleset model (what the `bpfipt_blob` chunks hold, bincode): the
//! model's tables and chains, each chain's rules as one opaque block of encoded rules with
//! their ids and ends alongside. `-A` to a built-in chain reads the outline (chains,
//! policies, ids) and appends the new rules' encoding to one block, `-I` at its head puts them
//! before it, and `-D` in it finds the rule by its encoding and cuts it out, never decoding or
//! re-encoding the rules already stored; everything else decodes the whole model.

use std::collections::HashMap;

use anyhow::Context;
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::model::{Chain, Counters, Policy, Rule, Ruleset, Table, TableKind};

/// The stored ruleset with every chain's rules still encoded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outline {
    tables: Vec<StoredTable>,
    next_rule_id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredTable {
    kind: TableKind,
    chains: Vec<StoredChain>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredChain {
    name: String,
    policy: Option<Policy>,
    counters: Counters,
    rules: RuleBlock,
}

/// What a change did to the rules the datapath enforces (`Outline::filter_change`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterChange {
    /// Nothing: only chains no packet reaches changed.
    None,
    /// Only built-in chains' policies.
    Policies,
    /// Rules a packet can reach.
    Rules,
}

/// A chain's rules: `ids[i]` is rule i's id, `bytes` the rules' encodings one after another,
/// rule i's ending at `ends[i]`, `first_end` the index of the first rule that always ends the
/// chain's walk, if any.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RuleBlock {
    ids: Vec<u32>,
    ends: Vec<u32>,
    first_end: Option<u32>,
    bytes: Bytes,
}

/// A rule's encoding (bincode, fixed-size integers) without its id (the first field, 4 bytes)
/// and counters (the last, two u64): equal for two rules exactly when `Rule::same_spec` holds.
fn spec_bytes(encoded: &[u8]) -> &[u8] {
    &encoded[4..encoded.len() - 16]
}

/// Bytes encoded as one length and the raw bytes (serde's default for `Vec<u8>` goes element
/// by element, which costs a millisecond per megabyte).
#[derive(Debug, Clone, Default)]
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

impl RuleBlock {
    fn push(&mut self, r: &Rule) -> bincode::Result<()> {
        if self.first_end.is_none() && r.ends_walk() {
            self.first_end = Some(self.ids.len() as u32);
        }
        bincode::serialize_into(&mut self.bytes.0, r)?;
        self.ids.push(r.id);
        self.ends.push(self.bytes.0.len() as u32);
        Ok(())
    }

    /// The encoding of rule i.
    fn encoded(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes.0[start..self.ends[i] as usize]
    }

    /// Removes the rules at `at` (distinct indices), returning them decoded; None (nothing
    /// changed) when an index is out of range.
    fn remove(&mut self, at: &[usize]) -> bincode::Result<Option<Vec<Rule>>> {
        if at.iter().any(|&i| i >= self.ids.len()) {
            return Ok(None);
        }
        let removed = at.iter().map(|&i| bincode::deserialize(self.encoded(i))).collect::<bincode::Result<Vec<Rule>>>()?;
        let mut gone = at.to_vec();
        gone.sort_unstable();
        let mut kept = RuleBlock { ids: Vec::with_capacity(self.ids.len()), ends: Vec::with_capacity(self.ids.len()), ..Default::default() };
        kept.bytes.0.reserve(self.bytes.0.len());
        for i in (0..self.ids.len()).filter(|i| gone.binary_search(i).is_err()) {
            kept.bytes.0.extend_from_slice(self.encoded(i));
            kept.ids.push(self.ids[i]);
            kept.ends.push(kept.bytes.0.len() as u32);
        }
        // where rule i of the block is in the kept one
        let moved = |i: usize| i - gone.iter().filter(|&&g| g < i).count();
        kept.first_end = match self.first_end {
            // the walk's end went: the next rule that ends it, if any
            Some(e) if gone.binary_search(&(e as usize)).is_ok() => kept.first_end_from(moved(e as usize))?,
            Some(e) => Some(moved(e as usize) as u32),
            None => None,
        };
        *self = kept;
        Ok(Some(removed))
    }

    /// The first rule from index `from` on that always ends the chain's walk (decoding them).
    fn first_end_from(&self, from: usize) -> bincode::Result<Option<u32>> {
        for i in from..self.ids.len() {
            if bincode::deserialize::<Rule>(self.encoded(i))?.ends_walk() {
                return Ok(Some(i as u32));
            }
        }
        Ok(None)
    }

    /// Puts `rules` in place of the `n` rules from index `at` (n = 0: before the rule at
    /// `at`, or at the end), re-encoding none of the others; returns the rules taken out,
    /// decoded. None, nothing changed, when the block has no such rules.
    fn splice(&mut self, at: usize, n: usize, rules: &[Rule]) -> bincode::Result<Option<Vec<Rule>>> {
        if at + n > self.ids.len() {
            return Ok(None);
        }
        let removed = (at..at + n).map(|i| bincode::deserialize(self.encoded(i))).collect::<bincode::Result<Vec<Rule>>>()?;
        let mut new = RuleBlock::default();
        for r in rules {
            new.push(r)?;
        }
        let start = |b: &RuleBlock, i: usize| if i == 0 { 0 } else { b.ends[i - 1] };
        let (from, to) = (start(self, at), start(self, at + n));
        let shift = new.bytes.0.len() as i64 - (to - from) as i64;
        for e in &mut self.ends[at + n..] {
            *e = (*e as i64 + shift) as u32;
        }
        self.ends.splice(at..at + n, new.ends.iter().map(|e| e + from));
        self.ids.splice(at..at + n, new.ids);
        self.bytes.0.splice(from as usize..to as usize, new.bytes.0);
        let k = rules.len();
        self.first_end = match (self.first_end, new.first_end) {
            (Some(e), _) if (e as usize) < at => Some(e),
            (_, Some(e)) => Some((at + e as usize) as u32),
            (Some(e), None) if e as usize >= at + n => Some((e as usize - n + k) as u32),
            // the walk's end was taken out: the next rule that ends it, if any
            (Some(_), None) => self.first_end_from(at + k)?,
            (None, None) => None,
        };
        Ok(Some(removed))
    }

    fn decode(&self) -> bincode::Result<Vec<Rule>> {
        let mut rest = &self.bytes.0[..];
        // (collecting a Result would lose the size and grow the vector by copies)
        let mut rules = Vec::with_capacity(self.ids.len());
        for _ in &self.ids {
            rules.push(bincode::deserialize_from(&mut rest)?);
        }
        if !rest.is_empty() {
            return Err(Box::new(bincode::ErrorKind::Custom("trailing bytes after a chain's rules".into())));
        }
        Ok(rules)
    }
}

impl StoredTable {
    /// The table, its chains' rules decoded or (`rules` false) left out.
    fn decode(&self, rules: bool) -> crate::error::Result<Table> {
        let mut t = self.chains();
        if rules {
            for (c, stored) in t.chains.iter_mut().zip(&self.chains) {
                c.rules = stored.rules.decode().context("decoding the stored rules")?;
            }
        }
        Ok(t)
    }

    /// The table with its chains and policies but no rules.
    fn chains(&self) -> Table {
        let chains =
            self.chains.iter().map(|c| Chain { name: c.name.clone(), policy: c.policy, counters: c.counters, rules: Vec::new() }).collect();
        Table { kind: self.kind, chains }
    }
}

impl Outline {
    pub fn encode(rs: &Ruleset) -> bincode::Result<Outline> {
        let mut tables = Vec::with_capacity(rs.tables.len());
        for t in &rs.tables {
            let mut chains = Vec::with_capacity(t.chains.len());
            for c in &t.chains {
                let mut rules = RuleBlock::default();
                for r in &c.rules {
                    rules.push(r)?;
                }
                chains.push(StoredChain { name: c.name.clone(), policy: c.policy, counters: c.counters, rules });
            }
            tables.push(StoredTable { kind: t.kind, chains });
        }
        Ok(Outline { tables, next_rule_id: rs.next_rule_id })
    }

    /// The whole model, every chain's rules decoded.
    pub fn decode(&self) -> crate::error::Result<Ruleset> {
        self.decode_but(&[])
    }

    /// The model with the rules of every table but `flushed` decoded (those keep their
    /// chains, without rules: a restore replaces them).
    pub fn decode_but(&self, flushed: &[TableKind]) -> crate::error::Result<Ruleset> {
        let tables = self.tables.iter().map(|t| t.decode(!flushed.contains(&t.kind))).collect::<crate::error::Result<_>>()?;
        Ok(Ruleset { tables, next_rule_id: self.next_rule_id })
    }

    /// Table `kind` with every chain's rules decoded, if it exists.
    pub fn decode_table(&self, kind: TableKind) -> crate::error::Result<Option<Table>> {
        self.tables.iter().find(|t| t.kind == kind).map(|t| t.decode(true)).transpose()
    }

    /// The ids of every stored rule.
    pub fn rule_ids(&self) -> Vec<u32> {
        self.tables.iter().flat_map(|t| &t.chains).flat_map(|c| c.rules.ids.iter().copied()).collect()
    }

    /// `Ruleset::is_pass_all` of the stored ruleset.
    pub fn is_pass_all(&self) -> bool {
        self.tables.iter().flat_map(|t| &t.chains).all(|c| c.rules.ids.is_empty() && c.policy != Some(Policy::Drop))
    }

    /// How the filter table of `new` (this outline after a change) differs from this one in
    /// what the datapath enforces: the built-in chains' policies, and the rules (ids, specs,
    /// stored counters) of the chains `reachable` from them in `new`
    /// (`Table::reachable_chains`). When those rules are equal, the same chains are reachable
    /// here too (the same rules jump to the same names), so nothing else can differ.
    pub fn filter_change(&self, new: &Outline, reachable: &[&str]) -> FilterChange {
        fn filter(o: &Outline) -> &[StoredChain] {
            o.tables.iter().find(|t| t.kind == TableKind::Filter).map_or(&[], |t| &t.chains)
        }
        fn by_name(chains: &[StoredChain]) -> HashMap<&str, &StoredChain> {
            chains.iter().map(|c| (c.name.as_str(), c)).collect()
        }
        let (old, new) = (by_name(filter(self)), by_name(filter(new)));
        let mut policies = false;
        for name in reachable {
            match (old.get(name), new.get(name)) {
                (Some(a), Some(b)) if a.rules.ids == b.rules.ids && a.rules.bytes.0 == b.rules.bytes.0 => {
                    policies |= a.policy != b.policy;
                }
                _ => return FilterChange::Rules,
            }
        }
        if policies {
            FilterChange::Policies
        } else {
            FilterChange::None
        }
    }

    /// Table `kind` with its chains and policies but no rules (what resolving and appending
    /// rules needs), if it exists.
    pub fn chains_of(&self, kind: TableKind) -> Option<Table> {
        self.tables.iter().find(|t| t.kind == kind).map(StoredTable::chains)
    }

    /// Gives table `kind` the chains of `table` (names, policies, counters), in its order: a
    /// chain it had keeps its stored rules, a new one has none, and one `table` lacks is gone
    /// (with its rules: only for changes of the chains alone, `-N` and `-P`, made on
    /// `chains_of`).
    pub fn set_chains(&mut self, kind: TableKind, table: &Table) {
        let Some(t) = self.tables.iter_mut().find(|t| t.kind == kind) else { return };
        let mut old: HashMap<String, StoredChain> = t.chains.drain(..).map(|c| (c.name.clone(), c)).collect();
        t.chains = table
            .chains
            .iter()
            .map(|c| match old.remove(&c.name) {
                Some(kept) => StoredChain { policy: c.policy, counters: c.counters, ..kept },
                None => StoredChain { name: c.name.clone(), policy: c.policy, counters: c.counters, rules: RuleBlock::default() },
            })
            .collect();
    }

    pub fn next_rule_id(&self) -> u32 {
        self.next_rule_id
    }

    pub fn set_next_rule_id(&mut self, id: u32) {
        self.next_rule_id = id;
    }

    fn chain(&self, kind: TableKind, chain: &str) -> Option<&StoredChain> {
        self.tables.iter().filter(|t| t.kind == kind).flat_map(|t| &t.chains).find(|c| c.name == chain)
    }

    fn chain_mut(&mut self, kind: TableKind, chain: &str) -> Option<&mut StoredChain> {
        self.tables.iter_mut().filter(|t| t.kind == kind).flat_map(|t| &mut t.chains).find(|c| c.name == chain)
    }

    /// The rules of chain `chain` of table `kind`, decoded (None if there is no such chain).
    pub fn rules_of(&self, kind: TableKind, chain: &str) -> Option<crate::error::Result<Vec<Rule>>> {
        let c = self.chain(kind, chain)?;
        Some(c.rules.decode().context("decoding the stored rules").map_err(Into::into))
    }

    /// The index of the first rule of chain `chain` of table `kind` that is `rule`
    /// (`Rule::same_spec`), those at `skip` left out; compared encoded, none decoded. None if
    /// there is none (or no such chain).
    pub fn find_spec(&self, kind: TableKind, chain: &str, rule: &Rule, skip: &[usize]) -> bincode::Result<Option<usize>> {
        let Some(c) = self.chain(kind, chain) else { return Ok(None) };
        let wanted = bincode::serialize(rule)?;
        let wanted = spec_bytes(&wanted);
        Ok((0..c.rules.ids.len()).find(|i| !skip.contains(i) && spec_bytes(c.rules.encoded(*i)) == wanted))
    }

    /// Removes the rules at indices `at` (distinct) of chain `chain` of table `kind`,
    /// re-encoding none of the others; returns them decoded. None, nothing changed, when there
    /// is no such chain or rule.
    pub fn remove(&mut self, kind: TableKind, chain: &str, at: &[usize]) -> bincode::Result<Option<Vec<Rule>>> {
        let Some(c) = self.chain_mut(kind, chain) else { return Ok(None) };
        c.rules.remove(at)
    }

    /// Puts `rules` (ids assigned) in place of the `n` rules from index `at` of chain `chain`
    /// of table `kind` (n = 0: before the rule at `at`, or at the end), re-encoding none of
    /// the others. Returns whether the chain's walk reaches them (no earlier rule always ends
    /// it) and the rules taken out, decoded; None, nothing changed, when there is no such
    /// chain or rule.
    pub fn splice(&mut self, kind: TableKind, chain: &str, at: usize, n: usize, rules: &[Rule]) -> bincode::Result<Option<(bool, Vec<Rule>)>> {
        let Some(c) = self.chain_mut(kind, chain) else { return Ok(None) };
        let reached = c.rules.first_end.is_none_or(|e| e as usize >= at);
        Ok(c.rules.splice(at, n, rules)?.map(|removed| (reached, removed)))
    }

    /// The id of the rule at index `i` of chain `chain` of table `kind`.
    pub fn rule_id(&self, kind: TableKind, chain: &str, i: usize) -> Option<u32> {
        self.chain(kind, chain)?.rules.ids.get(i).copied()
    }

    /// How many rules chain `chain` of table `kind` has (None: no such chain).
    pub fn chain_len(&self, kind: TableKind, chain: &str) -> Option<usize> {
        Some(self.chain(kind, chain)?.rules.ids.len())
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends `rules` to filter chain `chain`: whether the walk reaches them (None: no chain).
    fn append(o: &mut Outline, chain: &str, rules: &[Rule]) -> Option<bool> {
        let len = o.chain_len(TableKind::Filter, chain)?;
        o.splice(TableKind::Filter, chain, len, 0, rules).expect("encodes").map(|(reached, _)| reached)
    }
    use crate::model::{Inv, IpHeader, Ipv4Mask, Target};

    fn rule(id: u32, src: u32, target: Target) -> Rule {
        let ip = IpHeader { src: Some(Inv::new(Ipv4Mask::new(src, u32::MAX), false)), ..Default::default() };
        Rule { id, ip, matches: Vec::new(), target, counters: Counters { packets: id as u64, bytes: 1 } }
    }

    /// Only the chains a packet reaches count as a change for the datapath: edits of a chain
    /// nothing jumps to do not, a policy is told apart, and a jump makes its chain count.
    #[test]
    fn filter_change_looks_at_reachable_chains_only() {
        let mut rs = Ruleset::default();
        let t = rs.table_mut(TableKind::Filter);
        t.add_user_chain(Chain::user("U"));
        t.add_user_chain(Chain::user("V"));
        t.chain_mut("INPUT").expect("INPUT").rules.push(rule(0, 1, Target::Jump("U".into())));
        t.chain_mut("U").expect("U").rules.push(rule(1, 2, Target::Drop));
        let before = Outline::encode(&rs).expect("encodes");
        let change = |rs: &Ruleset| {
            let reachable = rs.table(TableKind::Filter).expect("filter").reachable_chains();
            before.filter_change(&Outline::encode(rs).expect("encodes"), &reachable)
        };
        assert_eq!(rs.table(TableKind::Filter).expect("filter").reachable_chains(), ["INPUT", "FORWARD", "OUTPUT", "U"]);
        assert_eq!(change(&rs), FilterChange::None);

        let mut unreached = rs.clone();
        unreached.table_mut(TableKind::Filter).chain_mut("V").expect("V").rules.push(rule(2, 3, Target::Accept));
        unreached.table_mut(TableKind::Filter).add_user_chain(Chain::user("W"));
        assert_eq!(change(&unreached), FilterChange::None);

        let mut policy = rs.clone();
        policy.table_mut(TableKind::Filter).chain_mut("OUTPUT").expect("OUTPUT").policy = Some(Policy::Drop);
        assert_eq!(change(&policy), FilterChange::Policies);

        let mut reached = rs.clone();
        reached.table_mut(TableKind::Filter).chain_mut("U").expect("U").rules.push(rule(2, 3, Target::Accept));
        assert_eq!(change(&reached), FilterChange::Rules);

        let mut jump = unreached.clone();
        jump.table_mut(TableKind::Filter).chain_mut("U").expect("U").rules[0].target = Target::Jump("V".into());
        assert_eq!(change(&jump), FilterChange::Rules);
    }

    /// The outline round-trips the model through bincode, and appending to it is appending
    /// to the model.
    #[test]
    fn outline_round_trips_and_appends() {
        let mut rs = Ruleset::default();
        let t = rs.table_mut(TableKind::Filter);
        t.add_user_chain(Chain::user("U"));
        for (i, c) in ["INPUT", "U", "INPUT"].into_iter().enumerate() {
            t.chain_mut(c).expect("chain").rules.push(rule(i as u32, i as u32, Target::Drop));
        }
        t.chain_mut("FORWARD").expect("FORWARD").policy = Some(Policy::Drop);
        rs.next_rule_id = 3;
        let bytes = bincode::serialize(&Outline::encode(&rs).expect("encodes")).expect("serializes");
        let mut o: Outline = bincode::deserialize(&bytes).expect("deserializes");
        assert_eq!(o.decode().expect("decodes"), rs);
        assert_eq!(o.rule_ids(), vec![0, 2, 1]);
        assert!(!o.is_pass_all());

        let new = [rule(7, 7, Target::Accept), rule(8, 8, Target::None)];
        assert_eq!(append(&mut o, "INPUT", &new), Some(true));
        rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT").rules.extend(new.iter().cloned());
        assert_eq!(o.decode().expect("decodes"), rs);
        // An unconditional ACCEPT ends INPUT's walk: what follows it is never reached.
        let accept_all = Rule { ip: IpHeader::default(), ..rule(9, 0, Target::Accept) };
        assert_eq!(append(&mut o, "INPUT", &[accept_all]), Some(true));
        assert_eq!(append(&mut o, "INPUT", &[]), Some(false));
        assert_eq!(append(&mut o, "NOPE", &[]), None);
        let t = o.chains_of(TableKind::Filter).expect("filter");
        assert!(t.chains.iter().all(|c| c.rules.is_empty()) && t.chain("U").is_some());

        // A rule found by its spec (whatever its id and counters) and cut out, the others
        // untouched.
        let mut input = o.rules_of(TableKind::Filter, "INPUT").expect("INPUT").expect("decodes");
        assert_eq!(input.iter().map(|r| r.id).collect::<Vec<_>>(), vec![0, 2, 7, 8, 9]);
        let spec = Rule { id: Rule::UNASSIGNED, counters: Counters::default(), ..input[1].clone() };
        assert_eq!(o.find_spec(TableKind::Filter, "INPUT", &spec, &[]).expect("encodes"), Some(1));
        assert_eq!(o.find_spec(TableKind::Filter, "INPUT", &spec, &[1]).expect("encodes"), None);
        assert_eq!(o.find_spec(TableKind::Filter, "NOPE", &spec, &[]).expect("encodes"), None);
        assert_eq!(o.remove(TableKind::Filter, "INPUT", &[5]).expect("decodes"), None, "no rule 6");
        assert_eq!(o.remove(TableKind::Filter, "NOPE", &[0]).expect("decodes"), None);
        assert_eq!(o.remove(TableKind::Filter, "INPUT", &[1]).expect("decodes"), Some(vec![input.remove(1)]));
        assert!(o.rules_of(TableKind::Filter, "NOPE").is_none());
        rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT").rules = input;
        assert_eq!(o.decode().expect("decodes"), rs);
        assert_eq!(o.rule_ids(), vec![0, 7, 8, 9, 1]);

        // Rules put at the head, the rest as it was; an unconditional one there ends the walk.
        let head = [rule(10, 10, Target::Drop), Rule { ip: IpHeader::default(), ..rule(11, 0, Target::Drop) }];
        let prepend = |o: &mut Outline, chain, rules| o.splice(TableKind::Filter, chain, 0, 0, rules).expect("encodes");
        assert_eq!(prepend(&mut o, "FORWARD", &head[..1]), Some((true, vec![])));
        assert_eq!(append(&mut o, "FORWARD", &[]), Some(true));
        assert_eq!(prepend(&mut o, "FORWARD", &head[1..]), Some((true, vec![])));
        assert_eq!(append(&mut o, "FORWARD", &[]), Some(false));
        assert_eq!(prepend(&mut o, "NOPE", &head), None);
        let forward = &mut rs.table_mut(TableKind::Filter).chain_mut("FORWARD").expect("FORWARD").rules;
        forward.insert(0, head[0].clone());
        forward.insert(0, head[1].clone());
        assert_eq!(o.decode().expect("decodes"), rs);
    }

    /// `-N` and `-P` on the chains alone: the stored rules stay with their chains.
    #[test]
    fn set_chains_keeps_every_chain_its_rules() {
        let mut rs = Ruleset::default();
        let t = rs.table_mut(TableKind::Filter);
        t.add_user_chain(Chain::user("B"));
        t.chain_mut("B").expect("B").rules.push(rule(1, 1, Target::Drop));
        t.chain_mut("INPUT").expect("INPUT").rules.push(rule(0, 2, Target::Jump("B".into())));
        let mut o = Outline::encode(&rs).expect("encodes");
        let mut chains = o.chains_of(TableKind::Filter).expect("filter");
        chains.add_user_chain(Chain::user("A"));
        chains.chain_mut("OUTPUT").expect("OUTPUT").policy = Some(Policy::Drop);
        o.set_chains(TableKind::Filter, &chains);
        let t = rs.table_mut(TableKind::Filter);
        t.add_user_chain(Chain::user("A"));
        t.chain_mut("OUTPUT").expect("OUTPUT").policy = Some(Policy::Drop);
        assert_eq!(o.decode().expect("decodes"), rs);
    }

    /// Rules put in the middle of a chain, or in place of one (`-I`, `-R`): the others keep
    /// their encodings, and the first rule that ends the walk is where the chain has it.
    #[test]
    fn splicing_rules_keeps_the_rest_and_the_walk_end() {
        let all = |id| Rule { ip: IpHeader::default(), ..rule(id, 0, Target::Accept) };
        let mut rs = Ruleset::default();
        let rules: Vec<Rule> = (0..6).map(|i| if i == 3 { all(3) } else { rule(i, i + 1, Target::Drop) }).collect();
        rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT").rules = rules;
        let mut o = Outline::encode(&rs).expect("encodes");
        let mut model = rs.table(TableKind::Filter).expect("filter").chain("INPUT").expect("INPUT").rules.clone();
        let check = |o: &mut Outline, model: &[Rule]| {
            assert_eq!(o.rules_of(TableKind::Filter, "INPUT").expect("INPUT").expect("decodes"), model);
            let end = model.iter().position(Rule::ends_walk);
            assert_eq!(append(o, "INPUT", &[]), Some(end.is_none()), "{end:?}");
            let block = &o.chain(TableKind::Filter, "INPUT").expect("INPUT").rules;
            assert_eq!(block.first_end, end.map(|e| e as u32));
        };
        let splice = |o: &mut Outline, at, n, rules: &[Rule]| o.splice(TableKind::Filter, "INPUT", at, n, rules).expect("encodes");

        // before the walk's end: reached, the end moves down
        assert_eq!(splice(&mut o, 2, 0, &[rule(10, 10, Target::Drop), rule(11, 11, Target::Drop)]), Some((true, vec![])));
        model.splice(2..2, [rule(10, 10, Target::Drop), rule(11, 11, Target::Drop)]);
        check(&mut o, &model);
        // past it: not reached
        assert_eq!(splice(&mut o, 7, 0, &[rule(12, 12, Target::Drop)]), Some((false, vec![])));
        model.insert(7, rule(12, 12, Target::Drop));
        check(&mut o, &model);
        // the end replaced by a rule that does not end it: the next one that does, if any
        assert_eq!(splice(&mut o, 5, 1, &[rule(13, 13, Target::Drop)]), Some((true, vec![all(3)])));
        model[5] = rule(13, 13, Target::Drop);
        check(&mut o, &model);
        // a new end, then one further up
        assert_eq!(splice(&mut o, 6, 1, &[all(14)]).map(|r| r.1.len()), Some(1));
        model[6] = all(14);
        check(&mut o, &model);
        assert_eq!(splice(&mut o, 0, 1, &[all(15)]).map(|r| r.1.len()), Some(1));
        model[0] = all(15);
        check(&mut o, &model);
        // at the end; past it nothing changes
        assert_eq!(splice(&mut o, model.len(), 0, &[rule(16, 16, Target::Drop)]), Some((false, vec![])));
        model.push(rule(16, 16, Target::Drop));
        check(&mut o, &model);
        assert_eq!(splice(&mut o, model.len(), 1, &[]), None);
        assert_eq!(splice(&mut o, model.len() + 1, 0, &[]), None);
        check(&mut o, &model);
        assert_eq!(o.rule_id(TableKind::Filter, "INPUT", 1), Some(model[1].id));
        assert_eq!(o.chain_len(TableKind::Filter, "INPUT"), Some(model.len()));
    }

    /// Rules cut out of a chain by index: the rest decodes as before, ends and all, and the
    /// first rule that ends the walk moves with them, or to the next one when it goes.
    #[test]
    fn removing_rules_keeps_the_rest_and_the_walk_end() {
        let all = Rule { ip: IpHeader::default(), ..rule(0, 0, Target::Accept) };
        let mut rules: Vec<Rule> = (0..8).map(|i| rule(i, i + 1, Target::Drop)).collect();
        rules[3] = Rule { id: 3, ..all.clone() };
        rules[6] = Rule { id: 6, ..all.clone() };
        let mut rs = Ruleset::default();
        rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT").rules = rules.clone();
        let mut o = Outline::encode(&rs).expect("encodes");
        let walk_end = |o: &mut Outline| append(o, "INPUT", &[]);
        assert_eq!(walk_end(&mut o), Some(false));

        // before the walk's end, and twice in one go, out of order
        let gone = o.remove(TableKind::Filter, "INPUT", &[2, 0]).expect("decodes").expect("removed");
        assert_eq!(gone.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 0]);
        rules.retain(|r| r.id != 0 && r.id != 2);
        let input = |o: &Outline| o.rules_of(TableKind::Filter, "INPUT").expect("INPUT").expect("decodes");
        assert_eq!(input(&o), rules);
        // the rule that ends the walk (id 3, now index 1): the next one (id 6) ends it
        assert_eq!(o.remove(TableKind::Filter, "INPUT", &[1]).expect("decodes").expect("removed")[0].id, 3);
        rules.retain(|r| r.id != 3);
        assert_eq!(input(&o), rules);
        assert_eq!(walk_end(&mut o), Some(false));
        let six = rules.iter().position(|r| r.id == 6).expect("id 6");
        o.remove(TableKind::Filter, "INPUT", &[six]).expect("decodes").expect("removed");
        rules.retain(|r| r.id != 6);
        assert_eq!(input(&o), rules);
        assert_eq!(walk_end(&mut o), Some(true), "nothing ends the walk any more");
        // what follows still appends and decodes
        let new = rule(9, 9, Target::Drop);
        append(&mut o, "INPUT", std::slice::from_ref(&new));
        rules.push(new);
        assert_eq!(input(&o), rules);
        let bytes = bincode::serialize(&o).expect("serializes");
        let back: Outline = bincode::deserialize(&bytes).expect("deserializes");
        assert_eq!(back.rules_of(TableKind::Filter, "INPUT").expect("INPUT").expect("decodes"), rules);
    }

    /// Encodings compared without id and counters say what `Rule::same_spec` says.
    #[test]
    fn spec_bytes_compare_as_same_spec() {
        let a = rule(1, 5, Target::Drop);
        let b = Rule { id: 77, counters: Counters { packets: 9, bytes: 99 }, ..a.clone() };
        let c = rule(1, 6, Target::Drop);
        let d = rule(1, 5, Target::Accept);
        let enc = |r: &Rule| bincode::serialize(r).expect("encodes");
        for (x, y) in [(&a, &b), (&a, &c), (&a, &d), (&c, &d)] {
            assert_eq!(spec_bytes(&enc(x)) == spec_bytes(&enc(y)), x.same_spec(y), "{x:?} / {y:?}");
        }
    }
}

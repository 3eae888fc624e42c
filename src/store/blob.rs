//! The stored form of the ruleset model (what the `bpfipt_blob` chunks hold, bincode): the
//! model's tables and chains, each chain's rules as one opaque block of encoded rules with
//! their ids alongside. `-A` to a built-in chain reads the outline (chains, policies, ids)
//! and appends the new rules' encoding to one block, never decoding or re-encoding the rules
//! already stored; everything else decodes the whole model.

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

/// A chain's rules: `ids[i]` is rule i's id, `bytes` the rules' encodings one after another,
/// `first_end` the index of the first rule that always ends the chain's walk, if any.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RuleBlock {
    ids: Vec<u32>,
    first_end: Option<u32>,
    bytes: Bytes,
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
        Ok(())
    }

    /// Puts `rules` before the block's rules, re-encoding none of those.
    fn prepend(&mut self, rules: &[Rule]) -> bincode::Result<()> {
        let mut head = RuleBlock::default();
        for r in rules {
            head.push(r)?;
        }
        let k = head.ids.len() as u32;
        head.first_end = head.first_end.or(self.first_end.map(|e| e + k));
        head.ids.extend_from_slice(&self.ids);
        head.bytes.0.extend_from_slice(&self.bytes.0);
        *self = head;
        Ok(())
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
        let mut tables = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            let mut chains = Vec::with_capacity(t.chains.len());
            for c in &t.chains {
                let rules = c.rules.decode().context("decoding the stored rules")?;
                chains.push(Chain { name: c.name.clone(), policy: c.policy, counters: c.counters, rules });
            }
            tables.push(Table { kind: t.kind, chains });
        }
        Ok(Ruleset { tables, next_rule_id: self.next_rule_id })
    }

    /// The ids of every stored rule.
    pub fn rule_ids(&self) -> Vec<u32> {
        self.tables.iter().flat_map(|t| &t.chains).flat_map(|c| c.rules.ids.iter().copied()).collect()
    }

    /// `Ruleset::is_pass_all` of the stored ruleset.
    pub fn is_pass_all(&self) -> bool {
        self.tables.iter().flat_map(|t| &t.chains).all(|c| c.rules.ids.is_empty() && c.policy != Some(Policy::Drop))
    }

    /// Table `kind` with its chains and policies but no rules (what resolving and appending
    /// rules needs), if it exists.
    pub fn chains_of(&self, kind: TableKind) -> Option<Table> {
        let t = self.tables.iter().find(|t| t.kind == kind)?;
        let chains =
            t.chains.iter().map(|c| Chain { name: c.name.clone(), policy: c.policy, counters: c.counters, rules: Vec::new() }).collect();
        Some(Table { kind, chains })
    }

    pub fn next_rule_id(&self) -> u32 {
        self.next_rule_id
    }

    pub fn set_next_rule_id(&mut self, id: u32) {
        self.next_rule_id = id;
    }

    fn chain_mut(&mut self, kind: TableKind, chain: &str) -> Option<&mut StoredChain> {
        self.tables.iter_mut().filter(|t| t.kind == kind).flat_map(|t| &mut t.chains).find(|c| c.name == chain)
    }

    /// The rules of chain `chain` of table `kind`, decoded (None if there is no such chain).
    pub fn rules_of(&self, kind: TableKind, chain: &str) -> Option<crate::error::Result<Vec<Rule>>> {
        let c = self.tables.iter().filter(|t| t.kind == kind).flat_map(|t| &t.chains).find(|c| c.name == chain)?;
        Some(c.rules.decode().context("decoding the stored rules").map_err(Into::into))
    }

    /// Replaces the rules of chain `chain` of table `kind` (ids assigned), encoding only them.
    /// Returns false if there is no such chain.
    pub fn set_rules(&mut self, kind: TableKind, chain: &str, rules: &[Rule]) -> bincode::Result<bool> {
        let Some(c) = self.chain_mut(kind, chain) else { return Ok(false) };
        let mut block = RuleBlock::default();
        for r in rules {
            block.push(r)?;
        }
        c.rules = block;
        Ok(true)
    }

    /// Puts `rules` (ids assigned) at the head of chain `chain` of table `kind`. Returns false
    /// if there is no such chain.
    pub fn prepend(&mut self, kind: TableKind, chain: &str, rules: &[Rule]) -> bincode::Result<bool> {
        let Some(c) = self.chain_mut(kind, chain) else { return Ok(false) };
        c.rules.prepend(rules)?;
        Ok(true)
    }

    /// Appends `rules` (ids assigned) to chain `chain` of table `kind`. Returns whether the
    /// chain's walk reaches them (no earlier rule always ends it); None if there is no such
    /// chain.
    pub fn append(&mut self, kind: TableKind, chain: &str, rules: &[Rule]) -> bincode::Result<Option<bool>> {
        let Some(c) = self.chain_mut(kind, chain) else { return Ok(None) };
        let reached = c.rules.first_end.is_none();
        for r in rules {
            c.rules.push(r)?;
        }
        Ok(Some(reached))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Inv, IpHeader, Ipv4Mask, Target};

    fn rule(id: u32, src: u32, target: Target) -> Rule {
        let ip = IpHeader { src: Some(Inv::new(Ipv4Mask::new(src, u32::MAX), false)), ..Default::default() };
        Rule { id, ip, matches: Vec::new(), target, counters: Counters { packets: id as u64, bytes: 1 } }
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
        assert_eq!(o.append(TableKind::Filter, "INPUT", &new).expect("appends"), Some(true));
        rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT").rules.extend(new.iter().cloned());
        assert_eq!(o.decode().expect("decodes"), rs);
        // An unconditional ACCEPT ends INPUT's walk: what follows it is never reached.
        let accept_all = Rule { ip: IpHeader::default(), ..rule(9, 0, Target::Accept) };
        assert_eq!(o.append(TableKind::Filter, "INPUT", &[accept_all]).expect("appends"), Some(true));
        assert_eq!(o.append(TableKind::Filter, "INPUT", &[]).expect("appends"), Some(false));
        assert_eq!(o.append(TableKind::Filter, "NOPE", &[]).expect("appends"), None);
        let t = o.chains_of(TableKind::Filter).expect("filter");
        assert!(t.chains.iter().all(|c| c.rules.is_empty()) && t.chain("U").is_some());

        // One chain's rules decoded and replaced, the others untouched.
        let mut input = o.rules_of(TableKind::Filter, "INPUT").expect("INPUT").expect("decodes");
        assert_eq!(input.iter().map(|r| r.id).collect::<Vec<_>>(), vec![0, 2, 7, 8, 9]);
        input.remove(1);
        assert!(o.set_rules(TableKind::Filter, "INPUT", &input).expect("encodes"));
        assert!(!o.set_rules(TableKind::Filter, "NOPE", &[]).expect("encodes"));
        assert!(o.rules_of(TableKind::Filter, "NOPE").is_none());
        rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT").rules = input;
        assert_eq!(o.decode().expect("decodes"), rs);
        assert_eq!(o.rule_ids(), vec![0, 7, 8, 9, 1]);

        // Rules put at the head, the rest as it was; an unconditional one there ends the walk.
        let head = [rule(10, 10, Target::Drop), Rule { ip: IpHeader::default(), ..rule(11, 0, Target::Drop) }];
        assert!(o.prepend(TableKind::Filter, "FORWARD", &head[..1]).expect("encodes"));
        assert_eq!(o.append(TableKind::Filter, "FORWARD", &[]).expect("appends"), Some(true));
        assert!(o.prepend(TableKind::Filter, "FORWARD", &head[1..]).expect("encodes"));
        assert_eq!(o.append(TableKind::Filter, "FORWARD", &[]).expect("appends"), Some(false));
        assert!(!o.prepend(TableKind::Filter, "NOPE", &head).expect("encodes"));
        let forward = &mut rs.table_mut(TableKind::Filter).chain_mut("FORWARD").expect("FORWARD").rules;
        forward.insert(0, head[0].clone());
        forward.insert(0, head[1].clone());
        assert_eq!(o.decode().expect("decodes"), rs);
    }
}

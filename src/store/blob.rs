//! The stored form of the ruleset model (what the `bpfipt_blob` chunks hold): the model's
//! tables and chains (bincode), each chain's rules as one opaque block of encoded rules with
//! their ids and ends alongside, the blocks' bytes after all of that. A loaded outline reads
//! the blocks where they are, in the blob's mapping. `-A` to a built-in chain reads the
//! outline (chains, policies, ids) and appends the new rules' encoding to one block, `-I` at
//! its head puts them before it, and `-D` in it finds the rule by its encoding and cuts it
//! out, never decoding, re-encoding or copying the rules already stored (but into the new
//! blob); `-C` finds the rule as `-D` does, and listing one chain decodes its block, and the
//! rules whose encodings name it (the jumps to it); adding to a user chain decodes the jumps
//! a walk reaches (each block indexes its jumps), to find where the chain is inlined;
//! everything else decodes the whole model.

use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

use anyhow::Context;
use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};

use crate::model::{Chain, Counters, Policy, Rule, Ruleset, Table, TableKind, Target};

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
/// chain's walk, if any, `jumps` the indices of the rules that jump or go to a chain, in order
/// (where a chain is inlined follows from those alone: `Outline::jump_rules`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RuleBlock {
    ids: Vec<u32>,
    ends: Vec<u32>,
    first_end: Option<u32>,
    jumps: Vec<u32>,
    bytes: Bytes,
}

/// A rule's encoding (bincode, fixed-size integers) without its id (the first field, 4 bytes)
/// and counters (the last, two u64): equal for two rules exactly when `Rule::same_spec` holds.
fn spec_bytes(encoded: &[u8]) -> &[u8] {
    &encoded[4..encoded.len() - 16]
}

/// The memory a stored outline was loaded from (the blob's mapping).
pub type Blob = Rc<dyn AsRef<[u8]>>;

/// A chain's rule encodings, one after another, in pieces: a loaded block stays where it is
/// in its blob (10 000 rules are ~800 KB: a copy, and the page faults of the memory it goes
/// to, were half a millisecond of every `-A`), a change adds pieces of its own. No rule spans
/// two pieces. Stored as its length only: the bytes follow the outline (`Outline::write_to`).
#[derive(Clone, Default)]
struct Bytes(Vec<Piece>);

#[derive(Clone)]
enum Piece {
    /// Part of the blob the outline was loaded from.
    Stored(Blob, Range<usize>),
    Owned(Vec<u8>),
    /// Just deserialized: this many bytes, not yet found in the blob (`Outline::load`).
    Unplaced(usize),
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Stored(blob, r) => &(**blob).as_ref()[r.clone()],
            Piece::Owned(v) => v,
            Piece::Unplaced(_) => &[],
        }
    }

    /// Its bytes `r` (relative to its start) as a piece of their own.
    fn part(&self, r: Range<usize>) -> Piece {
        match self {
            Piece::Stored(blob, whole) => Piece::Stored(blob.clone(), whole.start + r.start..whole.start + r.end),
            _ => Piece::Owned(self.bytes()[r].to_vec()),
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} in {} pieces)", self.len(), self.0.len())
    }
}

impl Bytes {
    fn len(&self) -> usize {
        self.0.iter().map(|p| p.bytes().len()).sum()
    }

    /// Where to encode more at the end.
    fn end_mut(&mut self) -> &mut Vec<u8> {
        if !matches!(self.0.last(), Some(Piece::Owned(_))) {
            self.0.push(Piece::Owned(Vec::new()));
        }
        match self.0.last_mut() {
            Some(Piece::Owned(v)) => v,
            _ => unreachable!("an owned piece was just put last"),
        }
    }

    /// Bytes `r`, which lie in one piece (a rule's encoding does).
    fn get(&self, r: Range<usize>) -> Option<&[u8]> {
        let mut start = 0;
        for p in &self.0 {
            let b = p.bytes();
            if r.end <= start + b.len() {
                return b.get(r.start.checked_sub(start)?..r.end - start);
            }
            start += b.len();
        }
        None
    }

    /// Puts `new` in place of bytes `r` (rule boundaries): the pieces around them are kept,
    /// cut where `r` starts and ends.
    fn splice(&mut self, r: Range<usize>, new: Bytes) {
        let mut new = Some(new.0.into_iter().filter(|p| !p.bytes().is_empty()));
        let mut out = Vec::with_capacity(self.0.len() + 3);
        let mut start = 0;
        for p in std::mem::take(&mut self.0) {
            let end = start + p.bytes().len();
            if end <= r.start {
                out.push(p);
            } else {
                if start < r.start {
                    out.push(p.part(0..r.start - start));
                }
                out.extend(new.take().into_iter().flatten());
                if start >= r.end {
                    out.push(p);
                } else if end > r.end {
                    out.push(p.part(r.end - start..end - start));
                }
            }
            start = end;
        }
        out.extend(new.take().into_iter().flatten());
        self.0 = out;
    }

    /// The bytes in one slice (copied only when they are in several pieces).
    fn contiguous(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.0.as_slice() {
            [] => std::borrow::Cow::Borrowed(&[]),
            [p] => std::borrow::Cow::Borrowed(p.bytes()),
            ps => std::borrow::Cow::Owned(ps.iter().flat_map(|p| p.bytes()).copied().collect()),
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.len() as u64)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let len = u64::deserialize(d)?;
        let len = usize::try_from(len).map_err(serde::de::Error::custom)?;
        Ok(Bytes(vec![Piece::Unplaced(len)]))
    }
}

impl RuleBlock {
    fn push(&mut self, r: &Rule) -> bincode::Result<()> {
        if self.first_end.is_none() && r.ends_walk() {
            self.first_end = Some(self.ids.len() as u32);
        }
        if matches!(r.target, Target::Jump(_) | Target::Goto(_)) {
            self.jumps.push(self.ids.len() as u32);
        }
        bincode::serialize_into(self.bytes.end_mut(), r)?;
        self.ids.push(r.id);
        self.ends.push(self.bytes.len() as u32);
        Ok(())
    }

    /// Where rule i's encoding starts (rule `ids.len()`: the end).
    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1] as usize
        }
    }

    /// The encoding of rule i.
    fn encoded(&self, i: usize) -> bincode::Result<&[u8]> {
        self.bytes.get(self.start(i)..self.ends[i] as usize).ok_or_else(|| bad_block("a rule's encoding is not where its block says"))
    }

    /// Removes the rules at `at` (distinct indices), returning them decoded (in `at`'s order);
    /// None (nothing changed) when an index is out of range.
    fn remove(&mut self, at: &[usize]) -> bincode::Result<Option<Vec<Rule>>> {
        if at.iter().any(|&i| i >= self.ids.len()) {
            return Ok(None);
        }
        let mut order: Vec<usize> = (0..at.len()).collect();
        order.sort_unstable_by_key(|&k| std::cmp::Reverse(at[k]));
        let mut removed: Vec<Option<Rule>> = vec![None; at.len()];
        // from the last up, so that the indices still to go stay where they are
        for k in order {
            removed[k] = self.splice(at[k], 1, &[])?.and_then(|mut r| r.pop());
        }
        Ok(removed.into_iter().collect())
    }

    /// The first rule from index `from` on that always ends the chain's walk (decoding them).
    fn first_end_from(&self, from: usize) -> bincode::Result<Option<u32>> {
        for i in from..self.ids.len() {
            if bincode::deserialize::<Rule>(self.encoded(i)?)?.ends_walk() {
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
        let removed = (at..at + n).map(|i| bincode::deserialize(self.encoded(i)?)).collect::<bincode::Result<Vec<Rule>>>()?;
        let mut new = RuleBlock::default();
        for r in rules {
            new.push(r)?;
        }
        let (from, to) = (self.start(at), self.start(at + n));
        let shift = new.bytes.len() as i64 - (to - from) as i64;
        for e in &mut self.ends[at + n..] {
            *e = (*e as i64 + shift) as u32;
        }
        self.ends.splice(at..at + n, new.ends.iter().map(|e| e + from as u32));
        self.ids.splice(at..at + n, new.ids);
        self.bytes.splice(from..to, new.bytes);
        let k = rules.len();
        let before = self.jumps.partition_point(|&j| (j as usize) < at);
        let after = self.jumps.partition_point(|&j| (j as usize) < at + n);
        let moved: Vec<u32> = self.jumps[after..].iter().map(|&j| (j as usize - n + k) as u32).collect();
        self.jumps.truncate(before);
        self.jumps.extend(new.jumps.iter().map(|&j| j + at as u32));
        self.jumps.extend(moved);
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
        // (collecting a Result would lose the size and grow the vector by copies)
        let mut rules = Vec::with_capacity(self.ids.len());
        for piece in &self.bytes.0 {
            let mut rest = piece.bytes();
            while !rest.is_empty() && rules.len() < self.ids.len() {
                rules.push(bincode::deserialize_from(&mut rest)?);
            }
            if !rest.is_empty() {
                return Err(bad_block("trailing bytes after a chain's rules"));
            }
        }
        if rules.len() != self.ids.len() {
            return Err(bad_block("fewer rules than ids in a chain's block"));
        }
        Ok(rules)
    }
}

fn bad_block(why: &str) -> bincode::Error {
    Box::new(bincode::ErrorKind::Custom(why.into()))
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

    /// The outline stored in `blob` (as `write_to` wrote it), its rules left there.
    pub fn load(blob: Blob) -> bincode::Result<Outline> {
        let all = (*blob).as_ref();
        let mut rest = all;
        let mut o: Outline = bincode::deserialize_from(&mut rest)?;
        let mut at = all.len() - rest.len();
        for piece in o.tables.iter_mut().flat_map(|t| &mut t.chains).flat_map(|c| &mut c.rules.bytes.0) {
            if let Piece::Unplaced(len) = *piece {
                let end = at.checked_add(len).filter(|&e| e <= all.len());
                let end = end.ok_or_else(|| bad_block("a chain's rules run past the stored ruleset"))?;
                *piece = Piece::Stored(blob.clone(), at..end);
                at = end;
            }
        }
        if at != all.len() {
            return Err(bad_block("trailing bytes after the stored ruleset"));
        }
        Ok(o)
    }

    /// Bytes `write_to` writes: the outline (bincode, each block as its length), then every
    /// block's bytes in the same order.
    pub fn stored_len(&self) -> bincode::Result<usize> {
        Ok(bincode::serialized_size(self)? as usize + self.blocks().map(Bytes::len).sum::<usize>())
    }

    /// Writes the outline's stored form into `out`, `stored_len` bytes long.
    pub fn write_to(&self, out: &mut [u8]) -> bincode::Result<()> {
        // (the outline fills what the blocks leave: not sized a second time)
        let not_its_size = || bad_block("the stored ruleset's buffer is not its size");
        let head = out.len().checked_sub(self.blocks().map(Bytes::len).sum()).ok_or_else(not_its_size)?;
        let (head_out, mut rest) = out.split_at_mut(head);
        let mut left = &mut head_out[..];
        bincode::serialize_into(&mut left, self)?;
        if !left.is_empty() {
            return Err(not_its_size());
        }
        for piece in self.blocks().flat_map(|b| &b.0) {
            let (dst, after) = std::mem::take(&mut rest).split_at_mut(piece.bytes().len());
            dst.copy_from_slice(piece.bytes());
            rest = after;
        }
        Ok(())
    }

    /// The stored form in a vector of its own (`write_to`).
    pub fn to_blob(&self) -> bincode::Result<Vec<u8>> {
        let mut out = vec![0; self.stored_len()?];
        self.write_to(&mut out)?;
        Ok(out)
    }

    fn blocks(&self) -> impl Iterator<Item = &Bytes> {
        self.tables.iter().flat_map(|t| &t.chains).map(|c| &c.rules.bytes)
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

    /// Table `kind`, if it exists, with only the rules of each chain that a walk through it
    /// reaches (up to the first that always ends it) and that jump or go to a chain, decoded:
    /// where each chain is inlined depends on those rules alone (`compile::compile_in_chain`),
    /// so adding to a user chain decodes these, not all 10 000 rules of INPUT.
    pub fn jump_rules(&self, kind: TableKind) -> crate::error::Result<Option<Table>> {
        let Some(stored) = self.tables.iter().find(|t| t.kind == kind) else { return Ok(None) };
        let mut t = stored.chains();
        for (c, stored) in t.chains.iter_mut().zip(&stored.chains) {
            let block = &stored.rules;
            let live = block.jumps.iter().take_while(|&&j| block.first_end.is_none_or(|e| j < e));
            c.rules = live
                .map(|&j| bincode::deserialize(block.encoded(j as usize)?))
                .collect::<bincode::Result<_>>()
                .context("decoding the stored rules")?;
        }
        Ok(Some(t))
    }

    /// How many rules are stored.
    pub fn rule_count(&self) -> usize {
        self.rule_count_but(&[])
    }

    /// How many stored rules `decode_but(flushed)` decodes.
    pub fn rule_count_but(&self, flushed: &[TableKind]) -> usize {
        self.tables.iter().filter(|t| !flushed.contains(&t.kind)).flat_map(|t| &t.chains).map(|c| c.rules.ids.len()).sum()
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
                (Some(a), Some(b)) if a.rules.ids == b.rules.ids && a.rules.bytes.contiguous() == b.rules.bytes.contiguous() => {
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
    /// (with its rules: for changes of the chains alone made on `chains_of`, see
    /// `Store::commit_chains`).
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

    /// The rules of table `kind` outside chain `except` (None: in any chain) that jump or go to
    /// chain `target`, with their chains' names: of the rules that jump (each block's index),
    /// those whose encoding holds the name are decoded (a comment or another chain's name may
    /// hold it too).
    pub fn jumps_to(&self, kind: TableKind, target: &str, except: Option<&str>) -> bincode::Result<Vec<(String, Rule)>> {
        let name = memchr::memmem::Finder::new(target.as_bytes());
        let mut out = Vec::new();
        for c in self.tables.iter().filter(|t| t.kind == kind).flat_map(|t| &t.chains).filter(|c| Some(c.name.as_str()) != except) {
            for &i in &c.rules.jumps {
                let encoded = c.rules.encoded(i as usize)?;
                if name.find(spec_bytes(encoded)).is_none() {
                    continue;
                }
                let rule: Rule = bincode::deserialize(encoded)?;
                if matches!(&rule.target, Target::Jump(n) | Target::Goto(n) if n == target) {
                    out.push((c.name.clone(), rule));
                }
            }
        }
        Ok(out)
    }

    /// The index of the first rule of chain `chain` of table `kind` that is `rule`
    /// (`Rule::same_spec`), those at `skip` left out; compared encoded, none decoded. None if
    /// there is none (or no such chain).
    pub fn find_spec(&self, kind: TableKind, chain: &str, rule: &Rule, skip: &[usize]) -> bincode::Result<Option<usize>> {
        let Some(c) = self.chain(kind, chain) else { return Ok(None) };
        let wanted = bincode::serialize(rule)?;
        let wanted = spec_bytes(&wanted);
        for i in (0..c.rules.ids.len()).filter(|i| !skip.contains(i)) {
            if spec_bytes(c.rules.encoded(i)?) == wanted {
                return Ok(Some(i));
            }
        }
        Ok(None)
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
        let reached = self.reaches(kind, chain, at);
        let Some(c) = self.chain_mut(kind, chain) else { return Ok(None) };
        Ok(c.rules.splice(at, n, rules)?.map(|removed| (reached, removed)))
    }

    /// Whether a walk through chain `chain` of table `kind` reaches index `at`: no rule before
    /// it always ends the chain (false: no such chain).
    pub fn reaches(&self, kind: TableKind, chain: &str, at: usize) -> bool {
        self.chain(kind, chain).is_some_and(|c| c.rules.first_end.is_none_or(|e| e as usize >= at))
    }

    /// The id of the rule at index `i` of chain `chain` of table `kind`.
    pub fn rule_id(&self, kind: TableKind, chain: &str, i: usize) -> Option<u32> {
        self.chain(kind, chain)?.rules.ids.get(i).copied()
    }

    /// How many rules chain `chain` of table `kind` has (None: no such chain).
    pub fn chain_len(&self, kind: TableKind, chain: &str) -> Option<usize> {
        Some(self.chain(kind, chain)?.rules.ids.len())
    }

    /// The ids of the rules of chain `chain` of table `kind`, in order (none: no such chain).
    pub fn chain_rule_ids(&self, kind: TableKind, chain: &str) -> &[u32] {
        self.chain(kind, chain).map_or(&[], |c| &c.rules.ids)
    }

    /// Renames chain `old` of table `kind` to `new`, its rules as they are stored (none
    /// mentions the chain's name: callers rename only chains nothing jumps to).
    pub fn rename_chain(&mut self, kind: TableKind, old: &str, new: &str) {
        if let Some(c) = self.chain_mut(kind, old) {
            c.name = new.to_string();
        }
    }

    /// Takes out the rules of chain `chain` of table `kind`, or of all its chains (None),
    /// decoding none.
    pub fn clear_rules(&mut self, kind: TableKind, chain: Option<&str>) {
        let chains = self.tables.iter_mut().filter(|t| t.kind == kind).flat_map(|t| &mut t.chains);
        for c in chains.filter(|c| chain.is_none_or(|n| c.name == n)) {
            c.rules = RuleBlock::default();
        }
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

    /// `o` stored and loaded again.
    fn reload(o: &Outline) -> Outline {
        Outline::load(Rc::new(o.to_blob().expect("stores"))).expect("loads")
    }

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
        let mut o = reload(&Outline::encode(&rs).expect("encodes"));
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

    /// The jumps to a chain, found by its name in the encodings: exactly those of
    /// `Table::references`, whatever else names it (a comment, a longer chain's name), after
    /// a reload and an append too.
    #[test]
    fn jumps_to_are_the_references() {
        let mut rs = Ruleset::default();
        let t = rs.table_mut(TableKind::Filter);
        for name in ["B", "BB", "C"] {
            t.add_user_chain(Chain::user(name));
        }
        let comment = crate::model::Match::Comment("B".into());
        let rules = [
            ("INPUT", rule(0, 1, Target::Jump("B".into()))),
            ("INPUT", Rule { matches: vec![comment], ..rule(1, 2, Target::Jump("BB".into())) }),
            ("FORWARD", rule(2, 3, Target::Goto("B".into()))),
            ("BB", rule(3, 4, Target::Jump("B".into()))),
            ("B", rule(4, 5, Target::Jump("C".into()))),
            ("C", rule(5, 6, Target::Drop)),
        ];
        for (chain, r) in rules {
            t.chain_mut(chain).expect("chain").rules.push(r);
        }
        let mut o = reload(&Outline::encode(&rs).expect("encodes"));
        assert_eq!(append(&mut o, "OUTPUT", &[rule(6, 7, Target::Goto("BB".into()))]), Some(true));
        let t = o.decode().expect("decodes").tables.remove(0);
        for name in ["B", "BB", "C", "INPUT"] {
            let found = o.jumps_to(TableKind::Filter, name, Some(name)).expect("decodes");
            assert_eq!(found.len(), t.references(name), "{name}");
            assert!(found.iter().all(|(c, r)| t.chain(c).is_some_and(|c| c.rules.contains(r))), "{name}");
        }
        let found = o.jumps_to(TableKind::Filter, "B", Some("BB")).expect("decodes");
        assert_eq!(found.iter().map(|(c, r)| (c.as_str(), r.id)).collect::<Vec<_>>(), [("INPUT", 0), ("FORWARD", 2)]);
    }

    /// Rules put in the middle of a chain, or in place of one (`-I`, `-R`): the others keep
    /// their encodings, and the first rule that ends the walk is where the chain has it.
    #[test]
    fn splicing_rules_keeps_the_rest_and_the_walk_end() {
        let all = |id| Rule { ip: IpHeader::default(), ..rule(id, 0, Target::Accept) };
        let mut rs = Ruleset::default();
        let rules: Vec<Rule> = (0..6).map(|i| if i == 3 { all(3) } else { rule(i, i + 1, Target::Drop) }).collect();
        rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT").rules = rules;
        // encoded (one piece of its own), and loaded (the rules are a piece of the stored form,
        // the new ones pieces of their own)
        let encoded = Outline::encode(&rs).expect("encodes");
        for mut o in [encoded.clone(), reload(&encoded)] {
            let mut model = rs.table(TableKind::Filter).expect("filter").chain("INPUT").expect("INPUT").rules.clone();
            let check = |o: &mut Outline, model: &[Rule]| {
                assert_eq!(o.rules_of(TableKind::Filter, "INPUT").expect("INPUT").expect("decodes"), model);
                assert_eq!(reload(o).rules_of(TableKind::Filter, "INPUT").expect("INPUT").expect("decodes"), model);
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
        let mut o = reload(&Outline::encode(&rs).expect("encodes"));
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
        let back = reload(&o);
        assert_eq!(back.rules_of(TableKind::Filter, "INPUT").expect("INPUT").expect("decodes"), rules);
    }

    /// A loaded block is read where it is stored: appending adds a piece, it copies nothing;
    /// a blob cut short, or with bytes to spare, is refused.
    #[test]
    fn loaded_rules_stay_in_the_blob() {
        let mut rs = Ruleset::default();
        rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT").rules = (0..50).map(|i| rule(i, i + 1, Target::Drop)).collect();
        let stored = Outline::encode(&rs).expect("encodes").to_blob().expect("stores");
        let mut o = Outline::load(Rc::new(stored.clone())).expect("loads");
        append(&mut o, "INPUT", &[rule(50, 51, Target::Accept)]);
        let block = &o.chain(TableKind::Filter, "INPUT").expect("INPUT").rules.bytes;
        assert!(matches!(block.0.as_slice(), [Piece::Stored(..), Piece::Owned(_)]), "{block:?}");
        assert_eq!(o.rule_ids(), (0..51).collect::<Vec<u32>>());

        assert!(Outline::load(Rc::new(stored[..stored.len() - 1].to_vec())).is_err());
        let mut longer = stored.clone();
        longer.push(0);
        assert!(Outline::load(Rc::new(longer)).is_err());
    }

    /// The stored form is written only into a buffer of its size.
    #[test]
    fn written_only_into_its_size() {
        let mut rs = Ruleset::default();
        rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT").rules = (0..5).map(|i| rule(i, i + 1, Target::Drop)).collect();
        let o = Outline::encode(&rs).expect("encodes");
        let n = o.stored_len().expect("sizes");
        for wrong in [n - 1, n + 1, 3] {
            assert!(o.write_to(&mut vec![0; wrong]).is_err(), "{wrong} of {n} bytes");
        }
        assert_eq!(reload(&o).rule_ids(), (0..5).collect::<Vec<u32>>());
    }

    proptest::proptest! {
        /// Any sequence of splices and removals, on a block encoded or loaded, and stored and
        /// loaded again between them (pieces of pieces), does to the rules what it does to a
        /// vector of them, and the reached jumps are those of the vector.
        #[test]
        fn edits_in_pieces_are_edits_of_the_rules(
            loaded: bool,
            ops in proptest::collection::vec((0usize..20, 0usize..3, 0usize..3, proptest::bool::ANY, proptest::bool::ANY), 1..12),
        ) {
            // every third rule jumps, every seventh has no match (an ACCEPT one ends the walk)
            let make = |id: u32| {
                let target = [Target::Jump("U".into()), Target::Accept, Target::Drop][id as usize % 3].clone();
                let r = rule(id, id + 1, target);
                if id % 7 == 0 { Rule { ip: IpHeader::default(), ..r } } else { r }
            };
            let mut rs = Ruleset::default();
            let mut model: Vec<Rule> = (0..8).map(make).collect();
            rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT").rules = model.clone();
            let mut o = Outline::encode(&rs).expect("encodes");
            if loaded {
                o = reload(&o);
            }
            let mut next = 100;
            for (at, n, k, remove, store) in ops {
                let at = at % (model.len() + 1);
                if remove && at < model.len() {
                    let gone = o.remove(TableKind::Filter, "INPUT", &[at]).expect("decodes").expect("in range");
                    proptest::prop_assert_eq!(gone, vec![model.remove(at)]);
                } else {
                    let n = n.min(model.len() - at);
                    let new: Vec<Rule> = (0..k as u32).map(|j| make(next + j)).collect();
                    next += k as u32;
                    let (_, out) = o.splice(TableKind::Filter, "INPUT", at, n, &new).expect("encodes").expect("in range");
                    let was: Vec<Rule> = model.splice(at..at + n, new).collect();
                    proptest::prop_assert_eq!(out, was);
                }
                if store {
                    o = reload(&o);
                }
                proptest::prop_assert_eq!(o.rules_of(TableKind::Filter, "INPUT").expect("INPUT").expect("decodes"), model.clone());
                let ids: Vec<u32> = model.iter().map(|r| r.id).collect();
                proptest::prop_assert_eq!(o.rule_ids(), ids);
                let live = model.iter().position(Rule::ends_walk).map_or(model.len(), |e| e + 1);
                let jumps: Vec<Rule> = model[..live].iter().filter(|r| matches!(r.target, Target::Jump(_))).cloned().collect();
                let t = o.jump_rules(TableKind::Filter).expect("decodes").expect("filter");
                proptest::prop_assert_eq!(&t.chain("INPUT").expect("INPUT").rules, &jumps);
            }
        }
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

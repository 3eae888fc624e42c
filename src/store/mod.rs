//! The ruleset of this network namespace, kept in pinned BPF maps.
//!
//! Owns: finding (and if needed mounting) the bpffs that outlives `ip netns exec`, the pin
//! directory of the current network namespace (keyed by its netns cookie, which the kernel
//! never reuses), the layout-version check, the xtables lock, the serialized model (two
//! generations, flipped atomically) and the per-rule counters. The CLI keeps nothing between
//! calls: every invocation opens the store, loads, changes, commits.

mod blob;
pub(crate) mod counters;
mod lock;
pub(crate) mod mapped;
mod pins;
pub(crate) mod pod;

use std::path::PathBuf;

use crate::compile::tables::Hook;
use crate::error::Result;
use crate::model::{Counters, Policy, Rule, Ruleset, Table, TableKind, Target};

pub use blob::{FilterChange, Outline};
pub use lock::LockWait;
pub use pins::{bpffs_root as pin_root, gc_stale, namespace_dir, netns_cookie, PIN_ROOT_ENV};

/// An open store: the lock is held until it is dropped.
pub struct Store {
    pins: pins::Pins,
    _lock: lock::XtablesLock,
}

impl Store {
    /// Takes the xtables lock as iptables does (`wait`: `-w [secs]`), then opens (creating on
    /// first use) the pinned state of the current network namespace.
    pub fn open(wait: LockWait) -> Result<Store> {
        let lock = lock::XtablesLock::acquire(wait)?;
        let pins = pins::Pins::open_or_create()?;
        Ok(Store { pins, _lock: lock })
    }

    /// Has `prepare` called with the stored rules' count before a change meant to patch the
    /// datapath's image (`commit_added`, `commit_delete`, `commit_chains`) rebuilds it instead,
    /// decoding and compiling every rule: the command can ready its heap for that (`cli::heap`).
    pub fn before_rebuild(&mut self, prepare: fn(usize)) {
        self.pins.before_rebuild = Some(prepare);
    }

    /// Detaches the programs of the current network namespace and deletes its pinned state,
    /// whatever layout version wrote it (under the xtables lock, without opening it).
    pub fn reset(wait: LockWait) -> Result<()> {
        let _lock = lock::XtablesLock::acquire(wait)?;
        let (dir, _) = pins::namespace_dir()?;
        if !dir.exists() {
            return Ok(());
        }
        crate::datapath::detach(&dir)?;
        std::fs::remove_dir_all(&dir).map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
        Ok(())
    }

    /// The stored ruleset with its rules still encoded: enough for `commit_added` and
    /// `commit_delete`.
    pub fn load_outline(&mut self) -> Result<Outline> {
        self.pins.load_outline()
    }

    /// Adds `rules` (new, without jumps) to filter chain `chain` of `outline` (just loaded)
    /// where `place` says (`-A`, `-I`, `-R`), and makes that the live ruleset as `commit`
    /// would, without re-encoding the rules already stored, nor compiling them when the
    /// datapath can patch its image (decoding them only to find where a user chain is
    /// inlined). (`Outline::decode` gives the model when this does not apply.)
    pub fn commit_added(&mut self, outline: Outline, chain: &str, rules: Vec<Rule>, place: Place) -> Result<()> {
        self.pins.commit_added(outline, chain, rules, place)
    }

    /// Makes `outline`, loaded and then given the chains of filter table `filter` (`-N`, `-P`,
    /// `-X`, `-E`, `-F`: `Outline::set_chains`, and for the last two `rename_chain` and
    /// `clear_rules`), the live ruleset as `commit` would, decoding nothing and compiling
    /// nothing when the datapath enforces the ruleset before and `change` says its rules
    /// stay: only chains no packet reaches changed (None), or a policy, one slot of its
    /// image (Policies). `change` Rules: the new outline is decoded and compiled.
    pub fn commit_chains(&mut self, outline: Outline, change: FilterChange, filter: &Table) -> Result<()> {
        self.pins.commit_chains(outline, change, filter)
    }

    /// Makes `outline`, loaded and then without the rules `deleted` from a filter chain
    /// (`Outline::remove`), the live ruleset, as `commit` would, without compiling when the
    /// datapath can patch its image (see `enforce_delete`).
    pub fn commit_delete(&mut self, outline: Outline, deleted: &[Rule]) -> Result<()> {
        self.pins.commit_delete(outline, deleted)
    }

    /// The stored ruleset (counters not filled in; see `load_counters`).
    pub fn load(&mut self) -> Result<Ruleset> {
        self.pins.load_outline()?.decode()
    }

    /// Fills `Rule::counters` and built-in chains' `Chain::counters` with the live counts.
    pub fn load_counters(&self, rs: &mut Ruleset) -> Result<()> {
        self.pins.load_counters(rs, true)
    }

    /// Fills built-in chains' `Chain::counters` with the live counts, not the rules' (what
    /// `iptables-save` without `-c` prints).
    pub fn load_policy_counters(&self, rs: &mut Ruleset) -> Result<()> {
        self.pins.load_counters(rs, false)
    }

    /// Makes `rs` the live ruleset, atomically: assigns ids to new rules
    /// (`Rule::UNASSIGNED`) and sets their counters to `Rule::counters` (what `-c` gave, or 0),
    /// compiles, writes the datapath tables and the serialized model. On error nothing changed.
    /// `appended`: the only change since `load` is rules appended to a built-in filter chain,
    /// which the datapath may then patch in rather than rebuild. `before`: the outline `rs`
    /// was decoded from, when it is the live one: a change that leaves what the datapath
    /// enforces alone (or touches only policies) then compiles nothing.
    pub fn commit(&mut self, rs: &mut Ruleset, appended: Option<Appended>, before: Option<&Outline>) -> Result<()> {
        self.pins.commit(rs, appended, before)
    }

    /// Sets the counters of existing rules (by id), e.g. to zero for `-Z`.
    pub fn set_rule_counters(&mut self, ids: &[(u32, Counters)]) -> Result<()> {
        self.pins.set_rule_counters(ids)
    }

    /// Sets a built-in chain's policy counters (`-Z`, restore `--counters`).
    pub fn set_policy_counters(&mut self, chain: &str, c: Counters) -> Result<()> {
        self.pins.set_policy_counters(chain, c)
    }

    /// The pin directory of this namespace (for the datapath and diagnostics).
    pub fn pin_dir(&self) -> &PathBuf {
        &self.pins.dir
    }
}

/// `count` rules appended to the end of the built-in filter chain of `hook` (`-A`).
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub hook: Hook,
    pub count: usize,
}

/// Where `Store::commit_added` puts new rules in a chain (indices into its rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// At its end (`-A`).
    End,
    /// Before the rule at this index, or at the end when it has that many (`-I`).
    Before(usize),
    /// In place of the rule at this index (`-R`).
    Replacing(usize),
}

/// Where rules just added to a filter chain went, for the datapath.
enum AddedAt {
    End,
    /// Before the chain's rule `id`, replacing the rule `replaced` (`-R`) if any.
    Before { id: u32, replaced: Option<Rule> },
}

/// Rules just added to filter chain `chain` of `table` (its chains, with their rules those
/// the added rules jump to and the chains these reach: all their compiling inlines);
/// when `chain` is a user chain, `jumps` has the stored rules that jump (where it is inlined,
/// `Outline::jump_rules`); `reached`: no earlier rule of the chain always ends its walk.
struct Added<'a> {
    chain: &'a str,
    table: &'a Table,
    jumps: Option<&'a Table>,
    rules: &'a [Rule],
    reached: bool,
    at: AddedAt,
}

/// Patches the datapath, which enforces the ruleset before the change, with the added rules
/// alone: appended to a built-in chain's hook (`compile::compile_tail`), or inserted in place
/// where the chain is (`compile::compile_in_chain`, for a user chain in every place a hook
/// inlines it); false when the ruleset must be enforced whole instead. Called, as `enforce`,
/// before the new model is made live.
fn enforce_added(dir: &std::path::Path, a: &Added, pass_all: bool) -> Result<bool> {
    if datapath_off() || pass_all {
        return Ok(false);
    }
    let (before, replaced) = match &a.at {
        AddedAt::End => (None, None),
        AddedAt::Before { replaced: Some(r), .. } if !deletable_in_place(r) => return Ok(false),
        AddedAt::Before { id, replaced } => (Some(*id), replaced.as_ref().map(|r| r.id)),
    };
    let places = match Hook::of_chain(a.chain) {
        Some(hook) if before.is_none() => {
            let tail = |base| crate::compile::compile_tail(a.table, hook, a.rules, a.reached, base);
            return crate::datapath::append_rules(dir, hook, tail);
        }
        Some(hook) => {
            // inserted rules neither jump nor skip (`flat_inserted`): no compiled index of theirs
            // needs resolving
            let Some(actions) = crate::compile::compile_tail(a.table, hook, a.rules, a.reached, 0)? else { return Ok(false) };
            let Some(actions) = crate::compile::flat_inserted(actions) else { return Ok(false) };
            vec![(hook, vec![crate::compile::Inlined { path: Vec::new(), goto: false, actions }])]
        }
        None => {
            let Some(mut table) = a.jumps.cloned() else { return Ok(false) };
            // the chains the added rules jump to are inlined after them whole (`a.table` has
            // their rules)
            for c in a.table.chains.iter().filter(|c| !c.rules.is_empty()) {
                if let Some(t) = table.chain_mut(&c.name) {
                    t.rules.clone_from(&c.rules);
                }
            }
            let mut places = Vec::new();
            for hook in Hook::ALL {
                match crate::compile::compile_in_chain(&table, hook, a.chain, a.rules, a.reached)? {
                    None => return Ok(false),
                    Some(p) if p.is_empty() => {}
                    Some(p) => {
                        let flat = p.into_iter().map(|i| Some(crate::compile::Inlined { actions: crate::compile::flat_inserted(i.actions)?, ..i }));
                        let Some(p) = flat.collect::<Option<Vec<_>>>() else { return Ok(false) };
                        places.push((hook, p))
                    }
                }
            }
            // inlined nowhere (reached by no rule), so none of its rules is compiled
            if places.is_empty() {
                return Ok(crate::datapath::enforces_installed(dir)?);
            }
            places
        }
    };
    crate::datapath::insert_rules(dir, &places, before, replaced)
}

/// Whether the compiled rules of `r` can be turned into no-ops in the datapath's image: it
/// neither jumps (its chain is inlined after it) nor always ends the chain's walk (the rules
/// after it are not compiled).
fn deletable_in_place(r: &Rule) -> bool {
    !r.ends_walk() && !matches!(r.target, Target::Jump(_) | Target::Goto(_))
}

/// Patches the datapath, which enforces the ruleset before the deletion, so that the rules
/// just `deleted` from a filter chain do nothing (wherever the chain is inlined); false when
/// the ruleset must be enforced whole instead (`deletable_in_place`).
fn enforce_delete(dir: &std::path::Path, deleted: &[Rule], pass_all: bool) -> Result<bool> {
    if datapath_off() || pass_all || !deleted.iter().all(deletable_in_place) {
        return Ok(false);
    }
    let ids: Vec<u32> = deleted.iter().map(|r| r.id).collect();
    crate::datapath::delete_rules(dir, &ids)
}

/// Keeps the datapath, which enforces `before`, for `after`, the same ruleset changed into
/// `rs` (not passing everything), when the change leaves alone every rule a packet can reach
/// (`Outline::filter_change`): `-N`, `-X`, `-E` or edits of chains nothing jumps to need no
/// compiling, and a new policy is one slot of the installed image. False when the ruleset
/// must be enforced whole instead. Compiling looks only at what packets reach (loops
/// included), so nothing this skips could have refused the ruleset.
fn enforce_same(dir: &std::path::Path, before: &Outline, after: &Outline, rs: &Ruleset, pass_all: bool) -> Result<bool> {
    let Some(filter) = rs.table(TableKind::Filter) else { return Ok(false) };
    enforce_change(dir, before.filter_change(after, &filter.reachable_chains()), filter, pass_all)
}

/// Keeps the datapath for a ruleset (not passing everything) whose filter table `filter` is
/// what the enforced one was but for `change` (`enforce_same`); false when it must be
/// enforced whole instead.
fn enforce_change(dir: &std::path::Path, change: FilterChange, filter: &Table, pass_all: bool) -> Result<bool> {
    if datapath_off() || pass_all {
        return Ok(false);
    }
    match change {
        FilterChange::Rules => Ok(false),
        FilterChange::None => Ok(crate::datapath::enforces_installed(dir)?),
        FilterChange::Policies => {
            let accepts = |h: Hook| filter.chain(h.chain_name()).is_some_and(|c| c.policy != Some(Policy::Drop));
            let policies: Vec<(Hook, bool)> = Hook::ALL.into_iter().map(|h| (h, accepts(h))).collect();
            Ok(crate::datapath::set_policies(dir, &policies)?)
        }
    }
}

/// Compiles the ruleset and hands it to the datapath. Called by a commit after the new model is
/// written but before it is made live, so a ruleset the datapath refuses is never stored.
fn enforce(dir: &std::path::Path, rs: &Ruleset) -> Result<()> {
    enforce_compiled(dir, &crate::compile::compile(rs)?, rs.is_pass_all())
}

/// `enforce` for a ruleset already compiled into `compiled`.
fn enforce_compiled(dir: &std::path::Path, compiled: &crate::compile::tables::Compiled, pass_all: bool) -> Result<()> {
    if datapath_off() {
        return Ok(());
    }
    Ok(crate::datapath::apply(dir, compiled, pass_all)?)
}

/// `BPF_IPTABLES_DATAPATH=off`: a switch for tests of the command-line front end (text, exit
/// codes, state), which store and list rules the datapath would refuse or that need no
/// packets. Rules are then stored but NOT enforced; never set it on a host you protect.
pub const DATAPATH_ENV: &str = "BPF_IPTABLES_DATAPATH";

fn datapath_off() -> bool {
    std::env::var_os(DATAPATH_ENV).is_some_and(|v| v == "off")
}

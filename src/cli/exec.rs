//! Applies one parsed command to a table of the model, with libiptc's state errors (exit 1) in
//! iptables' wording, and the table-wide checks the kernel makes when a table is replaced
//! (jumps to built-in chains, loops reachable from a built-in chain).
//!
//! Counters are not part of the model's edits: `-Z` and `-P ... -c` are returned as requests
//! the caller sends to the store after the commit.

use std::collections::HashMap;

use smallvec::SmallVec;

use crate::error::{param, Error, Result};
use crate::model::{Chain, Counters, Inv, Ipv4Mask, Policy, Rule, Table, Target, MAX_CHAIN_NAME_LEN};
use crate::output::list::{self, Format};
use crate::output::target_name;
use crate::output::save;
use crate::parse::{Command, Invocation, RuleSpec, TargetSpec};

/// What a command did besides editing the table.
#[derive(Debug, Default)]
pub struct Effects {
    /// Text for stdout (listings, `-v` echoes).
    pub stdout: String,
    /// The table was edited and must be committed.
    pub changed: bool,
    /// Rule ids whose counters are to be zeroed.
    pub zero_rules: Vec<u32>,
    /// Built-in chains whose policy counters are to be set.
    pub policy_counters: Vec<(String, Counters)>,
    /// The edit only appended this many rules to the end of its chain (`-A`).
    pub appended: Option<usize>,
}

fn state(msg: &str) -> Error {
    Error::State(msg.to_string())
}

const NO_CHAIN: &str = "No chain/target/match by that name.";
const BAD_RULE: &str = "Bad rule (does a matching rule exist in that chain?).";
const EINVAL: &str = "Invalid argument. Run `dmesg' for more information.";

/// Index of chain `name`: built-ins are few and first, user chains are kept sorted, so this
/// is a short scan plus a binary search (restores of thousands of chains stay fast).
pub fn find_chain(table: &Table, name: &str) -> Option<usize> {
    let nbuiltin = table.chains.iter().take_while(|c| c.is_builtin()).count();
    if let Some(i) = table.chains[..nbuiltin].iter().position(|c| c.name == name) {
        return Some(i);
    }
    table.chains[nbuiltin..]
        .binary_search_by(|c| c.name.as_bytes().cmp(name.as_bytes()))
        .ok()
        .map(|i| i + nbuiltin)
}

/// Adds a user chain in its sorted place (strcmp order, as iptables lists them). Binary search,
/// so the common case of a restore declaring chains in sorted order appends without moving
/// anything; `Table::add_user_chain` scans linearly, which is quadratic over large restores.
pub fn insert_user_chain(table: &mut Table, chain: Chain) {
    let nbuiltin = table.chains.iter().take_while(|c| c.is_builtin()).count();
    let pos = table.chains[nbuiltin..].partition_point(|c| c.name.as_bytes() <= chain.name.as_bytes());
    table.chains.insert(nbuiltin + pos, chain);
}

/// Resolves `-j`/`-g` against the table (iptables does this once the table is loaded).
fn resolve_target(table: &Table, spec: &TargetSpec) -> Result<Target> {
    match spec {
        TargetSpec::Final(t @ (Target::Reject(_) | Target::Log(_) | Target::Mark(_))) => {
            // A user chain named like an extension target wins, as in iptables.
            let name = target_name(t);
            match find_chain(table, name) {
                Some(_) => {
                    eprintln!("Warning: using chain {name}, not extension");
                    Ok(Target::Jump(name.to_string()))
                }
                None => Ok(t.clone()),
            }
        }
        TargetSpec::Final(t) => Ok(t.clone()),
        TargetSpec::Chain(n) => match find_chain(table, n) {
            Some(_) => Ok(Target::Jump(n.clone())),
            None => Err(param(format!("Couldn't load target `{n}':No such file or directory\n"))),
        },
        TargetSpec::Goto(n) => match find_chain(table, n) {
            Some(_) => Ok(Target::Goto(n.clone())),
            None => Err(param(format!("goto '{n}' is not a chain"))),
        },
    }
}

fn addr(m: Ipv4Mask, invert: bool) -> Option<Inv<Ipv4Mask>> {
    // "anywhere" without `!` is the same rule as no address at all.
    (m.mask != 0 || m.addr != 0 || invert).then_some(Inv::new(m, invert))
}

/// The rules a spec stands for: one per source x destination, in iptables' order.
pub fn expand(table: &Table, spec: &RuleSpec) -> Result<SmallVec<[Rule; 1]>> {
    let target = resolve_target(table, &spec.target)?;
    let any = [Ipv4Mask::ANY];
    let srcs = if spec.srcs.is_empty() { &any[..] } else { &spec.srcs[..] };
    let dsts = if spec.dsts.is_empty() { &any[..] } else { &spec.dsts[..] };
    let mut out = SmallVec::with_capacity(srcs.len() * dsts.len());
    for s in srcs {
        for d in dsts {
            let mut ip = spec.ip.clone();
            ip.src = addr(*s, spec.src_invert);
            ip.dst = addr(*d, spec.dst_invert);
            out.push(Rule {
                id: Rule::UNASSIGNED,
                ip,
                matches: spec.matches.clone(),
                target: target.clone(),
                counters: spec.counters.unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// `-C`'s (and `-D`'s) answer for a rule with `target` that its chain does not hold (or that
/// has no chain, unless `chain_exists`): iptables-legacy 1.8.9 (libiptc) says "Bad rule" for a
/// rule with a standard verdict or no target, or when there is no such chain, but "No
/// chain/target/match by that name" for a rule with an extension target or a jump (measured).
pub fn no_such_rule(chain_exists: bool, target: &Target) -> Error {
    let standard = matches!(target, Target::None | Target::Accept | Target::Drop | Target::Return);
    state(if chain_exists && !standard { NO_CHAIN } else { BAD_RULE })
}

fn chain_index(table: &Table, name: &str, missing: &str) -> Result<usize> {
    find_chain(table, name).ok_or_else(|| state(missing))
}

fn echo(fx: &mut Effects, verbose: bool, rule: &Rule) {
    if verbose {
        list::rule_line(&mut fx.stdout, rule, 0, &Format::PRINT_RULE);
    }
}

/// Tries `step` on each of `rules` (a spec's expansion) in turn, each echoed first (`-v`):
/// like iptables, one that fails does not keep the others from being echoed and tried; the
/// first error comes back once all were.
fn each_rule(fx: &mut Effects, verbose: bool, rules: SmallVec<[Rule; 1]>, mut step: impl FnMut(Rule) -> Result<()>) -> Result<()> {
    let mut failed = None;
    for r in rules {
        echo(fx, verbose, &r);
        if let Err(e) = step(r) {
            failed.get_or_insert(e);
        }
    }
    failed.map_or(Ok(()), Err)
}

/// `-v`'s line for a whole-chain command (`Flushing`, `Zeroing`, `Deleting`): iptables prints
/// it before it tries, so also when the chain turns out not to be there or not deletable.
fn echo_chain(fx: &mut Effects, verbose: bool, what: &str, chain: &str) {
    if verbose {
        fx.stdout.push_str(&format!("{what} chain `{chain}'\n"));
    }
}

/// Zeroes chain `c`'s counters, its rules' ids `ids` (echoed before: `echo_chain`).
fn zero_chain(fx: &mut Effects, c: &Chain, ids: &[u32]) {
    fx.zero_rules.extend(ids.iter().copied().filter(|&id| id != Rule::UNASSIGNED));
    if c.is_builtin() {
        fx.policy_counters.push((c.name.clone(), Counters::default()));
    }
}

/// Applies `inv.command` to `table`. Listing commands read `table` (counters loaded by the
/// caller); the others edit it and set `changed`.
pub fn apply(table: &mut Table, inv: &Invocation) -> Result<Effects> {
    let mut fx = Effects::default();
    apply_to(table, inv, &mut fx)?;
    Ok(fx)
}

/// `apply` into `fx`, which keeps what was echoed (`-v`) when it fails: like iptables, a
/// rule is echoed before it is added, checked or deleted, and then the chain or index it
/// names may turn out not to exist (the caller prints both).
pub fn apply_to(table: &mut Table, inv: &Invocation, fx: &mut Effects) -> Result<()> {
    let verbose = inv.verbose > 0;
    match &inv.command {
        Command::Append { chain, rule } => {
            let rules = expand(table, rule)?;
            fx.appended = Some(rules.len());
            each_rule(fx, verbose, rules, |r| {
                let ci = chain_index(table, chain, NO_CHAIN)?;
                table.chains[ci].rules.push(r);
                Ok(())
            })?;
            fx.changed = true;
        }
        Command::Insert { chain, num, rule } => {
            let rules = expand(table, rule)?;
            let pos = *num as usize - 1;
            // Each rule goes in at the same position, so the last expanded ends up first,
            // as with iptables.
            each_rule(fx, verbose, rules, |r| {
                let ci = chain_index(table, chain, NO_CHAIN)?;
                if pos > table.chains[ci].rules.len() {
                    return Err(state("Index of insertion too big."));
                }
                table.chains[ci].rules.insert(pos, r);
                Ok(())
            })?;
            fx.changed = true;
        }
        Command::Replace { chain, num, rule } => {
            // (the walker guarantees exactly one source and one destination)
            let rules = expand(table, rule)?;
            each_rule(fx, verbose, rules, |r| {
                let ci = chain_index(table, chain, NO_CHAIN)?;
                let pos = *num as usize - 1;
                if pos >= table.chains[ci].rules.len() {
                    return Err(state("Index of replacement too big."));
                }
                table.chains[ci].rules[pos] = r;
                Ok(())
            })?;
            fx.changed = true;
        }
        Command::Check { chain, rule } | Command::Delete { chain, rule } => {
            let rules = expand(table, rule)?;
            let delete = matches!(inv.command, Command::Delete { .. });
            each_rule(fx, verbose, rules, |r| {
                let Some(ci) = find_chain(table, chain) else { return Err(no_such_rule(false, &r.target)) };
                let c = &mut table.chains[ci];
                let Some(pos) = c.rules.iter().position(|x| x.same_spec(&r)) else {
                    return Err(no_such_rule(true, &r.target));
                };
                if delete {
                    c.rules.remove(pos);
                }
                Ok(())
            })?;
            fx.changed = delete;
        }
        Command::DeleteNum { chain, num } => {
            let ci = chain_index(table, chain, NO_CHAIN)?;
            let pos = *num as usize - 1;
            if pos >= table.chains[ci].rules.len() {
                return Err(state("Index of deletion too big."));
            }
            table.chains[ci].rules.remove(pos);
            fx.changed = true;
        }
        Command::List { rules_format, chain, num, zero } => {
            let text = if *rules_format {
                save::list_rules(table, chain.as_deref(), *num, verbose)
            } else {
                let f = Format { numeric: inv.numeric, verbose, exact: inv.exact, line_numbers: inv.line_numbers, notable: false };
                list::list_table(table, chain.as_deref(), *num, &f)
            };
            fx.stdout = text.ok_or_else(|| state(NO_CHAIN))?;
            if *zero {
                zero_counters(table, &decoded_ids, fx, chain.as_deref(), *num, verbose)?;
            }
        }
        Command::Zero { chain, num } => zero_counters(table, &decoded_ids, fx, chain.as_deref(), *num, verbose)?,
        Command::Flush { chain } => {
            let range = match chain {
                Some(n) => {
                    // (echoed first, as iptables does, even for a chain that is not there)
                    echo_chain(fx, verbose, "Flushing", n);
                    let i = chain_index(table, n, NO_CHAIN)?;
                    i..i + 1
                }
                None => {
                    for c in &table.chains {
                        echo_chain(fx, verbose, "Flushing", &c.name);
                    }
                    0..table.chains.len()
                }
            };
            for c in &mut table.chains[range] {
                c.rules.clear();
            }
            fx.changed = true;
        }
        Command::NewChain { chain } => {
            if find_chain(table, chain).is_some() {
                return Err(state("Chain already exists."));
            }
            insert_user_chain(table, Chain::user(chain));
            fx.changed = true;
        }
        Command::DeleteChain { chain } => {
            delete_chains(table, fx, chain.as_deref(), verbose)?;
            fx.changed = true;
        }
        Command::Rename { old, new } => {
            let ci = chain_index(table, old, NO_CHAIN)?;
            if table.chains[ci].is_builtin() {
                return Err(state(NO_CHAIN));
            }
            if find_chain(table, new).is_some() {
                return Err(state("File exists."));
            }
            if new.len() > MAX_CHAIN_NAME_LEN {
                return Err(state(EINVAL));
            }
            let mut c = table.chains.remove(ci);
            c.name = new.clone();
            insert_user_chain(table, c);
            for r in table.chains.iter_mut().flat_map(|c| c.rules.iter_mut()) {
                if let Target::Jump(n) | Target::Goto(n) = &mut r.target {
                    if n == old {
                        *n = new.clone();
                    }
                }
            }
            fx.changed = true;
        }
        Command::Policy { chain, policy, counters } => {
            let ci = chain_index(table, chain, "Bad built-in chain name.")?;
            if !table.chains[ci].is_builtin() {
                return Err(state("Bad built-in chain name."));
            }
            let p = match policy.as_str() {
                "ACCEPT" => Policy::Accept,
                "DROP" => Policy::Drop,
                _ => return Err(state("Bad policy name. Run `dmesg' for more information.")),
            };
            table.chains[ci].policy = Some(p);
            if let Some(c) = counters {
                fx.policy_counters.push((chain.clone(), *c));
            }
            fx.changed = true;
        }
    }
    Ok(())
}

/// The ids of chain `c`'s rules, decoded in it.
fn decoded_ids(c: &Chain) -> Vec<u32> {
    c.rules.iter().map(|r| r.id).collect()
}

/// `-Z [chain [rulenum]]` on `table`, whose chain `c` has the rules of ids `ids(c)` (decoded
/// in it, or still stored: `table` then holds the chains alone).
pub fn zero_counters(
    table: &Table,
    ids: &dyn Fn(&Chain) -> Vec<u32>,
    fx: &mut Effects,
    chain: Option<&str>,
    num: Option<u32>,
    verbose: bool,
) -> Result<()> {
    match chain {
        None => {
            for c in &table.chains {
                echo_chain(fx, verbose, "Zeroing", &c.name);
                zero_chain(fx, c, &ids(c));
            }
        }
        Some(n) => {
            if num.is_none() {
                echo_chain(fx, verbose, "Zeroing", n);
            }
            let c = &table.chains[chain_index(table, n, NO_CHAIN)?];
            let ids = ids(c);
            match num {
                None => zero_chain(fx, c, &ids),
                Some(k) => {
                    let id = ids.get(k as usize - 1).ok_or_else(|| state("Index of counter too big."))?;
                    fx.zero_rules.push(*id);
                }
            }
        }
    }
    Ok(())
}

/// `-X [chain]`: libiptc refuses a built-in, a referenced or a non-empty chain; without a name
/// every user chain is tried and any refusal (the last one reported) cancels the whole command.
fn delete_chains(table: &mut Table, fx: &mut Effects, chain: Option<&str>, verbose: bool) -> Result<()> {
    let mut refs: HashMap<String, usize> = HashMap::new();
    for r in table.rules() {
        if let Target::Jump(n) | Target::Goto(n) = &r.target {
            *refs.entry(n.clone()).or_default() += 1;
        }
    }
    let check = |c: &Chain| -> Result<()> {
        if c.is_builtin() {
            return Err(state(EINVAL));
        }
        if refs.get(&c.name).copied().unwrap_or(0) > 0 {
            return Err(state("Too many links."));
        }
        if !c.rules.is_empty() {
            return Err(state("Directory not empty."));
        }
        Ok(())
    };
    match chain {
        Some(n) => {
            echo_chain(fx, verbose, "Deleting", n);
            let ci = chain_index(table, n, NO_CHAIN)?;
            check(&table.chains[ci])?;
            table.chains.remove(ci);
        }
        None => {
            let mut last_err = None;
            for c in table.user_chains() {
                echo_chain(fx, verbose, "Deleting", &c.name);
                if let Err(e) = check(c) {
                    last_err = Some(e);
                }
            }
            if let Some(e) = last_err {
                return Err(e);
            }
            table.chains.retain(|c| c.is_builtin());
        }
    }
    Ok(())
}

/// What the kernel checks when a table is replaced: every jump goes to a user chain, and no
/// loop is reachable from a built-in chain (`compile::check_loops`).
pub fn validate(table: &Table) -> Result<()> {
    for r in table.chains.iter().flat_map(|c| c.rules.iter()) {
        if let Target::Jump(n) | Target::Goto(n) = &r.target {
            if !table.chain(n).is_some_and(|c| !c.is_builtin()) {
                return Err(state(EINVAL));
            }
        }
    }
    crate::compile::check_loops(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TableKind;
    use crate::parse::cmdline::{parse, Parsed};

    fn run(t: &mut Table, line: &str) -> Result<Effects> {
        let args: Vec<&str> = line.split_whitespace().collect();
        let Ok(Parsed::Run(inv)) = parse(&args, false) else { panic!("{line}") };
        let fx = apply(t, &inv)?;
        validate(t)?;
        Ok(fx)
    }

    fn msg(r: Result<Effects>) -> String {
        match r {
            Err(e) => e.render("iptables"),
            Ok(_) => "ok".into(),
        }
    }

    #[test]
    fn probe_sequence() {
        let mut t = Table::new(TableKind::Filter);
        assert_eq!(msg(run(&mut t, "-N foo")), "ok");
        assert_eq!(msg(run(&mut t, "-N foo")), "iptables: Chain already exists.\n");
        assert_eq!(msg(run(&mut t, "-A noexist -j ACCEPT")), format!("iptables: {NO_CHAIN}\n"));
        assert_eq!(msg(run(&mut t, "-A INPUT -j foo")), "ok");
        assert!(msg(run(&mut t, "-A INPUT -j nosuchtarget")).contains("Couldn't load target `nosuchtarget'"));
        assert_eq!(msg(run(&mut t, "-C INPUT -j foo")), "ok");
        assert_eq!(msg(run(&mut t, "-C INPUT -j ACCEPT")), format!("iptables: {BAD_RULE}\n"));
        assert_eq!(msg(run(&mut t, "-C nonexist -j ACCEPT")), format!("iptables: {BAD_RULE}\n"));
        assert_eq!(msg(run(&mut t, "-D INPUT 5")), "iptables: Index of deletion too big.\n");
        assert_eq!(msg(run(&mut t, "-I INPUT 5 -j ACCEPT")), "iptables: Index of insertion too big.\n");
        assert_eq!(msg(run(&mut t, "-R INPUT 5 -j ACCEPT")), "iptables: Index of replacement too big.\n");
        assert_eq!(msg(run(&mut t, "-I INPUT 2 -s 192.0.2.1 -j DROP")), "ok");
        assert_eq!(msg(run(&mut t, "-X foo")), "iptables: Too many links.\n");
        assert_eq!(msg(run(&mut t, "-R INPUT 1 -s 192.0.2.2 -j DROP")), "ok");
        assert_eq!(msg(run(&mut t, "-A foo -j ACCEPT")), "ok");
        assert_eq!(msg(run(&mut t, "-X foo")), "iptables: Directory not empty.\n");
        assert_eq!(msg(run(&mut t, "-E foo bar")), "ok");
        assert_eq!(msg(run(&mut t, "-E nonexist baz")), format!("iptables: {NO_CHAIN}\n"));
        assert_eq!(msg(run(&mut t, "-P foo DROP")), "iptables: Bad built-in chain name.\n");
        assert_eq!(msg(run(&mut t, "-P bar DROP")), "iptables: Bad built-in chain name.\n");
        assert_eq!(msg(run(&mut t, "-P INPUT RETURN")), "iptables: Bad policy name. Run `dmesg' for more information.\n");
        assert_eq!(msg(run(&mut t, "-X INPUT")), format!("iptables: {EINVAL}\n"));
        let fx = run(&mut t, "-S").ok().map(|f| f.stdout);
        assert_eq!(
            fx.as_deref(),
            Some("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N bar\n-A INPUT -s 192.0.2.2/32 -j DROP\n-A INPUT -s 192.0.2.1/32 -j DROP\n-A bar -j ACCEPT\n")
        );
    }

    #[test]
    fn loops_and_builtin_jumps() {
        let mut t = Table::new(TableKind::Filter);
        for l in ["-N a", "-N b", "-A a -j b", "-A b -j a"] {
            assert_eq!(msg(run(&mut t, l)), "ok", "{l}");
        }
        let mut t2 = t.clone();
        assert_eq!(msg(run(&mut t2, "-A INPUT -j a")), "iptables: Too many levels of symbolic links.\n");
        assert_eq!(msg(run(&mut t, "-A INPUT -j INPUT")), format!("iptables: {EINVAL}\n"));
        // Like the kernel, jumps behind an unconditional verdict are not followed.
        let mut t = Table::new(TableKind::Filter);
        for l in ["-N x", "-A x -j ACCEPT", "-A x -j x", "-A INPUT -j x"] {
            assert_eq!(msg(run(&mut t, l)), "ok", "{l}");
        }
        assert_eq!(msg(run(&mut t, "-I x -s 1.1.1.1 -j x")), "iptables: Too many levels of symbolic links.\n");
    }

    #[test]
    fn multi_address_expansion_and_delete_all() {
        let mut t = Table::new(TableKind::Filter);
        assert_eq!(msg(run(&mut t, "-I INPUT 1 -s 1.1.1.1,2.2.2.2 -j DROP")), "ok");
        let s = run(&mut t, "-S INPUT").ok().map(|f| f.stdout);
        assert_eq!(s.as_deref(), Some("-P INPUT ACCEPT\n-A INPUT -s 2.2.2.2/32 -j DROP\n-A INPUT -s 1.1.1.1/32 -j DROP\n"));
        assert_eq!(msg(run(&mut t, "-D INPUT -s 2.2.2.2,1.1.1.1 -j DROP")), "ok");
        assert_eq!(t.chains[0].rules.len(), 0);
        for l in ["-N a", "-N b", "-N c", "-A b -j ACCEPT", "-A INPUT -j c"] {
            assert_eq!(msg(run(&mut t, l)), "ok", "{l}");
        }
        assert_eq!(msg(run(&mut t, "-X")), "iptables: Too many links.\n");
        assert_eq!(t.user_chains().count(), 3);
        assert_eq!(msg(run(&mut t, "-F")), "ok");
        assert_eq!(msg(run(&mut t, "-X")), "ok");
        assert_eq!(t.user_chains().count(), 0);
    }
}

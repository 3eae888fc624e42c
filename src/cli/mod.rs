//! Runs one invocation: picks the personality from argv[0], parses, applies the command to the
//! ruleset loaded from the store, commits, prints, and maps errors to iptables' exit codes.
//!
//! Only the filter table is enforced. The other tables iptables knows are listed (empty) and may
//! be flushed, zeroed or have chains deleted (no-ops on an empty table), but anything that would
//! give them rules, user chains or a DROP policy is refused with exit 2 rather than accepted and
//! ignored.

pub mod admin;
pub mod exec;
pub mod ext_help;
pub mod heap;
pub mod help;
pub mod restore;

use std::ffi::OsString;
use std::io::Write;

use crate::compile::tables::Hook;
use crate::error::{param, Error, Result, VARIANT, VERSION};
use crate::model::{Chain, Policy, Ruleset, Table, TableKind};
use crate::output::save;
use crate::parse::cmdline::{self, Parsed};
use crate::parse::options::{self, OptDef, Value};
use crate::parse::{Command, Invocation, TargetSpec};
use crate::store::{self, LockWait, Outline, Place, Store};

/// Which program we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Personality {
    Iptables,
    Save,
    Restore,
}

impl Personality {
    /// The program name iptables prints in messages.
    pub fn prog(self) -> &'static str {
        match self {
            Personality::Iptables => "iptables",
            Personality::Save => "iptables-save",
            Personality::Restore => "iptables-restore",
        }
    }

    /// From the basename of argv[0]: `*-save`, `*-restore`, anything else is iptables.
    pub fn from_argv0(argv0: &str) -> Personality {
        let base = argv0.rsplit('/').next().unwrap_or(argv0);
        if base.ends_with("-save") {
            Personality::Save
        } else if base.ends_with("-restore") {
            Personality::Restore
        } else {
            Personality::Iptables
        }
    }
}

/// `PROG v1.8.9 (bpf)`.
pub fn version_line(prog: &str) -> String {
    format!("{prog} v{VERSION} ({VARIANT})")
}

/// Writes to stdout, ignoring a closed pipe (`iptables -L | head`).
pub fn print(text: &str) {
    // (a restore prints each line's `-v` echo: mostly nothing, 10 000 times)
    if text.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

pub fn main(args: Vec<OsString>) -> i32 {
    let mut args: Vec<String> = args.into_iter().map(|a| a.to_string_lossy().into_owned()).collect();
    if args.is_empty() {
        args.push("iptables".into());
    }
    let mut who = Personality::from_argv0(&args[0]);
    // `bpf-iptables save ...` / `bpf-iptables restore ...`: iptables itself would reject a
    // first word that is not an option, so these forms cannot clash with its syntax.
    if who == Personality::Iptables && args[0].rsplit('/').next() == Some("bpf-iptables") {
        match args.get(1).map(String::as_str) {
            Some("save") => who = Personality::Save,
            Some("restore") => who = Personality::Restore,
            _ => {}
        }
        if who != Personality::Iptables {
            args.remove(1);
        }
    }
    let rest = &args[1..];
    if who == Personality::Iptables && args[0].rsplit('/').next() == Some("bpf-iptables") {
        if let Some(result) = admin::run(rest) {
            return result.unwrap_or_else(|e| {
                eprint!("{}", e.render("bpf-iptables"));
                e.exit_code()
            });
        }
    }
    let result = match who {
        Personality::Iptables => iptables_main(rest),
        Personality::Save => save_main(rest),
        Personality::Restore => restore::main(rest),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprint!("{}", e.render(who.prog()));
            e.exit_code()
        }
    }
}

/// The table `name`, or iptables' "can't initialize" error (exit 3).
fn table_kind(name: &str) -> Result<TableKind> {
    TableKind::from_name(name).ok_or_else(|| {
        Error::Table(format!("can't initialize iptables table `{name}': Table does not exist (do you need to insmod?)"))
    })
}

/// Whether opening the store failed for lack of privilege (iptables reports that as its
/// "can't initialize table" error, which callers recognise).
pub fn permission_denied(e: &Error) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let denied = match e {
        Error::Other(a) => a.chain().any(|c| {
            c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        }),
        _ => false,
    };
    denied || !root && matches!(e, Error::Other(_))
}

/// Refusal for a table whose rules the datapath cannot enforce.
pub fn unsupported_table(kind: TableKind) -> Error {
    param(format!(
        "table `{}' is not supported by bpf-iptables: only the filter table is enforced",
        kind.name()
    ))
}

/// A table with nothing in it that would filter or need enforcing.
pub fn is_pristine(t: &Table) -> bool {
    t.chains.iter().all(|c| c.is_builtin() && c.rules.is_empty() && c.policy == Some(Policy::Accept))
}

/// Takes the tables we do not enforce out of `rs` before it is stored; they must be pristine.
pub fn drop_unenforced(rs: &mut Ruleset) -> Result<()> {
    if let Some(t) = rs.tables.iter().find(|t| !t.kind.supported() && !is_pristine(t)) {
        return Err(unsupported_table(t.kind));
    }
    rs.tables.retain(|t| t.kind.supported());
    Ok(())
}

/// Sends counter requests to the store (only the filter table has counters there).
pub fn apply_counters(store: &mut Store, kind: TableKind, fx: &exec::Effects) -> Result<()> {
    if !kind.supported() {
        return Ok(());
    }
    if !fx.zero_rules.is_empty() {
        let zeros: Vec<_> = fx.zero_rules.iter().map(|&id| (id, Default::default())).collect();
        store.set_rule_counters(&zeros)?;
    }
    for (chain, c) in &fx.policy_counters {
        store.set_policy_counters(chain, *c)?;
    }
    Ok(())
}

/// The table named by `-t`/`--table` in `args`, when it is one we know but do not enforce and
/// `args` add a rule to it.
fn unenforced_table_arg(args: &[String]) -> Option<TableKind> {
    let adds = ["-A", "-I", "-R", "--append", "--insert", "--replace"];
    if !args.iter().any(|a| adds.contains(&a.as_str())) {
        return None;
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let name = match a.as_str() {
            "-t" | "--table" => it.next().map(String::as_str),
            _ => a.strip_prefix("--table=").or_else(|| a.strip_prefix("-t").filter(|s| !s.is_empty())),
        };
        if let Some(k) = name.and_then(TableKind::from_name) {
            return (!k.supported()).then_some(k);
        }
    }
    None
}

fn iptables_main(args: &[String]) -> Result<i32> {
    // A rule for a table we do not enforce often uses that table's targets (`-j MASQUERADE`,
    // `-j DNAT --to-destination`); say what is really wrong rather than "unknown option".
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let parsed = cmdline::parse(&words, false).map_err(|e| match unenforced_table_arg(args) {
        Some(k) if matches!(e, Error::Param(_) | Error::ParamBare(_)) => unsupported_table(k),
        _ => e,
    })?;
    let inv = match parsed {
        Parsed::Run(inv) => inv,
        Parsed::Help(exts) => {
            print(&help::with_extensions(&exts));
            return Ok(0);
        }
        Parsed::Version { inverted } => {
            if inverted {
                print(&format!("Not {VERSION} ({VARIANT}) ;-)\n"));
            } else {
                print(&format!("{}\n", version_line("iptables")));
            }
            return Ok(0);
        }
        Parsed::Ignored => return Ok(0),
    };
    run(&inv)?;
    Ok(0)
}

fn run(inv: &Invocation) -> Result<()> {
    let kind = table_kind(&inv.table)?;
    if !kind.supported()
        && matches!(inv.command, Command::Append { .. } | Command::Insert { .. } | Command::Replace { .. })
    {
        return Err(unsupported_table(kind));
    }
    let mut store = Store::open(inv.wait).map_err(|e| {
        if permission_denied(&e) {
            Error::Table(format!("can't initialize iptables table `{}': Permission denied (you must be root)", inv.table))
        } else {
            e
        }
    })?;
    store.before_rebuild(ready_heap_for);
    // Loaded once: `-A`, `-I`, `-R` and `-D` of rules that do not jump may need no more than
    // this outline.
    let mut outline = store.load_outline()?;
    if let Some(fx) = add_to_chain(&mut store, &mut outline, kind, inv)? {
        print(&fx.stdout);
        return Ok(());
    }
    if let Some(fx) = delete_from_chain(&mut store, &mut outline, kind, inv)? {
        print(&fx.stdout);
        return Ok(());
    }
    if check_in_chain(&outline, kind, inv)? {
        return Ok(());
    }
    if let Some(fx) = list_chain(&store, &outline, kind, inv)? {
        print(&fx.stdout);
        return Ok(());
    }
    if let Some(fx) = change_chains(&mut store, &mut outline, kind, inv)? {
        print(&fx.stdout);
        apply_counters(&mut store, kind, &fx)?;
        return Ok(());
    }
    if let Some(fx) = zero_chains(&outline, kind, inv)? {
        print(&fx.stdout);
        apply_counters(&mut store, kind, &fx)?;
        return Ok(());
    }
    let mut rs = decode_ready(&outline, &[])?;
    // listings print counters only with -v
    if matches!(inv.command, Command::List { .. }) && inv.verbose > 0 {
        store.load_counters(&mut rs)?;
    }
    let fx = echoed(|fx| exec::apply_to(rs.table_mut(kind), inv, fx))?;
    // Listing output first: `-L -Z` prints, then zeroes.
    if fx.changed {
        exec::validate(rs.table_mut(kind))?;
        drop_unenforced(&mut rs)?;
        let appended = match (&inv.command, fx.appended) {
            (Command::Append { chain, .. }, Some(count)) if kind == TableKind::Filter => {
                Hook::of_chain(chain).map(|hook| store::Appended { hook, count })
            }
            _ => None,
        };
        store.commit(&mut rs, appended, Some(&outline))?;
    }
    print(&fx.stdout);
    apply_counters(&mut store, kind, &fx)?;
    Ok(())
}

/// What `apply` (given fresh effects) did, or its error, with what `-v` echoed before it
/// printed first: iptables echoes a rule or chain before it tries.
fn echoed(apply: impl FnOnce(&mut exec::Effects) -> Result<()>) -> Result<exec::Effects> {
    let mut fx = exec::Effects::default();
    if let Err(e) = apply(&mut fx) {
        print(&fx.stdout);
        return Err(e);
    }
    Ok(fx)
}

/// Readies the heap for `rules` stored rules decoded (and compiled): ~1.5 KB each, about what
/// a stored rule becomes decoded, compiled and in the tables built from it.
fn ready_heap_for(rules: usize) {
    heap::expect(rules.saturating_mul(1536));
}

/// The stored ruleset, the rules of tables `flushed` left out (`Outline::decode_but`), decoded
/// into a heap readied for them (and for compiling them again).
fn decode_ready(outline: &Outline, flushed: &[TableKind]) -> Result<Ruleset> {
    ready_heap_for(outline.rule_count_but(flushed));
    outline.decode_but(flushed)
}

/// `-A`, `-I` or `-R` in a filter chain: the common edits of firewall scripts and of Docker.
/// Applied to the stored chains without their rules (all that resolving and adding looks
/// at) and added to the stored ruleset without re-encoding it (`Store::commit_added`); a
/// jump (`-A`, `-I`) is checked for loops against the stored rules that jump alone. `None`,
/// `outline` untouched: the general path applies (it also gives the errors: an index past
/// the end).
fn add_to_chain(store: &mut Store, outline: &mut Outline, kind: TableKind, inv: &Invocation) -> Result<Option<exec::Effects>> {
    let (chain, rule, place) = match &inv.command {
        Command::Append { chain, rule } => (chain, rule, Place::End),
        Command::Insert { chain, num, rule } => (chain, rule, Place::Before(*num as usize - 1)),
        Command::Replace { chain, num, rule } => (chain, rule, Place::Replacing(*num as usize - 1)),
        _ => return Ok(None),
    };
    if kind != TableKind::Filter {
        return Ok(None);
    }
    let Some(mut table) = outline.chains_of(TableKind::Filter) else { return Ok(None) };
    // A jump to a user chain is checked for loops below. The general path takes a user chain
    // named like an extension target (REJECT, LOG, MARK: a jump, with iptables' warning) and
    // `-R` with a jump (the rule it replaces may jump too, which the check would still see).
    let jumps = match &rule.target {
        TargetSpec::Final(t) if table.chain(crate::output::target_name(t)).is_none() => false,
        TargetSpec::Chain(n) | TargetSpec::Goto(n)
            if table.chain(n).is_some_and(|c| !c.is_builtin()) && !matches!(place, Place::Replacing(_)) =>
        {
            true
        }
        _ => return Ok(None),
    };
    let Some(len) = outline.chain_len(TableKind::Filter, chain) else { return Ok(None) };
    let at_or_before_end = match place {
        Place::End => true,
        Place::Before(i) => i <= len,
        Place::Replacing(i) => i < len,
    };
    if !at_or_before_end {
        return Ok(None);
    }
    // The rules as they go into the chain, in its order: applied at the head of the chain
    // without its rules (what `-I` and `-R` do with the rule's words is what `-I 1` does).
    let mut at_head = inv.clone();
    if let Command::Insert { chain, rule, .. } | Command::Replace { chain, rule, .. } = &inv.command {
        at_head.command = Command::Insert { chain: chain.clone(), num: 1, rule: rule.clone() };
    }
    let fx = exec::apply(&mut table, &at_head)?;
    let Some(c) = table.chain_mut(chain) else { return Ok(None) };
    let rules = std::mem::take(&mut c.rules);
    if jumps {
        check_jumps(outline, chain, place, &rules)?;
    }
    store.commit_added(std::mem::take(outline), chain, rules, place)?;
    Ok(Some(fx))
}

/// What `exec::validate` says of the stored filter table with `rules` (that jump) added to
/// `chain` at `place`, looking only at the stored rules that jump and that a walk reaches
/// (`Outline::jump_rules`): all the loop check follows.
fn check_jumps(outline: &Outline, chain: &str, place: Place, rules: &[crate::model::Rule]) -> Result<()> {
    let Some(mut jumps) = outline.jump_rules(TableKind::Filter)? else { return Ok(()) };
    let at = match place {
        Place::End => outline.chain_len(TableKind::Filter, chain).unwrap_or(0),
        Place::Before(i) | Place::Replacing(i) => i,
    };
    if outline.reaches(TableKind::Filter, chain, at) {
        if let Some(c) = jumps.chain_mut(chain) {
            c.rules.extend(rules.iter().cloned());
        }
    }
    exec::validate(&jumps)
}

/// `-D` in a filter chain, the other common edit: the rule is found by its encoding (by
/// spec) or its number and cut out of the stored chain, no other rule decoded or encoded
/// again, and deleted from the datapath's image in place when it can be
/// (`Store::commit_delete`). `None`, `outline` untouched: the general path applies (it also
/// gives the errors: no such rule, index too big), as it does for `-v`, which echoes.
fn delete_from_chain(store: &mut Store, outline: &mut Outline, kind: TableKind, inv: &Invocation) -> Result<Option<exec::Effects>> {
    let (Command::Delete { chain, .. } | Command::DeleteNum { chain, .. }) = &inv.command else { return Ok(None) };
    if kind != TableKind::Filter || inv.verbose > 0 {
        return Ok(None);
    }
    let at = match &inv.command {
        Command::DeleteNum { num, .. } if *num > 0 => vec![*num as usize - 1],
        Command::Delete { rule, .. } => {
            // resolving the spec looks at the chain names only
            let Some(table) = outline.chains_of(TableKind::Filter) else { return Ok(None) };
            let mut at = Vec::new();
            for r in exec::expand(&table, rule)? {
                match outline.find_spec(TableKind::Filter, chain, &r, &at).map_err(encoding)? {
                    Some(i) => at.push(i),
                    None => return Ok(None),
                }
            }
            at
        }
        _ => return Ok(None),
    };
    let Some(deleted) = outline.remove(TableKind::Filter, chain, &at).map_err(encoding)? else { return Ok(None) };
    store.commit_delete(std::mem::take(outline), &deleted)?;
    Ok(Some(exec::Effects { changed: true, ..Default::default() }))
}

/// `-C` in a filter chain (Docker checks for each of its rules before adding it): the rules
/// are looked for by their encoding, as `-D` finds them, none decoded. False: the general path
/// answers (`-v`, which echoes; a chain that is not there).
fn check_in_chain(outline: &Outline, kind: TableKind, inv: &Invocation) -> Result<bool> {
    let Command::Check { chain, rule } = &inv.command else { return Ok(false) };
    if kind != TableKind::Filter || inv.verbose > 0 {
        return Ok(false);
    }
    let Some(table) = outline.chains_of(TableKind::Filter) else { return Ok(false) };
    if table.chain(chain).is_none() {
        return Ok(false);
    }
    for r in exec::expand(&table, rule)? {
        if outline.find_spec(TableKind::Filter, chain, &r, &[]).map_err(encoding)?.is_none() {
            return Err(exec::no_such_rule(true, &r.target));
        }
    }
    Ok(true)
}

/// `-S CHAIN` or `-L CHAIN` in the filter table: only that chain's rules are decoded
/// (`iptables -S DOCKER-USER` beside 10 000 rules in INPUT; Docker asks `-nL CHAIN` whether
/// a chain exists), and for `-L` of a user chain, whose header counts the rules that jump to
/// it, those rules (`Outline::jumps_to`). None: the general path lists (`-Z`; a chain that is
/// not there).
fn list_chain(store: &Store, outline: &Outline, kind: TableKind, inv: &Invocation) -> Result<Option<exec::Effects>> {
    let Command::List { rules_format, chain: Some(chain), zero: false, .. } = &inv.command else { return Ok(None) };
    if kind != TableKind::Filter {
        return Ok(None);
    }
    let Some(mut table) = outline.chains_of(TableKind::Filter) else { return Ok(None) };
    let Some(c) = table.chain_mut(chain) else { return Ok(None) };
    ready_heap_for(outline.chain_len(TableKind::Filter, chain).unwrap_or(0));
    let Some(rules) = outline.rules_of(TableKind::Filter, chain) else { return Ok(None) };
    c.rules = rules?;
    if !*rules_format && !c.is_builtin() {
        for (from, rule) in outline.jumps_to(TableKind::Filter, chain, Some(chain)).map_err(encoding)? {
            if let Some(c) = table.chain_mut(&from) {
                c.rules.push(rule);
            }
        }
    }
    let mut rs = Ruleset { tables: vec![table], ..Ruleset::default() };
    if inv.verbose > 0 {
        store.load_counters(&mut rs)?;
    }
    Ok(Some(exec::apply(rs.table_mut(TableKind::Filter), inv)?))
}

/// An error of the stored rules' encoding.
fn encoding(e: bincode::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("the stored rules")
}

/// Changes of the filter chains that need none of their stored rules decoded, applied to the
/// chains without their rules (`Outline::chains_of`) and stored as they are
/// (`Store::commit_chains`); nothing is compiled when the datapath's rules stay the same:
/// - `-N`, and `-P` of a built-in chain;
/// - `-X` of an empty chain nothing jumps to (libiptc deletes no other: the general path
///   gives its error);
/// - `-E` of a chain nothing jumps to, itself included (its rules then name neither name);
/// - `-F`: the rules go undecoded, and what the datapath enforces changes unless the chain
///   was empty or is a user chain nothing jumps to; a user chain that is jumped to has its
///   rules taken out where it is inlined, as `-D` takes a rule out (`flush_in_place`).
///
/// `None`, `outline` untouched: the general path applies.
fn change_chains(store: &mut Store, outline: &mut Outline, kind: TableKind, inv: &Invocation) -> Result<Option<exec::Effects>> {
    use store::FilterChange;
    if kind != TableKind::Filter {
        return Ok(None);
    }
    let Some(mut table) = outline.chains_of(TableKind::Filter) else { return Ok(None) };
    let referenced = |name: &str| -> Result<bool> {
        Ok(!outline.jumps_to(TableKind::Filter, name, None).map_err(encoding)?.is_empty())
    };
    let empty = |name: &str| outline.chain_len(TableKind::Filter, name).unwrap_or(0) == 0;
    let change = match &inv.command {
        // a new chain is reached by no rule; a policy changes nothing else
        Command::NewChain { .. } => FilterChange::None,
        Command::Policy { .. } => FilterChange::Policies,
        Command::DeleteChain { chain: Some(name) } if empty(name) && !referenced(name)? => FilterChange::None,
        Command::Rename { old, .. } if !referenced(old)? => FilterChange::None,
        Command::Flush { chain: Some(name) } => {
            let user = table.chain(name).is_some_and(|c| !c.is_builtin());
            if empty(name) || user && !referenced(name)? {
                FilterChange::None
            } else if user {
                return flush_in_place(store, outline, table, inv, name);
            } else {
                FilterChange::Rules
            }
        }
        Command::Flush { chain: None } if outline.rule_count() == 0 => FilterChange::None,
        Command::Flush { chain: None } => FilterChange::Rules,
        _ => return Ok(None),
    };
    let fx = echoed(|fx| exec::apply_to(&mut table, inv, fx))?;
    match &inv.command {
        Command::Rename { old, new } => outline.rename_chain(TableKind::Filter, old, new),
        Command::Flush { chain } => outline.clear_rules(TableKind::Filter, chain.as_deref()),
        _ => {}
    }
    outline.set_chains(TableKind::Filter, &table);
    store.commit_chains(std::mem::take(outline), change, &table)?;
    Ok(Some(fx))
}

/// `-F` of user chain `name`, which rules jump to: its rules are taken out as `-D` takes
/// them out, in place wherever the chain is inlined when none jumps or always ends its walk.
fn flush_in_place(store: &mut Store, outline: &mut Outline, mut table: Table, inv: &Invocation, name: &str) -> Result<Option<exec::Effects>> {
    let fx = echoed(|fx| exec::apply_to(&mut table, inv, fx))?;
    let all: Vec<usize> = (0..outline.chain_len(TableKind::Filter, name).unwrap_or(0)).collect();
    let Some(deleted) = outline.remove(TableKind::Filter, name, &all).map_err(encoding)? else { return Ok(None) };
    store.commit_delete(std::mem::take(outline), &deleted)?;
    Ok(Some(fx))
}

/// `-Z [chain [rulenum]]` in the filter table: counters alone change, found by the stored
/// rules' ids, none decoded. None: the general path applies.
fn zero_chains(outline: &Outline, kind: TableKind, inv: &Invocation) -> Result<Option<exec::Effects>> {
    let Command::Zero { chain, num } = &inv.command else { return Ok(None) };
    if kind != TableKind::Filter {
        return Ok(None);
    }
    let Some(table) = outline.chains_of(TableKind::Filter) else { return Ok(None) };
    let ids = |c: &Chain| outline.chain_rule_ids(TableKind::Filter, &c.name).to_vec();
    Ok(Some(echoed(|fx| exec::zero_counters(&table, &ids, fx, chain.as_deref(), *num, inv.verbose > 0))?))
}

/// `iptables-save [-c] [-t table] [-f file]`.
fn save_main(args: &[String]) -> Result<i32> {
    const DEFS: &[OptDef] = &[
        OptDef { id: 'b', short: true, long: "binary", value: Value::None },
        OptDef { id: 'c', short: true, long: "counters", value: Value::None },
        OptDef { id: 'd', short: true, long: "dump", value: Value::None },
        OptDef { id: 't', short: true, long: "table", value: Value::Required },
        OptDef { id: 'M', short: true, long: "modprobe", value: Value::Required },
        OptDef { id: 'f', short: true, long: "file", value: Value::Required },
        OptDef { id: 'V', short: true, long: "version", value: Value::None },
    ];
    let parsed = match options::getopt(args, DEFS) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("iptables-save: {msg}\nLook at manual page `iptables-save.8' for more information.");
            return Ok(1);
        }
    };
    let (mut counters, mut table, mut file) = (false, None, None);
    for (id, v) in parsed.opts {
        match id {
            'b' => eprintln!("-b/--binary option is not implemented"),
            'c' => counters = true,
            't' => table = v,
            'f' => file = v,
            'V' => {
                print(&format!("{}\n", version_line("iptables-save")));
                return Ok(0);
            }
            _ => {}
        }
    }
    if !parsed.words.is_empty() {
        eprintln!("Unknown arguments found on commandline");
        return Ok(1);
    }

    let kinds = match &table {
        Some(t) => match TableKind::from_name(t) {
            Some(k) => vec![k],
            None => {
                return Err(Error::StateBare(format!(
                    "{}: Cannot initialize: Table does not exist (do you need to insmod?)",
                    version_line("iptables-save")
                )))
            }
        },
        None => Vec::new(),
    };
    let mut store = Store::open(LockWait::Block).map_err(|e| {
        if permission_denied(&e) {
            Error::StateBare(format!("{}: Cannot initialize: Permission denied (you must be root)", version_line("iptables-save")))
        } else {
            e
        }
    })?;
    let mut rs = decode_ready(&store.load_outline()?, &[])?;
    // the chain lines always show policy counters, rules only with -c
    if counters {
        store.load_counters(&mut rs)?;
    } else {
        store.load_policy_counters(&mut rs)?;
    }
    drop(store);
    let date = save::ctime_now();
    let mut text = String::new();
    if kinds.is_empty() {
        for t in &rs.tables {
            text.push_str(&save::save_table(t, counters, &date));
        }
    } else {
        for k in kinds {
            let empty = Table::new(k);
            text.push_str(&save::save_table(rs.table(k).unwrap_or(&empty), counters, &date));
        }
    }
    match file {
        Some(path) => {
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("Failed to open file, error: {e}");
                return Ok(1);
            }
        }
        None => print(&text),
    }
    Ok(0)
}

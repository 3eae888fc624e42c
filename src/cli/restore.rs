//! `iptables-restore`: reads the whole input, then applies it line by line to the ruleset loaded
//! from the store, exactly as iptables-restore 1.8.9 interprets each line (table sections,
//! flushing unless `--noflush`, `:CHAIN` declarations, rule lines through the same walker as
//! argv), and commits once at the end: any error leaves the stored ruleset untouched (iptables
//! commits per `COMMIT`; all-or-nothing is strictly safer and indistinguishable for valid input).

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;

use crate::error::{param, Error, Result};
use crate::ext::util::split_at_byte;
use crate::model::{Chain, Counters, Policy, Ruleset, Table, TableKind, MAX_CHAIN_NAME_LEN};
use crate::parse::cmdline::{self, Parsed};
use crate::parse::{Command, Invocation};
use crate::parse::options::{self, OptDef, Value};
use crate::parse::restore::{classify, parse_counters, split_args, Line};
use crate::store::{LockWait, Store};

use super::{exec, help, is_pristine, print, unsupported_table, version_line};

const PROG: &str = "iptables-restore";

struct Flags {
    counters: bool,
    verbose: u32,
    test: bool,
    noflush: bool,
    wait: LockWait,
    table: Option<String>,
}

/// `PROG v1.8.9 (bpf): MSG` + `Error occurred at line: N` + the Try line, for parameter errors
/// inside the input; other errors render as usual.
fn render_at(e: &Error, line: usize) -> String {
    let text = e.render(PROG);
    match e {
        Error::Param(_) | Error::ParamBare(_) => {
            let try_at = text.rfind("Try `").unwrap_or(text.len());
            format!("{}Error occurred at line: {line}\n{}", &text[..try_at], &text[try_at..])
        }
        _ => text,
    }
}

/// An error already rendered (restore decides the text itself), with its exit code.
struct Failure {
    text: String,
    code: i32,
}

impl Failure {
    fn at(e: Error, line: usize) -> Failure {
        Failure { text: render_at(&e, line), code: e.exit_code() }
    }

    fn line_failed(line: usize) -> Failure {
        Failure { text: format!("{PROG}: line {line} failed\n"), code: 1 }
    }
}

pub fn main(args: &[String]) -> Result<i32> {
    const DEFS: &[OptDef] = &[
        OptDef { id: 'b', short: true, long: "binary", value: Value::None },
        OptDef { id: 'c', short: true, long: "counters", value: Value::None },
        OptDef { id: 'v', short: true, long: "verbose", value: Value::None },
        OptDef { id: 'V', short: true, long: "version", value: Value::None },
        OptDef { id: 't', short: true, long: "test", value: Value::None },
        OptDef { id: 'h', short: true, long: "help", value: Value::None },
        OptDef { id: 'n', short: true, long: "noflush", value: Value::None },
        OptDef { id: 'M', short: true, long: "modprobe", value: Value::Required },
        OptDef { id: 'T', short: true, long: "table", value: Value::Required },
        OptDef { id: 'w', short: true, long: "wait", value: Value::NextWord },
        OptDef { id: 'W', short: true, long: "wait-interval", value: Value::NextWord },
    ];
    let parsed = match options::getopt(args, DEFS) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("{PROG}: {msg}\nTry `{PROG} -h' for more information.");
            return Ok(1);
        }
    };
    let mut flags = Flags { counters: false, verbose: 0, test: false, noflush: false, wait: LockWait::Block, table: None };
    let mut wait_set = false;
    let mut interval_set = false;
    for (id, v) in parsed.opts {
        match id {
            'b' => eprintln!("-b/--binary option is not implemented"),
            'c' => flags.counters = true,
            'v' => flags.verbose += 1,
            'V' => {
                print(&format!("{}\n", version_line(PROG)));
                return Ok(0);
            }
            't' => flags.test = true,
            'h' => {
                eprint!("{}", help::RESTORE_USAGE);
                return Ok(0);
            }
            'n' => flags.noflush = true,
            'T' => flags.table = v,
            'w' => {
                // The same parser as `iptables -w`, so the forms and messages agree.
                let mut a = vec!["-L", "-w"];
                a.extend(v.as_deref());
                if let Parsed::Run(inv) = cmdline::parse(&a, false)? {
                    flags.wait = inv.wait;
                }
                wait_set = true;
            }
            'W' => {
                let mut a = vec!["-L", "-w", "-W"];
                a.extend(v.as_deref());
                cmdline::parse(&a, false)?;
                interval_set = true;
            }
            _ => {}
        }
    }
    let input = match parsed.words.as_slice() {
        [] => {
            let stdin = std::io::stdin();
            let meta = stdin.as_fd().try_clone_to_owned().ok().and_then(|fd| File::from(fd).metadata().ok());
            read_input(stdin.lock(), meta)
        }
        [file] => match File::open(file) {
            Ok(f) => read_input(&f, f.metadata().ok()),
            Err(e) => {
                let msg = e.to_string();
                let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
                eprintln!("Can't open {file}: {msg}");
                return Ok(1);
            }
        },
        _ => {
            eprintln!("Unknown arguments found on commandline");
            return Ok(1);
        }
    };
    if interval_set && !wait_set {
        eprintln!("Option --wait-interval requires option --wait");
        return Ok(1);
    }
    // (validating is faster than the lossy conversion's walk, which only invalid input needs)
    let input = match String::from_utf8(input) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    match restore(&input, &flags) {
        Ok(()) => Ok(0),
        Err(f) => {
            eprint!("{}", f.text);
            Ok(f.code)
        }
    }
}

/// Heap a restore takes per byte of input: a rule's line, ~75 bytes, becomes ~1.5 KB (the
/// model, the stored form, the compiled rules and the tables built from them).
const HEAP_PER_BYTE: usize = 24;

/// All of `src`, read into the heap made ready for the restore (`heap::expect`) beforehand
/// when `meta` says it is a file, whose size is known: the input is the first of what the
/// restore allocates (read into a heap that grows page by page, 10 000 rules' 800 KB took a
/// millisecond). A read error ends the input where it happened, as it ends iptables-restore's
/// `fgets` loop (a directory named as the input reads as empty).
fn read_input(mut src: impl Read, meta: Option<std::fs::Metadata>) -> Vec<u8> {
    let size = meta.filter(|m| m.is_file()).map(|m| m.len() as usize);
    if let Some(n) = size {
        super::heap::expect(n.saturating_mul(HEAP_PER_BYTE));
    }
    let mut s = Vec::with_capacity(size.unwrap_or(0));
    // (what was read before an error is kept)
    let _ = src.read_to_end(&mut s);
    if size.is_none() {
        super::heap::expect(s.len().saturating_mul(HEAP_PER_BYTE));
    }
    s
}

/// State of the table section being read.
struct Section {
    kind: TableKind,
    /// Lines of a table other than `-T`'s are read but ignored.
    skipped: bool,
}

fn restore(input: &str, flags: &Flags) -> Result<(), Failure> {
    // Like iptables-restore, take the lock (and load) at the first table: input without one
    // (firewalld's `-w` probe feeds a lone comment) neither waits nor touches the store.
    let mut store: Option<Store> = None;
    let mut rs = Ruleset::default();
    let mut policy_counters: Vec<(String, Counters)> = Vec::new();
    let mut section: Option<Section> = None;
    // The table named by the last `*` line (iptables' `curtable`), for `-T` filtering.
    let mut curtable = String::new();
    let mut lineno = 0;
    let filtered = |cur: &str| flags.table.as_deref().is_some_and(|t| t != cur);

    for line in lines(input) {
        lineno += 1;
        let in_table = section.as_ref().is_some_and(|s| !s.skipped);
        let kind = classify(line, in_table, lineno).map_err(|e| Failure::at(e, lineno))?;
        match kind {
            Line::Skip(text) => {
                if flags.verbose > 0 && text.starts_with('#') {
                    print(&format!("{text}\n"));
                }
            }
            Line::Table(name) => {
                let name = name.ok_or_else(|| Failure::at(param(format!("{PROG}: line {lineno} table name invalid")), lineno))?;
                curtable = name.to_string();
                if filtered(name) {
                    section = Some(Section { kind: TableKind::Filter, skipped: true });
                    continue;
                }
                if store.is_none() {
                    let mut s = Store::open(flags.wait).map_err(|e| {
                        if super::permission_denied(&e) {
                            Failure::at(param(format!("{PROG}: unable to initialize table '{name}'")), lineno)
                        } else {
                            Failure::at(e, lineno)
                        }
                    })?;
                    // the tables this input replaces are flushed: their rules need no decoding
                    let flushed: Vec<TableKind> = match flags.noflush {
                        true => Vec::new(),
                        false => table_lines(input).filter(|t| !filtered(t)).filter_map(TableKind::from_name).collect(),
                    };
                    let outline = s.load_outline().map_err(|e| Failure::at(e, lineno))?;
                    // the stored rules it keeps are decoded now and compiled again with the
                    // new ones (a --noflush of a few lines beside thousands, as kube-proxy's)
                    rs = super::decode_ready(&outline, &flushed).map_err(|e| Failure::at(e, lineno))?;
                    store = Some(s);
                }
                let kind = TableKind::from_name(name).ok_or_else(|| {
                    Failure::at(param(format!("{PROG}: unable to initialize table '{name}'")), lineno)
                })?;
                if !flags.noflush {
                    let t = rs.table_mut(kind);
                    if flags.verbose > 0 {
                        let mut text = String::new();
                        for c in &t.chains {
                            text.push_str(&format!("Flushing chain `{}'\n", c.name));
                        }
                        for c in t.user_chains() {
                            text.push_str(&format!("Deleting chain `{}'\n", c.name));
                        }
                        print(&text);
                    }
                    t.chains.retain(|c| c.is_builtin());
                    for c in &mut t.chains {
                        c.rules.clear();
                    }
                }
                section = Some(Section { kind, skipped: false });
            }
            Line::Chain { name, policy, counters } => {
                let Some(sec) = &section else { continue };
                let table = rs.table_mut(sec.kind);
                declare_chain(table, flags, lineno, name, policy, counters, &mut policy_counters)
                    .map_err(|e| Failure::at(e, lineno))?;
            }
            Line::Commit => {
                let Some(sec) = section.take() else { continue };
                let table = rs.table_mut(sec.kind);
                exec::validate(table).map_err(|_| Failure::line_failed(lineno))?;
                if !sec.kind.supported() && !is_pristine(table) {
                    return Err(Failure::at(unsupported_table(sec.kind), lineno));
                }
            }
            Line::Rule { counters, rest } => {
                let Some(sec) = &section else { continue };
                let words = split_args(rest).map_err(|e| Failure::at(e, lineno))?;
                // (room for the words and what goes before them: -t TABLE, -v..., --set-counters P B)
                let mut argv = Vec::with_capacity(words.len() + 8);
                argv.extend(["-t", curtable.as_str()]);
                if !flags.noflush {
                    argv.extend((0..flags.verbose).map(|_| "-v"));
                }
                if let (true, Some((p, b))) = (flags.counters, counters) {
                    argv.extend(["--set-counters", p, b]);
                }
                argv.extend(words.iter().map(|w| w.as_ref()));
                // Rules for a table we do not enforce: refused whatever their targets are.
                let refuse = || Failure::at(unsupported_table(sec.kind), lineno);
                let parsed = cmdline::parse(&argv, true);
                if !sec.kind.supported() {
                    match &parsed {
                        Err(Error::Param(_) | Error::ParamBare(_)) => return Err(refuse()),
                        Ok(Parsed::Run(Invocation {
                            command: Command::Append { .. } | Command::Insert { .. } | Command::Replace { .. },
                            ..
                        })) => return Err(refuse()),
                        _ => {}
                    }
                }
                let inv = match parsed.map_err(|e| Failure::at(e, lineno))? {
                    Parsed::Run(inv) => inv,
                    Parsed::Help(exts) => {
                        print(&help::with_extensions(&exts));
                        std::process::exit(0);
                    }
                    Parsed::Version { .. } => {
                        print(&format!("{}\n", version_line(PROG)));
                        std::process::exit(0);
                    }
                    Parsed::Ignored => continue,
                };
                let mut fx = exec::Effects::default();
                let applied = exec::apply_to(rs.table_mut(sec.kind), &inv, &mut fx);
                // (what `-v` echoed comes out before the line fails)
                print(&fx.stdout);
                applied.map_err(|e| match e {
                    Error::Param(_) | Error::ParamBare(_) | Error::Table(_) => Failure::at(e, lineno),
                    _ => Failure::line_failed(lineno),
                })?;
                if sec.kind.supported() {
                    policy_counters.extend(fx.policy_counters);
                }
            }
            Line::Stray => {
                if filtered(&curtable) {
                    continue;
                }
                return Err(Failure::line_failed(lineno));
            }
        }
    }
    if section.is_some_and(|s| !s.skipped) {
        return Err(Failure { text: format!("{PROG}: COMMIT expected at line {}\n", lineno + 1), code: 1 });
    }
    let Some(mut store) = store.filter(|_| !flags.test) else {
        return Ok(());
    };
    rs.tables.retain(|t| t.kind.supported());
    store.commit(&mut rs, None, None).map_err(|e| Failure::at(e, lineno))?;
    for (chain, c) in policy_counters {
        store.set_policy_counters(&chain, c).map_err(|e| Failure::at(e, lineno))?;
    }
    // The process ends now: the kernel takes the ruleset's memory back at once, where
    // dropping it would free each rule's allocations one by one.
    std::mem::forget(rs);
    Ok(())
}

/// The lines of `input` without their `\n` (a last one without it too, none after a last
/// `\n`), as `str::split_inclusive` and a strip give them (split bytewise: `split_at_byte`).
fn lines(input: &str) -> impl Iterator<Item = &str> {
    let mut rest = input;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = split_at_byte(rest, b'\n').unwrap_or((rest, ""));
        rest = next;
        Some(line)
    })
}

/// What follows the `*` of each line of `input` that starts with one (as `str::lines` reads
/// lines), found by its star: walking every line of 10 000 rules to look took a millisecond.
fn table_lines(input: &str) -> impl Iterator<Item = &str> {
    let at_line_start = |i: usize| i == 0 || input.as_bytes()[i - 1] == b'\n';
    input.match_indices('*').filter(move |&(i, _)| at_line_start(i)).map(move |(i, _)| {
        let line = input[i + 1..].split('\n').next().unwrap_or_default();
        line.strip_suffix('\r').unwrap_or(line)
    })
}

/// `:CHAIN POLICY [p:b]`.
fn declare_chain(
    table: &mut Table,
    flags: &Flags,
    lineno: usize,
    name: Option<&str>,
    policy: Option<&str>,
    counters: Option<&str>,
    policy_counters: &mut Vec<(String, Counters)>,
) -> Result<()> {
    let name = name.ok_or_else(|| param(format!("{PROG}: line {lineno} chain name invalid")))?;
    if name.len() > MAX_CHAIN_NAME_LEN {
        return Err(param(format!("Invalid chain name `{name}' ({MAX_CHAIN_NAME_LEN} chars max)")));
    }
    let existing = exec::find_chain(table, name);
    let builtin = existing.is_some_and(|i| table.chains[i].is_builtin());
    if !builtin {
        match existing {
            Some(i) if flags.noflush => table.chains[i].rules.clear(),
            Some(_) => return Err(param(format!("error creating chain '{name}':File exists"))),
            None => exec::insert_user_chain(table, Chain::user(name)),
        }
    }
    let policy = policy.ok_or_else(|| param(format!("{PROG}: line {lineno} policy invalid")))?;
    if policy == "-" {
        return Ok(());
    }
    let count = if flags.counters {
        counters
            .and_then(parse_counters)
            .ok_or_else(|| param(format!("invalid policy counters for chain '{name}'")))?
    } else {
        Counters::default()
    };
    let fail = |why: &str| {
        Error::StateBare(format!("{}: Can't set policy `{policy}' on `{name}' line {lineno}: {why}", version_line(PROG)))
    };
    if !builtin {
        return Err(fail("Bad built-in chain name"));
    }
    let p = match policy {
        "ACCEPT" => Policy::Accept,
        "DROP" => Policy::Drop,
        _ => return Err(fail("Bad policy name")),
    };
    if let Some(i) = existing {
        table.chains[i].policy = Some(p);
    }
    if table.kind.supported() {
        policy_counters.push((name.to_string(), count));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_inclusive_lines_stripped() {
        for input in ["", "\n", "a", "a\n", "a\nb", "a\n\nb\n", "\n\n", "x\r\ny", "é\nü\n"] {
            let want: Vec<&str> = input.split_inclusive('\n').map(|l| l.strip_suffix('\n').unwrap_or(l)).collect();
            assert_eq!(lines(input).collect::<Vec<_>>(), want, "{input:?}");
        }
    }

    #[test]
    fn table_lines_are_the_starred_lines() {
        let inputs = [
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment *x -j ACCEPT\nCOMMIT\n*nat\nCOMMIT",
            "# x\n*raw\r\nCOMMIT\r\n*\n**mangle\n",
            "",
            "*",
            "-A INPUT *filter\n",
        ];
        for input in inputs {
            let want: Vec<&str> = input.lines().filter_map(|l| l.strip_prefix('*')).collect();
            assert_eq!(table_lines(input).collect::<Vec<_>>(), want, "{input:?}");
        }
    }
}

//! iptables' own extension test specs (`extensions/*.t`, v1.8.9) run against an iptables
//! implementation, with the semantics of upstream's `iptables-test.py` (described in
//! `tests/data/T-FORMAT.md`):
//!
//! * slow mode, per test line and chain: `iptables -A CHAIN [-t T] RULE` through `/bin/sh`, the
//!   exit code against `OK`/`FAIL`/`NOMATCH`, the substring `\n-A CHAIN EXPECTED\n` in the
//!   output of `iptables-save`, then `iptables -D ...` which must succeed;
//! * fast mode, per file: every `OK` line loaded with one `iptables-restore` (builtin chain
//!   order), the expected lines found as one contiguous block in `iptables-save`.
//!
//! Upstream counts a file as passed when either mode passes. We run and require both: slow mode
//! gives per-line verdicts, fast mode exercises the restore parser on the same rules. Every file
//! runs in a fresh network namespace. Variant fields (`;NFT`/`;LEGACY`) apply as upstream for
//! the real binaries; for ours either expectation is accepted.
//!
//! Environment:
//! * `BPFIPT_CONFORMANCE_BIN`: implementation under test (see `common::Tools::from_env`);
//!   `iptables-legacy` validates this runner against the kernel.
//! * `BPFIPT_CONFORMANCE_FILES`: comma-separated file stems to run (default: all in scope).
//! * `BPFIPT_CONFORMANCE_REPORT_ONLY=1`: write the report but do not fail the test.
//!
//! Failing lines (command, expected, got, stderr) go to `target/conformance/report.txt` (or
//! `report-<implementation>.txt` for a real iptables).

mod common;

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use common::{in_fresh_netns, Outcome, Session, Tools};

/// The IPv4 spec files in scope, in the order they are reported.
const IN_SCOPE: &[&str] = &[
    "iptables",
    "libipt_icmp",
    "libipt_ttl",
    "libipt_REJECT",
    "libipt_LOG",
    "libxt_standard",
    "libxt_tcp",
    "libxt_udp",
    "libxt_multiport",
    "libxt_iprange",
    "libxt_conntrack",
    "libxt_state",
    "libxt_comment",
    "libxt_mark",
    "libxt_MARK",
    "libxt_addrtype",
    "libxt_length",
    "libxt_limit",
    "libxt_mac",
    "libxt_pkttype",
    "libxt_tos",
    "libxt_dscp",
    "libxt_statistic",
];

/// A file whose commands hung this often is not worth waiting for: its remaining lines fail at
/// once.
const MAX_TIMEOUTS_PER_FILE: usize = 3;

/// Chains in the order fast mode writes them into the restore input.
const FAST_CHAIN_ORDER: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

fn spec_dir() -> PathBuf {
    common::data_dir().join("iptables-t")
}

// ---------------------------------------------------------------------------------------------
// The .t format

/// One `rule;expected;result[;variant[;alt_result]]` line.
#[derive(Debug, Clone)]
struct TestLine {
    /// 1-based line number in the file.
    lineno: usize,
    text: String,
    rule: String,
    /// Text after `-A CHAIN ` in the save output (`=` already replaced by the rule).
    expected: String,
    result: String,
    variant: Option<(String, Option<String>)>,
}

#[derive(Debug, Clone)]
enum Item {
    Chains(Vec<String>),
    Table(String),
    /// `@cmd` / `%cmd`: run through the shell, exit status ignored (as upstream).
    External(String),
    Test(TestLine),
}

fn parse_spec(text: &str) -> Vec<Item> {
    let mut items = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.is_empty() || line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let rest = &line[1..];
        match line.as_bytes()[0] {
            b':' => items.push(Item::Chains(rest.trim_end().split(',').map(str::to_string).collect())),
            b'*' => items.push(Item::Table(rest.trim_end().to_string())),
            b'@' | b'%' => items.push(Item::External(rest.trim_end().to_string())),
            _ => {
                let f: Vec<&str> = line.split(';').collect();
                let field = |n: usize| f.get(n).map(|s| s.to_string()).unwrap_or_default();
                let rule = field(0);
                let expected = if field(1) == "=" { rule.clone() } else { field(1) };
                let variant = f.get(3).map(|v| (v.trim_end().to_string(), f.get(4).map(|a| a.trim_end().to_string())));
                items.push(Item::Test(TestLine {
                    lineno: i + 1,
                    text: line.to_string(),
                    rule,
                    expected,
                    result: field(2).trim_end().to_string(),
                    variant,
                }));
            }
        }
    }
    items
}

/// Upstream's fast-mode condition: no external commands, at most one table line and only before
/// any rule, no variant fields.
fn fast_run_possible(items: &[Item]) -> bool {
    let mut table_seen = false;
    let mut rules = 0;
    for it in items {
        match it {
            Item::Chains(_) => {}
            Item::Table(_) if table_seen || rules > 0 => return false,
            Item::Table(_) => table_seen = true,
            Item::External(_) => return false,
            Item::Test(t) if t.variant.is_some() => return false,
            Item::Test(_) => rules += 1,
        }
    }
    true
}

/// The expectations a line's result allows for this implementation: upstream's `variant_res`
/// for the real binaries; for ours, either variant's.
fn expectations(t: &TestLine, tools: &Tools) -> Vec<String> {
    let Some((variant, alt)) = &t.variant else { return vec![t.result.clone()] };
    let other = alt.clone().unwrap_or_else(|| {
        match t.result.as_str() {
            "OK" => "FAIL",
            _ => "OK",
        }
        .to_string()
    });
    let mine = match tools.label() {
        "iptables-legacy" => Some("LEGACY"),
        "iptables-nft" => Some("NFT"),
        _ => None,
    };
    match mine {
        Some(m) if m == variant => vec![t.result.clone()],
        Some(_) => vec![other],
        None => vec![t.result.clone(), other],
    }
}

// ---------------------------------------------------------------------------------------------
// Running

/// Why one (line, chain) failed, with everything needed to fix it.
#[derive(Debug, Clone, Default)]
struct Failure {
    reason: String,
    command: String,
    outcome: String,
    expected: String,
    /// The relevant part of what the implementation printed (save lines of the chain, or a diff).
    got: String,
    stderr: String,
}

/// `iptables-save` lines that belong to `chain`, to show next to the expected line.
fn chain_lines(save: &str, chain: &str) -> String {
    let prefix = format!("-A {chain} ");
    let lines: Vec<&str> = save.lines().filter(|l| l.starts_with(&prefix)).collect();
    if lines.is_empty() {
        format!("(no -A {chain} lines in iptables-save)")
    } else {
        lines.join("\n")
    }
}

/// Upstream's `delete_rule`: `-c N,M` / `--set-counters N M` removed, words re-joined by single
/// spaces, then `iptables -D`.
fn delete_command(rule: &str) -> String {
    let mut words: Vec<&str> = rule.split_whitespace().collect();
    if let Some(i) = words.iter().position(|w| *w == "-c" || *w == "--set-counters") {
        words.remove(i);
        if i < words.len() {
            let first = words.remove(i);
            if !first.contains(',') && i < words.len() && words[i].chars().all(|c| c.is_ascii_digit()) {
                words.remove(i);
            }
        }
    }
    format!("iptables -D {}", words.join(" "))
}

/// Upstream's `run_test` for one chain. `rule` already starts with the chain (and `-t T`);
/// `rule_save` is `CHAIN EXPECTED`.
fn run_test(s: &Session, rule: &str, rule_save: &str, chain: &str, result: &str) -> Result<(), Box<Failure>> {
    let cmd = format!("iptables -A {rule}");
    let add = s.sh(&cmd, None);
    let fail = |reason: &str, out: &Outcome, got: String| Failure {
        reason: reason.to_string(),
        command: cmd.clone(),
        outcome: out.describe(),
        expected: if result == "FAIL" { "(command fails)".into() } else { format!("-A {rule_save}") },
        got,
        stderr: out.stderr.trim_end().to_string(),
    };
    let cleanup = |s: &Session| {
        s.sh(&delete_command(rule), None);
    };
    if add.crashed() {
        let f = fail("command crashed", &add, add.stdout.clone());
        cleanup(s);
        return Err(f.into());
    }
    if !add.success() {
        return if result == "FAIL" { Ok(()) } else { Err(fail("cannot load", &add, String::new()).into()) };
    }
    if result == "FAIL" {
        let got = s.save(&[]).map(|o| chain_lines(&o, chain)).unwrap_or_else(|e| e);
        cleanup(s);
        return Err(fail("should fail", &add, got).into());
    }
    let save = s.run("iptables-save", &[] as &[&str], None);
    if save.crashed() {
        let f = Failure { reason: "iptables-save crashed".into(), stderr: save.stderr.clone(), ..fail("", &add, save.describe()) };
        cleanup(s);
        return Err(f.into());
    }
    let found = save.stdout.contains(&format!("\n-A {rule_save}\n"));
    match (found, result == "OK") {
        (false, true) => {
            let f = Failure { stderr: format!("{}{}", add.stderr, save.stderr).trim_end().into(), ..fail("cannot find", &add, chain_lines(&save.stdout, chain)) };
            cleanup(s);
            Err(f.into())
        }
        // NOMATCH and not found: pass, and (as upstream) the rule is left in place.
        (false, false) => Ok(()),
        (true, false) => {
            let f = fail("should not match", &add, chain_lines(&save.stdout, chain));
            cleanup(s);
            Err(f.into())
        }
        (true, true) => {
            let del_cmd = delete_command(rule);
            let del = s.sh(&del_cmd, None);
            if del.success() {
                Ok(())
            } else {
                Err(Box::new(Failure {
                    reason: "cannot delete".into(),
                    command: del_cmd,
                    outcome: del.describe(),
                    expected: "(the rule just added is deleted by the same spec)".into(),
                    got: chain_lines(&save.stdout, chain),
                    stderr: del.stderr.trim_end().into(),
                }))
            }
        }
    }
}

/// Runs one line on every chain until one fails (upstream stops at the first failing chain).
fn run_line(s: &Session, t: &TestLine, chains: &[String], table: Option<&str>) -> Result<(), (String, Box<Failure>)> {
    for chain in chains {
        let rule = match table {
            None => format!("{chain} {}", t.rule),
            Some(tb) => format!("{chain} -t {tb} {}", t.rule),
        };
        let rule_save = format!("{chain} {}", t.expected);
        let mut last = None;
        for res in expectations(t, s.tools()) {
            match run_test(s, &rule, &rule_save, chain, &res) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(f) => last = Some(f),
            }
        }
        if let Some(f) = last {
            return Err((chain.clone(), f));
        }
    }
    Ok(())
}

struct LineVerdict {
    line: TestLine,
    failure: Option<(String, Box<Failure>)>,
}

fn run_slow(s: &Session, items: &[Item]) -> Vec<LineVerdict> {
    let mut chains: Vec<String> = Vec::new();
    let mut table: Option<String> = None;
    let mut verdicts = Vec::new();
    for it in items {
        match it {
            Item::Chains(c) => chains = c.clone(),
            Item::Table(t) => table = Some(t.clone()),
            Item::External(cmd) => {
                s.sh(cmd, None);
            }
            Item::Test(t) => {
                let broken = |reason: &str| Some((String::new(), Box::new(Failure { reason: reason.into(), ..Failure::default() })));
                let failure = if chains.is_empty() {
                    broken("broken test, missing chain")
                } else if s.timeouts() >= MAX_TIMEOUTS_PER_FILE {
                    broken("not run: earlier commands in this file hung")
                } else {
                    run_line(s, t, &chains, table.as_deref()).err()
                };
                verdicts.push(LineVerdict { line: t.clone(), failure });
            }
        }
    }
    verdicts
}

/// A fast-mode failure carries the line that failed, when it was one line's slow-mode check.
type FastResult = Result<(), (Option<usize>, Box<Failure>)>;

/// Upstream's `run_test_file_fast`. Returns the failure (with the failing line, if one).
fn run_fast(s: &Session, items: &[Item]) -> FastResult {
    let mut table = "filter".to_string();
    let mut chains: Vec<String> = Vec::new();
    // (chain, rule, expected), in file order.
    let mut ok_rules: Vec<(String, String, String)> = Vec::new();
    for it in items {
        match it {
            Item::Table(t) => table = t.clone(),
            Item::Chains(c) => chains = c.clone(),
            Item::External(_) => unreachable!("fast_run_possible excludes external commands"),
            Item::Test(t) => {
                for chain in &chains {
                    if t.result != "OK" {
                        let rule = format!("{chain} -t {table} {}", t.rule);
                        run_test(s, &rule, &format!("{chain} {}", t.expected), chain, &t.result)
                            .map_err(|f| (Some(t.lineno), f))?;
                        continue;
                    }
                    ok_rules.push((chain.clone(), t.rule.clone(), t.expected.clone()));
                }
            }
        }
    }
    let mut input = vec![format!("*{table}")];
    let mut expect = Vec::new();
    for chain in FAST_CHAIN_ORDER {
        for (c, rule, expected) in ok_rules.iter().filter(|r| r.0 == chain) {
            input.push(format!("-A {c} {rule}"));
            expect.push(format!("-A {c} {expected}"));
        }
    }
    input.push("COMMIT".into());
    let input = input.join("\n") + "\n";
    let expect = expect.join("\n");
    let failure = |reason: &str, out: &Outcome, got: String| Failure {
        reason: reason.into(),
        command: format!("iptables-restore <<EOF\n{input}EOF"),
        outcome: out.describe(),
        expected: expect.clone(),
        got,
        stderr: out.stderr.trim_end().into(),
    };
    let restore = s.run("iptables-restore", &[] as &[&str], Some(&input));
    if !restore.success() {
        return Err((None, Box::new(failure("iptables-restore failed", &restore, String::new()))));
    }
    let save = s.run("iptables-save", &[] as &[&str], None);
    s.sh(&format!("iptables -F -t {table}"), None);
    if save.crashed() {
        return Err((None, Box::new(failure("iptables-save crashed", &save, String::new()))));
    }
    if !save.stdout.trim_end().contains(&expect) {
        let got: Vec<&str> = save.stdout.lines().filter(|l| l.starts_with("-A ")).collect();
        return Err((None, Box::new(failure("expected lines not found as one block in iptables-save", &restore, got.join("\n")))));
    }
    Ok(())
}

struct FileResult {
    name: String,
    lines: Vec<LineVerdict>,
    /// None: fast mode not possible for this file.
    fast: Option<FastResult>,
}

fn run_file(tools: &Tools, name: &str) -> FileResult {
    let path = spec_dir().join(format!("{name}.t"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let items = parse_spec(&text);
    // Each mode starts from an empty ruleset, as upstream's fast-then-slow sequence does.
    let fast = fast_run_possible(&items).then(|| in_fresh_netns(tools, |s| run_fast(s, &items)));
    let lines = in_fresh_netns(tools, |s| run_slow(s, &items));
    FileResult { name: format!("{name}.t"), lines, fast }
}

// ---------------------------------------------------------------------------------------------
// Reporting

fn indent(text: &str) -> String {
    if text.is_empty() {
        return "(none)".into();
    }
    text.lines().collect::<Vec<_>>().join("\n              ")
}

fn write_failure(out: &mut String, f: &Failure) {
    let _ = writeln!(out, "  command:    {}", indent(&f.command));
    let _ = writeln!(out, "  result:     {}", f.outcome);
    let _ = writeln!(out, "  expected:   {}", indent(&f.expected));
    let _ = writeln!(out, "  got:        {}", indent(&f.got));
    let _ = writeln!(out, "  stderr:     {}", indent(&f.stderr));
}

/// Prints per-file lines and the total; writes the report. Returns (passed, failed, fast
/// failures).
fn report(tools: &Tools, results: &[FileResult]) -> (usize, usize, usize) {
    let (mut passed, mut failed, mut fast_failed, mut fast_run) = (0, 0, 0, 0);
    let mut rep = String::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let _ = writeln!(rep, "conformance report for {} (unix time {now}); spec files: tests/data/iptables-t/\n", tools.label());
    for r in results {
        let ok = r.lines.iter().filter(|l| l.failure.is_none()).count();
        passed += ok;
        failed += r.lines.len() - ok;
        let fast = match &r.fast {
            None => "fast mode n/a".to_string(),
            Some(Ok(())) => {
                fast_run += 1;
                "fast mode OK".into()
            }
            Some(Err((_, f))) => {
                fast_run += 1;
                fast_failed += 1;
                format!("fast mode FAILED ({})", f.reason)
            }
        };
        println!("{:<22} {ok:>3}/{:<3} lines passed, {fast}", r.name, r.lines.len());
        for l in &r.lines {
            if let Some((chain, f)) = &l.failure {
                let _ = writeln!(rep, "== {} line {} [{chain}]: {}", r.name, l.line.lineno, f.reason);
                let _ = writeln!(rep, "  spec:       {}", l.line.text);
                write_failure(&mut rep, f);
                rep.push('\n');
            }
        }
        if let Some(Err((lineno, f))) = &r.fast {
            let at = lineno.map(|n| format!(" (line {n})")).unwrap_or_default();
            let _ = writeln!(rep, "== {} fast mode{at}: {}", r.name, f.reason);
            write_failure(&mut rep, f);
            rep.push('\n');
        }
    }
    let summary = format!(
        "{passed} passed, {failed} failed ({} lines in {} files, {}); fast mode: {} of {fast_run} files failed",
        passed + failed,
        results.len(),
        tools.label(),
        fast_failed
    );
    println!("{summary}");
    let _ = writeln!(rep, "TOTAL: {summary}");
    let file = if tools.is_ours() { "report.txt".to_string() } else { format!("report-{}.txt", tools.label().replace('/', "_")) };
    let path = common::report_dir().join(file);
    match fs::write(&path, rep) {
        Ok(()) => println!("report: {}", path.display()),
        Err(e) => eprintln!("warning: writing {}: {e}", path.display()),
    }
    (passed, failed, fast_failed)
}

fn selected_files() -> Vec<String> {
    match std::env::var("BPFIPT_CONFORMANCE_FILES") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|s| s.trim().trim_end_matches(".t").to_string())
            .inspect(|s| assert!(IN_SCOPE.contains(&s.as_str()), "{s} is not an in-scope spec file"))
            .collect(),
        _ => IN_SCOPE.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn iptables_t_specs() {
    if !common::root_or_skip("the .t conformance runner") {
        return;
    }
    let tools = Tools::from_env("BPFIPT_CONFORMANCE_BIN");
    let results = common::par_map(&selected_files(), |name| run_file(&tools, name));
    let (_, failed, fast_failed) = report(&tools, &results);
    if common::report_only() {
        return;
    }
    assert!(
        failed == 0 && fast_failed == 0,
        "{failed} spec lines and {fast_failed} fast-mode files failed for {}; see target/conformance/",
        tools.label()
    );
}

#[test]
fn spec_parser_reads_fields_like_upstream() {
    let items = parse_spec(":INPUT,FORWARD\n# c\n\n-p tcp;=;OK\n-x;;FAIL\n-y;-z;OK;NFT;FAIL\n*nat\n@iptables -N X\n");
    assert!(matches!(&items[0], Item::Chains(c) if c == &["INPUT", "FORWARD"]));
    let Item::Test(t) = &items[1] else { panic!("test line") };
    assert_eq!((t.lineno, t.rule.as_str(), t.expected.as_str(), t.result.as_str()), (4, "-p tcp", "-p tcp", "OK"));
    let Item::Test(t) = &items[3] else { panic!("variant line") };
    assert_eq!(t.variant, Some(("NFT".to_string(), Some("FAIL".to_string()))));
    assert!(matches!(&items[4], Item::Table(t) if t == "nat"));
    assert!(matches!(&items[5], Item::External(c) if c == "iptables -N X"));
    assert!(!fast_run_possible(&items));
    assert_eq!(delete_command("INPUT -c 1,2 -j ACCEPT"), "iptables -D INPUT -j ACCEPT");
    assert_eq!(delete_command("INPUT --set-counters 1 2 -j ACCEPT"), "iptables -D INPUT -j ACCEPT");
}

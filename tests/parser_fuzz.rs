//! Parser robustness: random command lines and restore inputs, built from real option names,
//! values, `!`, quotes and garbage, must never crash. Two layers:
//!
//! * in process, no root: the parse layer (`parse::cmdline::parse`, and restore lines through
//!   `parse::restore::classify` / `split_args` / `parse`) returns `Ok` or a typed error, never
//!   panics;
//! * the whole binary: every answer is one of iptables' exit codes (0-4), never a panic, a
//!   signal or a hang. The binary runs as `iptables` / `iptables-restore` in one fresh network namespace per test
//! (commands that parse successfully do change that namespace's ruleset, which is the point:
//! later inputs meet a non-empty ruleset). Root is needed for that; without it the tests skip.
//!
//! `BPFIPT_FUZZ_BIN` selects another implementation (see `common::Tools::from_env`).
//! Longer runs: `BPFIPT_FUZZ_CASES=20000 cargo test --test parser_fuzz -- --nocapture`
//! (default 300 argv cases, 150 random restore inputs, 150 mutated real dumps). A failing case
//! is printed minimised by proptest, ready to paste into a shell.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use bpf_iptables::parse::{cmdline, restore};
use common::{in_fresh_netns, Outcome, Session, Tools};

const COMMANDS: &[&str] = &[
    "-A", "-I", "-D", "-R", "-C", "-L", "-S", "-F", "-Z", "-N", "-X", "-P", "-E", "--append", "--insert", "--delete",
    "--replace", "--check", "--list", "--list-rules", "--flush", "--zero", "--new-chain", "--delete-chain", "--policy",
    "--rename-chain", "-h", "--version", "-V",
];

const CHAINS: &[&str] = &[
    "INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING", "X", "fuzz-chain", "DOCKER-USER",
    "a-chain-name-that-is-far-too-long-for-iptables", "", "-", "!",
];

const GENERAL: &[&str] = &[
    "-t", "--table", "-p", "--protocol", "-s", "--source", "--src", "-d", "--destination", "--dst", "-i",
    "--in-interface", "-o", "--out-interface", "-j", "--jump", "-g", "--goto", "-m", "--match", "-f", "--fragment",
    "-c", "--set-counters", "-n", "--numeric", "-v", "--verbose", "-x", "--exact", "--line-numbers", "-w", "--wait",
    "-W", "--wait-interval", "-4", "-6", "--ipv4", "--ipv6",
];

const EXT_OPTIONS: &[&str] = &[
    "--sport", "--dport", "--source-port", "--destination-port", "--sports", "--dports", "--ports", "--syn",
    "--tcp-flags", "--tcp-option", "--icmp-type", "--ctstate", "--ctproto", "--ctorigsrc", "--ctorigdst", "--ctreplsrc",
    "--ctrepldst", "--ctexpire", "--ctdir", "--ctstatus", "--state", "--comment", "--mark", "--set-mark", "--set-xmark",
    "--and-mark", "--or-mark", "--xor-mark", "--limit", "--limit-burst", "--log-prefix", "--log-level",
    "--log-tcp-sequence", "--log-tcp-options", "--log-ip-options", "--log-uid", "--reject-with", "--ttl-eq", "--ttl-gt",
    "--ttl-lt", "--length", "--mac-source", "--pkt-type", "--tos", "--dscp", "--dscp-class", "--mode", "--probability",
    "--every", "--packet", "--src-range", "--dst-range", "--src-type", "--dst-type", "--limit-iface-in",
    "--limit-iface-out", "--to-destination", "--to-source", "--dport=22", "--bogus-option",
];

const MODULES: &[&str] = &[
    "tcp", "udp", "icmp", "multiport", "conntrack", "state", "comment", "mark", "limit", "ttl", "length", "mac",
    "pkttype", "tos", "dscp", "statistic", "iprange", "addrtype", "recent", "set", "nosuchmatch",
];

const TARGETS: &[&str] = &[
    "ACCEPT", "DROP", "RETURN", "REJECT", "LOG", "MARK", "DNAT", "MASQUERADE", "QUEUE", "NOSUCHTARGET", "X",
];

const VALUES: &[&str] = &[
    "!", "tcp", "udp", "icmp", "all", "0", "6", "17", "255", "256", "-1", "1", "22", "65535", "65536", "1:1023", "1024:",
    ":5", "5:1", "0:65535", "1,2,3", "1,2:3,", ",", "0x0", "0xff", "0xff/0x0f", "0xfeedcafe/0xfeedcafe", "4294967295",
    "4294967296", "198.18.0.1", "198.18.0.0/15", "198.18.0.1/32", "198.18.0.1/255.254.0.0", "198.18.0.1/33", "1.2.3",
    "256.1.1.1", "0.0.0.0/0", "198.18.0.1-198.18.0.9", "198.18.0.1,198.18.0.2", "::1", "localhost", "eth0", "eth+", "+",
    "veth-with-a-very-long-name0", "NEW", "NEW,ESTABLISHED", "INVALID,UNTRACKED,SNAT", "wrong", "ORIGINAL", "1/sec",
    "1/minute", "1000/day", "0/sec", "5/fortnight", "1.5", "0.5", "0.50000000000", "any", "echo-request", "8/0",
    "255/255", "FIN,SYN,RST,ACK", "SYN", "ALL", "NONE", "icmp-port-unreachable", "tcp-reset", "alert", "7", "bad",
    "\"quoted text\"", "'single'", "\"", "'", "\\", "a b", "", " ", "--", "-", "--=", "%s%s%n", "é", "x\ty",
    "42:01:02:03:04:05", "42:01:02:03:04", "unicast", "Minimize-Delay", "CS0", "EF", "random", "nth", "LOCAL", "UNSPEC",
    "1,2", "5,1024", "filter", "nat", "raw", "mangle", "security", "nosuchtable",
];

/// One word of a command line: mostly vocabulary, sometimes arbitrary printable text.
fn word() -> impl Strategy<Value = String> {
    let pick = |list: &'static [&'static str]| proptest::sample::select(list).prop_map(str::to_string);
    prop_oneof![
        3 => pick(COMMANDS),
        3 => pick(CHAINS),
        4 => pick(GENERAL),
        4 => pick(EXT_OPTIONS),
        2 => pick(MODULES),
        2 => pick(TARGETS),
        6 => pick(VALUES),
        // Arguments cannot hold NUL bytes; anything else goes.
        1 => "[^\u{0}]{0,24}",
    ]
}

/// Command lines that usually start like a real one (a command and a chain) so that the rule
/// walker, not just the first check, sees the rest.
fn argv() -> impl Strategy<Value = Vec<String>> {
    let start = (proptest::sample::select(COMMANDS), proptest::sample::select(CHAINS))
        .prop_map(|(c, ch)| vec![c.to_string(), ch.to_string()]);
    prop_oneof![
        4 => (start, proptest::collection::vec(word(), 0..14)).prop_map(|(mut a, rest)| {
            a.extend(rest);
            a
        }),
        1 => proptest::collection::vec(word(), 0..10),
    ]
}

/// One restore line: table, chain and rule lines in their real shapes, plus garbage.
fn restore_line() -> impl Strategy<Value = String> {
    let words = || proptest::collection::vec(word(), 0..10).prop_map(|w| w.join(" "));
    prop_oneof![
        2 => proptest::sample::select(&["*filter", "*nat", "*raw", "*nosuchtable", "*", "COMMIT", "COMMIT extra"][..])
            .prop_map(str::to_string),
        2 => (proptest::sample::select(CHAINS), proptest::sample::select(&["ACCEPT", "DROP", "-", "BOGUS", ""][..]),
              proptest::sample::select(&["[0:0]", "[1:2]", "[x:y]", "[", ""][..]))
            .prop_map(|(c, p, k)| format!(":{c} {p} {k}")),
        6 => (proptest::sample::select(&["-A", "-I", "-D", "-N", "-X", "-F", "-Z", "-P", "[3:4] -A", "-c 1 2 -A"][..]),
              proptest::sample::select(CHAINS), words())
            .prop_map(|(c, ch, w)| format!("{c} {ch} {w}")),
        1 => Just("# a comment".to_string()),
        1 => Just(String::new()),
        1 => words(),
        1 => "[^\u{0}\n]{0,40}",
    ]
}

fn restore_input() -> impl Strategy<Value = (Vec<String>, String)> {
    let flags = proptest::collection::vec(
        proptest::sample::select(&["--noflush", "-n", "--test", "-t", "--counters", "-c", "-w", "-v", "-T", "filter"][..])
            .prop_map(str::to_string),
        0..3,
    );
    let body = proptest::collection::vec(restore_line(), 0..12).prop_map(|lines| {
        // Most inputs are framed like a real table, so the rule lines get parsed.
        let mut text = String::from("*filter\n");
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        text
    });
    (flags, body)
}

/// One edit applied to a real dump: (line selector, word selector, kind, replacement word).
type Mutation = (usize, usize, u8, String);

/// Real filter tables (Docker, kube-proxy, iptables' own dumps), each with a few random edits:
/// a word dropped, duplicated or replaced, or a line dropped or duplicated. These stay close to
/// valid input, where parser corner cases live.
fn mutated_dump() -> impl Strategy<Value = String> {
    let mut dumps: Vec<String> = common::dump_files()
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|t| common::filter_part(&t))
        .collect();
    dumps.sort();
    dumps.dedup();
    assert!(!dumps.is_empty(), "no dumps under {}", common::data_dir().display());
    let edit = (any::<usize>(), any::<usize>(), 0u8..5, word());
    (proptest::sample::select(dumps), proptest::collection::vec(edit, 1..6)).prop_map(|(dump, edits)| mutate(&dump, &edits))
}

fn mutate(dump: &str, edits: &[Mutation]) -> String {
    let mut lines: Vec<Vec<String>> = dump.lines().map(|l| l.split(' ').map(str::to_string).collect()).collect();
    for (li, wi, kind, new) in edits {
        if lines.is_empty() {
            break;
        }
        let l = li % lines.len();
        let line = &mut lines[l];
        let w = wi % line.len().max(1);
        match kind {
            0 if !line.is_empty() => {
                line.remove(w);
            }
            1 if !line.is_empty() => {
                let dup = line[w].clone();
                line.insert(w, dup);
            }
            2 if !line.is_empty() => line[w] = new.clone(),
            3 => {
                lines.remove(l);
            }
            _ => {
                let dup = line.clone();
                lines.insert(l, dup);
            }
        }
    }
    lines.iter().map(|l| l.join(" ") + "\n").collect()
}

fn cases(default: u32) -> u32 {
    std::env::var("BPFIPT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn check(what: &str, out: &Outcome) -> Result<(), TestCaseError> {
    prop_assert!(!out.crashed(), "{what}: {} with stderr:\n{}", out.describe(), out.stderr);
    prop_assert!(matches!(out.code(), Some(0..=4)), "{what}: {} is not an iptables exit code; stderr:\n{}", out.describe(), out.stderr);
    Ok(())
}

fn fuzz<T: std::fmt::Debug>(
    test: &str,
    n: u32,
    strategy: impl Strategy<Value = T> + Send,
    run: impl Fn(&Session, &T) -> Result<(), TestCaseError> + Send,
) {
    if !common::root_or_skip(test) {
        return;
    }
    let tools = Tools::from_env("BPFIPT_FUZZ_BIN");
    in_fresh_netns(&tools, move |s| {
        // Shrinking re-runs the binary; bound it so a hanging binary cannot stall the suite.
        let config = Config { cases: cases(n), failure_persistence: None, max_shrink_time: 120_000, ..Config::default() };
        let mut runner = TestRunner::new(config);
        if let Err(e) = runner.run(&strategy, |input| run(s, &input)) {
            panic!("{test}: {e}");
        }
    });
}

#[test]
fn random_command_lines_never_crash() {
    fuzz("argv fuzzing", 300, argv(), |s, args| check(&format!("iptables {args:?}"), &s.run("iptables", args, None)));
}

#[test]
fn random_restore_inputs_never_crash() {
    fuzz("restore fuzzing", 150, restore_input(), |s, (flags, body)| {
        check(&format!("iptables-restore {flags:?} <<EOF\n{body}EOF"), &s.run("iptables-restore", flags, Some(body)))
    });
}

#[test]
fn mutated_real_dumps_never_crash() {
    fuzz("dump mutation fuzzing", 150, mutated_dump(), |s, body| {
        check(&format!("iptables-restore <<EOF\n{body}EOF"), &s.run("iptables-restore", &[] as &[&str], Some(body)))
    });
}

#[test]
fn mutations_edit_words_and_lines() {
    let dump = "*filter\n-A INPUT -j DROP\nCOMMIT\n";
    assert_eq!(mutate(dump, &[(0, 0, 3, String::new())]), "-A INPUT -j DROP\nCOMMIT\n");
    assert_eq!(mutate(dump, &[(1, 3, 0, String::new())]), "*filter\n-A INPUT -j\nCOMMIT\n");
    assert_eq!(mutate(dump, &[(4, 1, 2, "!".into())]), "*filter\n-A ! -j DROP\nCOMMIT\n");
}

/// In-process runs are cheap: many more cases than through the binary.
fn in_process_config() -> Config {
    Config { cases: cases(300) * 10, failure_persistence: None, ..Config::default() }
}

#[test]
fn parse_layer_never_panics_on_command_lines() {
    let mut runner = TestRunner::new(in_process_config());
    let result = runner.run(&argv(), |args| {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = cmdline::parse(&words, false);
        Ok(())
    });
    if let Err(e) = result {
        panic!("cmdline::parse: {e}");
    }
}

/// Feeds every line through the restore layers the way iptables-restore does: classify, split
/// the rule words, parse them with the table prefixed.
fn parse_restore_text(text: &str) {
    let mut in_table = false;
    for (i, line) in text.lines().enumerate() {
        match restore::classify(line, in_table, i + 1) {
            Ok(restore::Line::Table(_)) => in_table = true,
            Ok(restore::Line::Commit) => in_table = false,
            Ok(restore::Line::Chain { counters: Some(c), .. }) => {
                let _ = restore::parse_counters(c);
            }
            Ok(restore::Line::Rule { rest, .. }) => {
                if let Ok(words) = restore::split_args(rest) {
                    let mut args = vec!["-t", "filter"];
                    args.extend(words.iter().map(|w| w.as_ref()));
                    let _ = cmdline::parse(&args, true);
                }
            }
            _ => {}
        }
    }
}

#[test]
fn parse_layer_never_panics_on_restore_input() {
    let mut runner = TestRunner::new(in_process_config());
    let random = runner.run(&restore_input(), |(_, body)| {
        parse_restore_text(&body);
        Ok(())
    });
    if let Err(e) = random {
        panic!("restore parsing (random input): {e}");
    }
    let mutated = runner.run(&mutated_dump(), |body| {
        parse_restore_text(&body);
        Ok(())
    });
    if let Err(e) = mutated {
        panic!("restore parsing (mutated dumps): {e}");
    }
}

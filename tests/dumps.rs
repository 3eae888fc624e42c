//! Save-dump round trips against the kernel's iptables: the filter table (IPv4) of every saved
//! dump (`tests/data/save-dumps/`, Docker's and kube-proxy's rulesets in `tests/data/docker/` and
//! `tests/data/kube-proxy/`) is restored with `iptables-legacy-restore` in one fresh network
//! namespace and with our `iptables-restore` in another; `iptables-save -t filter` of both must be
//! identical (apart from the `#` lines).
//!
//! Input we don't support must be refused cleanly: exit 2, a message on stderr, and nothing
//! stored (the filter table reads back as before). Refusals are counted and listed, not failed.
//! Input the kernel refuses too (e.g. `-m nfacct` naming an object that doesn't exist) must also
//! be refused by us.
//!
//! Environment: `BPFIPT_DUMPS_BIN` selects the implementation compared with legacy (default ours;
//! `iptables-nft` validates this test), `BPFIPT_CONFORMANCE_REPORT_ONLY=1` reports without
//! failing. Details go to `target/conformance/dumps-report.txt`.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;

use common::{filter_part, in_fresh_netns, strip_save_comments, Outcome, Tools};

/// What one implementation made of one input.
struct Loaded {
    restore: Outcome,
    before: Result<String, String>,
    after: Result<String, String>,
}

fn load(tools: &Tools, input: &str) -> Loaded {
    in_fresh_netns(tools, |s| {
        let before = s.save(&["-t", "filter"]).map(|o| strip_save_comments(&o));
        let restore = s.run("iptables-restore", &[] as &[&str], Some(input));
        let after = s.save(&["-t", "filter"]).map(|o| strip_save_comments(&o));
        Loaded { restore, before, after }
    })
}

enum Verdict {
    Identical,
    /// We refused cleanly (the kernel accepted or refused it too).
    Refused { message: String, oracle_refused: bool },
    Failed(String),
}

fn judge(oracle: &Loaded, ours: &Loaded) -> Verdict {
    let oracle_ok = oracle.restore.success();
    if ours.restore.crashed() {
        return Verdict::Failed(format!("iptables-restore crashed ({}): {}", ours.restore.describe(), ours.restore.stderr));
    }
    if !ours.restore.success() {
        let message = ours.restore.stderr.trim_end().to_string();
        if ours.restore.code() != Some(2) && oracle_ok {
            return Verdict::Failed(format!("refused with {} instead of exit 2: {message}", ours.restore.describe()));
        }
        if message.is_empty() {
            return Verdict::Failed(format!("refused ({}) without a message", ours.restore.describe()));
        }
        return match (&ours.before, &ours.after) {
            (Ok(b), Ok(a)) if a == b => Verdict::Refused { message, oracle_refused: !oracle_ok },
            (Ok(b), Ok(a)) => Verdict::Failed(format!(
                "refused ({message}) but the filter table changed:\n{}",
                diff(b, a)
            )),
            (_, Err(e)) | (Err(e), _) => Verdict::Failed(format!("refused ({message}); then {e}")),
        };
    }
    if !oracle_ok {
        return Verdict::Failed(format!(
            "accepted an input iptables-legacy refuses ({}): {}",
            oracle.restore.describe(),
            oracle.restore.stderr.trim_end()
        ));
    }
    match (&oracle.after, &ours.after) {
        (Ok(want), Ok(got)) if want == got => Verdict::Identical,
        (Ok(want), Ok(got)) => Verdict::Failed(format!("iptables-save -t filter differs (- legacy, + ours):\n{}", diff(want, got))),
        (Err(e), _) => Verdict::Failed(format!("oracle: {e}")),
        (_, Err(e)) => Verdict::Failed(e.clone()),
    }
}

/// A line diff (longest common subsequence): `-` only in `a`, `+` only in `b`, two lines of
/// context around changes.
fn diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near_change = |k: usize| ops[k.saturating_sub(2)..(k + 3).min(ops.len())].iter().any(|(c, _)| *c != ' ');
    let mut out = String::new();
    let mut skipped = false;
    for (k, (c, line)) in ops.iter().enumerate() {
        if near_change(k) {
            let _ = writeln!(out, "{c} {line}");
            skipped = false;
        } else if !skipped {
            out.push_str("  ...\n");
            skipped = true;
        }
    }
    out
}

#[test]
fn filter_dumps_round_trip_like_iptables_legacy() {
    if !common::root_or_skip("the save-dump round trips") {
        return;
    }
    let oracle = Tools::legacy();
    let ours = Tools::from_env("BPFIPT_DUMPS_BIN");

    let files = common::dump_files();

    // Many Docker goldens share a filter table: run each distinct one once.
    let mut by_input: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut without_filter = Vec::new();
    for f in &files {
        let name = f.strip_prefix(common::data_dir()).unwrap_or(f).display().to_string();
        let text = fs::read_to_string(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
        match filter_part(&text) {
            Some(part) => by_input.entry(part).or_default().push(name),
            None => without_filter.push(name),
        }
    }
    let distinct: Vec<(&String, &Vec<String>)> = by_input.iter().collect();
    let verdicts = common::par_map(&distinct, |(input, _)| judge(&load(&oracle, input), &load(&ours, input)));

    let (mut identical, mut refused, mut failed) = (0, 0, 0);
    let mut rep = String::new();
    let _ = writeln!(rep, "filter-table round trips: {} vs iptables-legacy\n", ours.label());
    for ((input, names), verdict) in distinct.iter().zip(&verdicts) {
        let n = names.len();
        let who = if n == 1 { names[0].clone() } else { format!("{} (and {} more with the same filter table)", names[0], n - 1) };
        match verdict {
            Verdict::Identical => identical += n,
            Verdict::Refused { message, oracle_refused } => {
                refused += n;
                let also = if *oracle_refused { " (iptables-legacy refuses it too)" } else { "" };
                let _ = writeln!(rep, "REFUSED{also}: {who}\n  {}\n", message.replace('\n', "\n  "));
            }
            Verdict::Failed(why) => {
                failed += n;
                let _ = writeln!(rep, "FAILED: {who}\n  {}\n  input:\n    {}\n", why.trim_end().replace('\n', "\n  "), input.trim_end().replace('\n', "\n    "));
            }
        }
    }
    if !without_filter.is_empty() {
        let _ = writeln!(rep, "no filter table (not run): {}", without_filter.join(", "));
    }
    let summary = format!(
        "dumps: {identical} restored identical, {refused} refused, {failed} failed ({} inputs, {} distinct filter tables, {} without a filter table)",
        identical + refused + failed,
        distinct.len(),
        without_filter.len()
    );
    println!("{summary}");
    let _ = writeln!(rep, "\nTOTAL: {summary}");
    let path = common::report_dir().join("dumps-report.txt");
    match fs::write(&path, &rep) {
        Ok(()) => println!("report: {}", path.display()),
        Err(e) => eprintln!("warning: writing {}: {e}", path.display()),
    }
    if common::report_only() {
        return;
    }
    assert_eq!(failed, 0, "{failed} dump round trips failed; see {}", path.display());
}

#[test]
fn filter_part_and_diff() {
    let dump = "*nat\n-A X\nCOMMIT\n# c\n*filter\n:INPUT ACCEPT [0:0]\n# inner\n-A INPUT -j DROP\nCOMMIT\n*raw\nCOMMIT\n";
    assert_eq!(filter_part(dump).as_deref(), Some("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n"));
    assert_eq!(filter_part("*nat\nCOMMIT\n"), None);
    assert_eq!(diff("a\nb\nc\n", "a\nx\nc\n"), "  a\n- b\n+ x\n  c\n");
}

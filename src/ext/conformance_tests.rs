//! Extension-level conformance: every case in `testdata/cases.tsv` (the IPv4 lines of the
//! in-scope iptables `.t` files plus our own probes) was run through real `iptables-legacy`
//! 1.8.9 by `testdata/probe.py`, which recorded exit code, stderr, the `-S` rule text and the
//! last `-L` column with and without `-n` (`testdata/legacy-1.8.9.tsv`). Here each case goes
//! through our extensions with a minimal rule walker and must give the same results.
//! Cases whose outcome belongs to the real walker (unknown options, missing arguments, stray
//! words) are skipped.

use super::util::{fmt_addr_mask_save, parse_ipv4_any, parse_protocol, proto_to_name};
use super::{find_match, find_target, Arg, MatchDef, ParseCtx, TargetDef};
use crate::error::Error;
use crate::model::{Inv, IpHeader, Match, Target};

const EXPECT: &str = include_str!("testdata/legacy-1.8.9.tsv");

/// Shell-like word splitting with `"..."` (backslash escapes `"` and `\`) and `'...'`.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {
                if let Some(w) = cur.take() {
                    out.push(w);
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\')) => w.push(chars.next().unwrap_or('\\')),
                        c => w.push(c),
                    }
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(cur);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Inst<D: 'static, V> {
    def: &'static D,
    value: V,
    seen: Vec<&'static str>,
}

struct Outcome {
    save: String,
    list_n: String,
    list: String,
}

fn opt_of(options: &'static [super::Opt], name: &str) -> Option<&'static super::Opt> {
    options.iter().find(|o| o.name == name)
}

/// The minimal walker: `!`, `-p`, `-s`, `-m`, `-j` and extension options.
fn run(chain: &str, args: &[String]) -> Result<Outcome, Error> {
    let mut ip = IpHeader::default();
    let mut matches: Vec<Inst<MatchDef, Match>> = Vec::new();
    let mut target: Option<Inst<TargetDef, Target>> = None;
    let mut invert = false;
    let mut i = 0;
    while i < args.len() {
        let w = args[i].as_str();
        i += 1;
        match w {
            "!" => {
                invert = true;
                continue;
            }
            "-p" => {
                let p = parse_protocol(&args[i])?;
                i += 1;
                ip.proto = (p != 0).then_some(Inv::new(p, invert));
            }
            "-s" => {
                ip.src = Some(Inv::new(parse_ipv4_any(&args[i])?[0], invert));
                i += 1;
            }
            "-m" => {
                let def = find_match(&args[i]).expect("match under test is registered");
                i += 1;
                matches.push(Inst { def, value: (def.new)(), seen: Vec::new() });
            }
            "-j" => {
                let def = find_target(&args[i]).expect("target under test is registered");
                i += 1;
                target = Some(Inst { def, value: (def.new)(), seen: Vec::new() });
            }
            _ => {
                let name = w.strip_prefix("--").expect("an option");
                let owner_t = target.as_ref().and_then(|t| opt_of(t.def.options, name));
                let owner_m = matches.iter().rposition(|m| opt_of(m.def.options, name).is_some());
                let (opt, which) = match (owner_t, owner_m) {
                    (Some(o), _) => (o, None),
                    (None, Some(k)) => (opt_of(matches[k].def.options, name).expect("found"), Some(k)),
                    (None, None) => {
                        // implicit protocol match, as `-p tcp --dport 22`
                        let p = ip.proto.expect("implicit match needs -p").value;
                        let def = find_match(proto_to_name(p, true).expect("named proto")).expect("registered");
                        matches.push(Inst { def, value: (def.new)(), seen: Vec::new() });
                        (opt_of(def.options, name).expect("option of the proto match"), Some(matches.len() - 1))
                    }
                };
                let mut next = None;
                let arg = match opt.arg {
                    Arg::None => None,
                    Arg::Required | Arg::Optional => {
                        i += 1;
                        Some(args[i - 1].clone())
                    }
                    Arg::Two => {
                        i += 2;
                        next = args.get(i - 1).cloned();
                        Some(args[i - 2].clone())
                    }
                };
                match which {
                    Some(k) => {
                        let m = &mut matches[k];
                        let ctx = ParseCtx { ip: &ip, restore: false, seen: &m.seen, next: next.as_deref(), chain };
                        (m.def.parse)(&mut m.value, opt.name, arg.as_deref(), invert, &ctx)?;
                        m.seen.push(opt.name);
                    }
                    None => {
                        let t = target.as_mut().expect("target");
                        let ctx = ParseCtx { ip: &ip, restore: false, seen: &t.seen, next: next.as_deref(), chain };
                        (t.def.parse)(&mut t.value, opt.name, arg.as_deref(), invert, &ctx)?;
                        t.seen.push(opt.name);
                    }
                }
            }
        }
        invert = false;
    }
    for m in &matches {
        (m.def.check)(&m.value, &ParseCtx { ip: &ip, restore: false, seen: &m.seen, next: None, chain })?;
    }
    if let Some(t) = &target {
        (t.def.check)(&t.value, &ParseCtx { ip: &ip, restore: false, seen: &t.seen, next: None, chain })?;
    }
    let mut save = String::new();
    if let Some(s) = &ip.src {
        save.push_str(&format!(" -s {}", fmt_addr_mask_save(&s.value)));
    }
    if let Some(p) = &ip.proto {
        let name = proto_to_name(p.value, true).map(str::to_string).unwrap_or(p.value.to_string());
        save.push_str(&format!("{} -p {name}", if p.invert { " !" } else { "" }));
    }
    let (mut list_n, mut list) = (String::new(), String::new());
    for m in &matches {
        save.push_str(&format!(" -m {}", m.def.name));
        (m.def.save)(&m.value, &mut save);
        super::list_match(&m.value, &ip, true, &mut list_n);
        super::list_match(&m.value, &ip, false, &mut list);
    }
    if let Some(t) = &target {
        save.push_str(&format!(" -j {}", t.def.name));
        (t.def.save)(&t.value, &mut save);
        (t.def.list)(&t.value, true, &mut list_n);
        (t.def.list)(&t.value, false, &mut list);
    }
    Ok(Outcome { save, list_n, list })
}

/// Outcomes decided by the walker, not by an extension.
fn walker_owned(stderr: &str) -> bool {
    ["Bad argument", "requires an argument", "unknown option"].iter().any(|p| stderr.contains(p))
}

#[test]
fn extensions_match_iptables_legacy() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for line in EXPECT.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (chain, args, rc) = (f[0], f[1], f[2]);
        let (stderr, save, list_n, list) = (unescape(f[3]), unescape(f[4]), unescape(f[5]), unescape(f[6]));
        if walker_owned(&stderr) {
            continue;
        }
        let w = words(args);
        let after = |n: &str| -> Vec<String> {
            w.windows(2).filter(|p| p[0] == n).map(|p| p[1].clone()).collect()
        };
        let (ms, ts, ps) = (after("-m"), after("-j"), after("-p"));
        let implicit = ps.iter().any(|p| {
            let name = parse_protocol(p).ok().and_then(|n| proto_to_name(n, true)).unwrap_or("");
            find_match(name).is_none() && ms.is_empty() && ts.is_empty() && w.iter().any(|x| x.starts_with("--"))
        });
        let unsupported = ms.iter().any(|m| find_match(m).is_none())
            || ts.iter().any(|t| find_target(t).is_none())
            || implicit
            || (ms.is_empty() && ts.is_empty() && ps.is_empty());
        if unsupported {
            continue;
        }
        checked += 1;
        let got = std::panic::catch_unwind(|| run(chain, &w));
        let got = match got {
            Ok(g) => g,
            Err(_) => {
                failures.push(format!("{args}: panicked"));
                continue;
            }
        };
        match (rc, got) {
            ("0", Ok(o)) => {
                if o.save != save {
                    failures.push(format!("{args}: save\n  want [{save}]\n  got  [{}]", o.save));
                }
                if o.list_n.trim() != list_n.trim() {
                    failures.push(format!("{args}: list -n\n  want [{}]\n  got  [{}]", list_n.trim(), o.list_n.trim()));
                }
                if o.list.trim() != list.trim() {
                    failures.push(format!("{args}: list\n  want [{}]\n  got  [{}]", list.trim(), o.list.trim()));
                }
            }
            ("0", Err(e)) => failures.push(format!("{args}: want success, got {:?}", e.render("iptables"))),
            (rc, Ok(o)) => failures.push(format!("{args}: want exit {rc} [{stderr}], got success [{}]", o.save)),
            (rc, Err(e)) => {
                let text = e.render("iptables").replace("(bpf)", "(legacy)");
                if e.exit_code().to_string() != rc || !stderr.ends_with(&text) {
                    failures.push(format!("{args}: error\n  want {rc} [{stderr}]\n  got  {} [{text}]", e.exit_code()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} cases differ:\n{}", failures.len(), failures.join("\n"));
    assert!(checked > 0);
    eprintln!("{checked} cases checked against iptables-legacy");
}

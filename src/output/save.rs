//! `-S` (`list_rules`/`print_rule4`) and `iptables-save` (`do_output`) text. Rules print in
//! iptables' fixed order: `-A CHAIN [!] -s [!] -d [!] -i [!] -o [!] -p [!] -f`, the matches in
//! rule order as `-m NAME ...`, `-c P B` for `-S -v`, then `-j`/`-g`.

use std::fmt::Write;

use crate::ext::{self, util};
use crate::model::{Chain, Iface, Inv, Ipv4Mask, Rule, Table, Target};

use super::{target_def, target_name};

/// Where a rule's counters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleCounters {
    None,
    /// `iptables-save -c`: `[P:B] -A ...`.
    Prefix,
    /// `iptables -S -v`: `... -c P B -j ...`.
    Inline,
}

fn save_addr(out: &mut String, letter: char, a: &Option<Inv<Ipv4Mask>>) {
    let Some(a) = a else { return };
    if a.value.mask == 0 && a.value.addr == 0 && !a.invert {
        return;
    }
    if a.invert {
        out.push_str(" !");
    }
    out.push_str(" -");
    out.push(letter);
    out.push(' ');
    util::push_addr_mask_save(out, &a.value);
}

fn save_iface(out: &mut String, letter: char, i: &Option<Inv<Iface>>) {
    let Some(i) = i else { return };
    // A bare `+` has an all-zero mask, which iptables does not print at all.
    if i.value.wildcard && i.value.name.is_empty() {
        return;
    }
    let bang = if i.invert { " !" } else { "" };
    let plus = if i.value.wildcard { "+" } else { "" };
    let _ = write!(out, "{bang} -{letter} {}{plus}", i.value.name);
}

/// One rule as `-S`/save print it, with the trailing newline.
pub fn rule_line(chain: &str, rule: &Rule, counters: RuleCounters) -> String {
    let mut out = String::with_capacity(96);
    if counters == RuleCounters::Prefix {
        let _ = write!(out, "[{}:{}] ", rule.counters.packets, rule.counters.bytes);
    }
    let _ = write!(out, "-A {chain}");
    save_addr(&mut out, 's', &rule.ip.src);
    save_addr(&mut out, 'd', &rule.ip.dst);
    save_iface(&mut out, 'i', &rule.ip.in_iface);
    save_iface(&mut out, 'o', &rule.ip.out_iface);
    if let Some(p) = &rule.ip.proto {
        if p.invert {
            out.push_str(" !");
        }
        match util::proto_to_name(p.value, false) {
            Some(name) => {
                let _ = write!(out, " -p {name}");
            }
            None => {
                let _ = write!(out, " -p {}", p.value);
            }
        }
    }
    if let Some(frag) = rule.ip.fragment {
        out.push_str(if frag { " -f" } else { " ! -f" });
    }
    for m in &rule.matches {
        let _ = write!(out, " -m {}", m.name());
        (ext::def_of_match(m).save)(m, &mut out);
    }
    if counters == RuleCounters::Inline {
        let _ = write!(out, " -c {} {}", rule.counters.packets, rule.counters.bytes);
    }
    match &rule.target {
        Target::None => {}
        Target::Goto(c) => {
            let _ = write!(out, " -g {c}");
        }
        t => {
            let _ = write!(out, " -j {}", target_name(t));
            if let Some(def) = target_def(t) {
                (def.save)(t, &mut out);
            }
        }
    }
    out.push('\n');
    out
}

/// `iptables -S [chain [num]]` (`-v`: counters). `None` when `chain` does not exist.
pub fn list_rules(table: &Table, chain: Option<&str>, num: Option<u32>, verbose: bool) -> Option<String> {
    let selected: Vec<&Chain> = table.chains.iter().filter(|c| chain.is_none_or(|n| c.name == n)).collect();
    if selected.is_empty() {
        return None;
    }
    let mut out = String::new();
    if num.is_none() {
        for c in &selected {
            match c.policy {
                Some(p) => {
                    let _ = write!(out, "-P {} {}", c.name, p.name());
                    if verbose {
                        let _ = write!(out, " -c {} {}", c.counters.packets, c.counters.bytes);
                    }
                    out.push('\n');
                }
                None => {
                    let _ = writeln!(out, "-N {}", c.name);
                }
            }
        }
    }
    let mode = if verbose { RuleCounters::Inline } else { RuleCounters::None };
    for c in &selected {
        for (i, r) in c.rules.iter().enumerate() {
            if num.is_none_or(|n| n as usize == i + 1) {
                out.push_str(&rule_line(&c.name, r, mode));
            }
        }
    }
    Some(out)
}

/// C `ctime()` of now, with its trailing newline (the `#` lines of iptables-save).
pub fn ctime_now() -> String {
    // SAFETY: time with a null pointer; ctime_r writes at most 26 bytes into our buffer.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut buf = [0 as libc::c_char; 64];
        if libc::ctime_r(&now, buf.as_mut_ptr()).is_null() {
            return "\n".to_string();
        }
        std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    }
}

/// One table as iptables-save prints it. `date` is a `ctime` line (with newline). iptables-save
/// keeps legacy's header form (no variant tag) so dumps diff cleanly against iptables'.
pub fn save_table(table: &Table, counters: bool, date: &str) -> String {
    let mut out = String::with_capacity(256 + 64 * table.chains.iter().map(|c| c.rules.len()).sum::<usize>());
    let _ = write!(out, "# Generated by iptables-save v{} on {date}", crate::error::VERSION);
    let _ = writeln!(out, "*{}", table.kind.name());
    for c in &table.chains {
        match c.policy {
            Some(p) => {
                let _ = writeln!(out, ":{} {} [{}:{}]", c.name, p.name(), c.counters.packets, c.counters.bytes);
            }
            None => {
                let _ = writeln!(out, ":{} - [0:0]", c.name);
            }
        }
    }
    let mode = if counters { RuleCounters::Prefix } else { RuleCounters::None };
    for c in &table.chains {
        for r in &c.rules {
            out.push_str(&rule_line(&c.name, r, mode));
        }
    }
    let _ = write!(out, "COMMIT\n# Completed on {date}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Counters, IpHeader, TableKind};

    fn rule(ip: IpHeader, target: Target) -> Rule {
        Rule { id: 0, ip, matches: Vec::new(), target, counters: Counters { packets: 3, bytes: 4 } }
    }

    #[test]
    fn fixed_part_order_and_forms() {
        let ip = IpHeader {
            src: Some(Inv::new(Ipv4Mask::new(0x0a00_0000, 0xff00_0000), true)),
            dst: Some(Inv::new(Ipv4Mask::new(0x0100_0300, 0xff00_ff00), true)),
            in_iface: Some(Inv::new(Iface { name: "eth0".into(), wildcard: false }, true)),
            out_iface: Some(Inv::new(Iface { name: "lo".into(), wildcard: true }, true)),
            proto: Some(Inv::new(6, true)),
            fragment: None,
        };
        assert_eq!(
            rule_line("FORWARD", &rule(ip, Target::None), RuleCounters::None),
            "-A FORWARD ! -s 10.0.0.0/8 ! -d 1.0.3.0/255.0.255.0 ! -i eth0 ! -o lo+ ! -p tcp\n"
        );
        let ip = IpHeader {
            src: Some(Inv::new(Ipv4Mask::new(0xc000_0202, u32::MAX), false)),
            in_iface: Some(Inv::new(Iface { name: String::new(), wildcard: true }, false)),
            proto: Some(Inv::new(47, false)),
            fragment: Some(false),
            ..Default::default()
        };
        assert_eq!(
            rule_line("INPUT", &rule(ip.clone(), Target::Drop), RuleCounters::Inline),
            "-A INPUT -s 192.0.2.2/32 -p gre ! -f -c 3 4 -j DROP\n"
        );
        assert_eq!(
            rule_line("INPUT", &rule(ip, Target::Goto("x".into())), RuleCounters::Prefix),
            "[3:4] -A INPUT -s 192.0.2.2/32 -p gre ! -f -g x\n"
        );
    }

    #[test]
    fn list_rules_and_save() {
        let mut t = Table::new(TableKind::Filter);
        t.add_user_chain(Chain::user("bar"));
        t.chains[0].rules.push(rule(IpHeader::default(), Target::Jump("bar".into())));
        assert_eq!(
            list_rules(&t, None, None, false).as_deref(),
            Some("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N bar\n-A INPUT -j bar\n")
        );
        assert_eq!(list_rules(&t, Some("INPUT"), Some(1), false).as_deref(), Some("-A INPUT -j bar\n"));
        assert_eq!(list_rules(&t, Some("INPUT"), Some(9), false).as_deref(), Some(""));
        assert_eq!(list_rules(&t, Some("nope"), None, false), None);
        assert_eq!(
            save_table(&t, true, "D\n"),
            "# Generated by iptables-save v1.8.9 on D\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n\
             :OUTPUT ACCEPT [0:0]\n:bar - [0:0]\n[3:4] -A INPUT -j bar\nCOMMIT\n# Completed on D\n"
        );
    }
}

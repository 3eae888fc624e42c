//! `-L` text (`list_entries`, `print_header`, `print_firewall` of iptables 1.8.9): the column
//! layout for every combination of `-n -v -x --line-numbers`, K/M/G counter formatting, and the
//! one-line form `-v` prints for a rule being added or deleted.

use std::collections::HashMap;
use std::fmt::Write;

use crate::ext::{self, util};
use crate::model::{Chain, Iface, Inv, Ipv4Mask, Rule, Table, Target};

use super::{target_def, target_name};

/// The `-L` switches (iptables' FMT_* flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Format {
    /// `-n`.
    pub numeric: bool,
    /// `-v`: counters and interface columns.
    pub verbose: bool,
    /// `-x`: exact counters instead of K/M/G.
    pub exact: bool,
    pub line_numbers: bool,
    /// FMT_NOTABLE: one line, labelled fields (`-v` on a rule command), no column padding.
    pub notable: bool,
}

impl Format {
    /// FMT_PRINT_RULE: what `-A/-I/-D/-C/-R -v` print for each rule.
    pub const PRINT_RULE: Format = Format { numeric: true, verbose: true, exact: true, line_numbers: false, notable: true };
}

/// `printf(FMT(tab, notab), value)` for a left-aligned field of `width`.
fn left(out: &mut String, f: &Format, width: usize, value: &str) {
    if f.notable {
        let _ = write!(out, "{value} ");
    } else {
        let _ = write!(out, "{value:<width$} ");
    }
}

/// `xtables_print_num`.
fn print_num(out: &mut String, n: u64, f: &Format) {
    if f.exact {
        if f.notable {
            let _ = write!(out, "{n} ");
        } else {
            let _ = write!(out, "{n:>8} ");
        }
        return;
    }
    if n <= 99999 {
        if f.notable {
            let _ = write!(out, "{n} ");
        } else {
            let _ = write!(out, "{n:>5} ");
        }
        return;
    }
    let mut n = n;
    for unit in ['K', 'M', 'G'] {
        n = (n + 500) / 1000;
        if n <= 9999 {
            if f.notable {
                let _ = write!(out, "{n}{unit} ");
            } else {
                let _ = write!(out, "{n:>4}{unit} ");
            }
            return;
        }
    }
    n = (n + 500) / 1000;
    if f.notable {
        let _ = write!(out, "{n}T ");
    } else {
        let _ = write!(out, "{n:>4}T ");
    }
}

/// `print_header`.
fn header(out: &mut String, chain: &Chain, refs: usize, f: &Format) {
    let _ = write!(out, "Chain {}", chain.name);
    match chain.policy {
        Some(p) => {
            let _ = write!(out, " (policy {}", p.name());
            if f.verbose {
                out.push(' ');
                let nt = Format { notable: true, ..*f };
                print_num(out, chain.counters.packets, &nt);
                out.push_str("packets, ");
                print_num(out, chain.counters.bytes, &nt);
                out.push_str("bytes");
            }
            out.push_str(")\n");
        }
        None => {
            let _ = writeln!(out, " ({refs} references)");
        }
    }
    if f.line_numbers {
        let _ = write!(out, "{:<4} ", "num");
    }
    if f.verbose {
        if f.exact {
            let _ = write!(out, "{:>8} {:>10} ", "pkts", "bytes");
        } else {
            let _ = write!(out, "{:>5} {:>5} ", "pkts", "bytes");
        }
    }
    let _ = write!(out, "{:<9} ", "target");
    out.push_str(" prot opt");
    if f.verbose {
        let _ = write!(out, " {:<6} {:<6} ", "in", "out");
    }
    let _ = writeln!(out, " {:<19}  {:<19} ", "source", "destination");
}

fn iface_text(i: &Option<Inv<Iface>>, anyname: &str) -> String {
    match i {
        None => anyname.to_string(),
        Some(i) => {
            let bang = if i.invert { "!" } else { "" };
            let plus = if i.value.wildcard { "+" } else { "" };
            format!("{bang}{}{plus}", i.value.name)
        }
    }
}

fn addr_text(a: &Option<Inv<Ipv4Mask>>, numeric: bool) -> (char, String) {
    let (m, inv) = a.as_ref().map_or((Ipv4Mask::ANY, false), |a| (a.value, a.invert));
    (if inv { '!' } else { ' ' }, util::fmt_addr_mask_list(&m, numeric))
}

/// `print_firewall`: one rule line (`num` is its 1-based position, shown with line numbers).
pub fn rule_line(out: &mut String, rule: &Rule, num: usize, f: &Format) {
    if f.line_numbers {
        left(out, f, 4, &num.to_string());
    }
    if f.verbose && !f.notable {
        print_num(out, rule.counters.packets, f);
        print_num(out, rule.counters.bytes, f);
    }
    left(out, f, 9, target_name(&rule.target));

    let (pinv, proto) = rule.ip.proto.map_or((false, 0), |p| (p.invert, p.value));
    out.push(if pinv { '!' } else { ' ' });
    let pname = util::proto_to_name(proto, f.numeric);
    match pname {
        Some(name) if !(f.numeric && !f.notable) => left(out, f, 4, name),
        _ => left(out, f, 4, &proto.to_string()),
    }

    // Options column: fragment flags.
    if f.notable {
        out.push_str("opt ");
    }
    // `! -f` keeps the fragment flag and adds the inversion flag: "!f".
    let (finv, frag) = match rule.ip.fragment {
        None => (false, false),
        Some(true) => (false, true),
        Some(false) => (true, true),
    };
    out.push(if finv { '!' } else { '-' });
    out.push(if frag { 'f' } else { '-' });
    out.push(' ');

    if f.verbose {
        let anyname = if f.numeric { "*" } else { "any" };
        let i = iface_text(&rule.ip.in_iface, anyname);
        let o = iface_text(&rule.ip.out_iface, anyname);
        if f.notable {
            let _ = write!(out, "in {i} out {o} ");
        } else {
            let _ = write!(out, " {i:<6} {o:<6} ");
        }
    }

    let (sb, s) = addr_text(&rule.ip.src, f.numeric);
    let (db, d) = addr_text(&rule.ip.dst, f.numeric);
    out.push(sb);
    left(out, f, 19, &s);
    out.push(db);
    if f.notable {
        let _ = write!(out, "-> {d}");
        out.push_str("  ");
    } else {
        let _ = write!(out, "{d:<19} ");
    }

    if matches!(rule.target, Target::Goto(_)) {
        out.push_str("[goto] ");
    }
    for m in &rule.matches {
        extension_text(out, |s| ext::list_match(m, &rule.ip, f.numeric, s));
    }
    if let Some(def) = target_def(&rule.target) {
        extension_text(out, |s| (def.list)(&rule.target, f.numeric, s));
    }
    out.push('\n');
}

/// iptables' print functions each start their text with a space; keep that whether or not an
/// extension's `list` writes it.
fn extension_text(out: &mut String, print: impl FnOnce(&mut String)) {
    let mut s = String::new();
    print(&mut s);
    if s.is_empty() {
        return;
    }
    if !s.starts_with(' ') {
        out.push(' ');
    }
    out.push_str(&s);
}

/// `iptables -L [chain [num]]`. `None` when `chain` does not exist.
pub fn list_table(table: &Table, chain: Option<&str>, num: Option<u32>, f: &Format) -> Option<String> {
    let mut out = String::new();
    let mut found = false;
    // One pass over the rules for every chain's reference count (kube-proxy has thousands).
    let mut refs: HashMap<&str, usize> = HashMap::new();
    for r in table.rules() {
        if let Target::Jump(n) | Target::Goto(n) = &r.target {
            *refs.entry(n.as_str()).or_default() += 1;
        }
    }
    for c in table.chains.iter().filter(|c| chain.is_none_or(|n| c.name == n)) {
        if found {
            out.push('\n');
        }
        if num.is_none() {
            header(&mut out, c, refs.get(c.name.as_str()).copied().unwrap_or(0), f);
        }
        for (i, r) in c.rules.iter().enumerate() {
            if num.is_none_or(|n| n as usize == i + 1) {
                rule_line(&mut out, r, i + 1, f);
            }
        }
        found = true;
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Counters, IpHeader, TableKind};

    fn table() -> Table {
        let mut t = Table::new(TableKind::Filter);
        t.add_user_chain(Chain::user("bar"));
        let ip = IpHeader { src: Some(Inv::new(Ipv4Mask::new(0xc000_0201, u32::MAX), false)), ..Default::default() };
        t.chains[0].rules.push(Rule { id: 0, ip, matches: Vec::new(), target: Target::Drop, counters: Counters::default() });
        let ip = IpHeader {
            src: Some(Inv::new(Ipv4Mask::new(0x0a00_0000, 0xff00_0000), true)),
            dst: Some(Inv::new(Ipv4Mask::new(0x0100_0300, 0xff00_ff00), true)),
            in_iface: Some(Inv::new(Iface { name: "eth0".into(), wildcard: false }, true)),
            out_iface: Some(Inv::new(Iface { name: "lo".into(), wildcard: true }, true)),
            proto: Some(Inv::new(6, true)),
            fragment: None,
        };
        let counters = Counters { packets: 123_456, bytes: 98_765_432_101 };
        t.chains[1].rules.push(Rule { id: 1, ip, matches: Vec::new(), target: Target::None, counters });
        t
    }

    #[test]
    fn numeric_list() {
        let f = Format { numeric: true, ..Default::default() };
        assert_eq!(
            list_table(&table(), Some("INPUT"), None, &f).as_deref(),
            Some(
                "Chain INPUT (policy ACCEPT)\n\
                 target     prot opt source               destination         \n\
                 DROP       0    --  192.0.2.1            0.0.0.0/0           \n"
            )
        );
    }

    #[test]
    fn verbose_list_with_units_and_inversions() {
        let f = Format { numeric: true, verbose: true, ..Default::default() };
        assert_eq!(
            list_table(&table(), Some("FORWARD"), None, &f).as_deref(),
            Some(
                "Chain FORWARD (policy ACCEPT 0 packets, 0 bytes)\n \
                 pkts bytes target     prot opt in     out     source               destination         \n\
                 \x20123K   99G           !6    --  !eth0  !lo+   !10.0.0.0/8          !1.0.3.0/255.0.255.0 \n"
            )
        );
        let f = Format { verbose: true, ..Default::default() };
        let text = list_table(&table(), Some("FORWARD"), None, &f).unwrap_or_default();
        assert!(text.ends_with("          !tcp  --  !eth0  !lo+   !10.0.0.0/8          !1.0.3.0/255.0.255.0 \n"), "{text}");
    }

    #[test]
    fn line_numbers_exact_and_user_chain() {
        let f = Format { numeric: true, verbose: true, exact: true, line_numbers: true, notable: false };
        assert_eq!(
            list_table(&table(), Some("INPUT"), None, &f).as_deref(),
            Some(
                "Chain INPUT (policy ACCEPT 0 packets, 0 bytes)\n\
                 num      pkts      bytes target     prot opt in     out     source               destination         \n\
                 1           0        0 DROP       0    --  *      *       192.0.2.1            0.0.0.0/0           \n"
            )
        );
        let f = Format { numeric: true, line_numbers: true, ..Default::default() };
        assert_eq!(
            list_table(&table(), Some("bar"), None, &f).as_deref(),
            Some("Chain bar (0 references)\nnum  target     prot opt source               destination         \n")
        );
        assert_eq!(list_table(&table(), Some("nope"), None, &f), None);
    }

    #[test]
    fn print_rule_form() {
        let mut out = String::new();
        let r = Rule { id: 0, ip: IpHeader::default(), matches: Vec::new(), target: Target::Return, counters: Counters::default() };
        rule_line(&mut out, &r, 0, &Format::PRINT_RULE);
        assert_eq!(out, "RETURN  all opt -- in * out *  0.0.0.0/0  -> 0.0.0.0/0  \n");
    }
}

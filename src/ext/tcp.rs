//! `-m tcp` (libxt_tcp, old option API): `--sport/--dport` ranges and service names,
//! `--tcp-flags mask comp`, `--syn`, `--tcp-option`, each invertible.

use super::util::{list_ports, parse_port_range, save_ports, strtoul};
use super::xtopt::kernel_einval;
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{tcp_flags, Inv, Match, PortRange, TcpFlags, TcpMatch};

static OPTIONS: [Opt; 7] = [
    Opt { name: "source-port", arg: Arg::Required },
    Opt { name: "sport", arg: Arg::Required },
    Opt { name: "destination-port", arg: Arg::Required },
    Opt { name: "dport", arg: Arg::Required },
    Opt { name: "syn", arg: Arg::None },
    Opt { name: "tcp-flags", arg: Arg::Two },
    Opt { name: "tcp-option", arg: Arg::Required },
];

pub static DEF: MatchDef = MatchDef {
    name: "tcp",
    options: &OPTIONS,
    new: || Match::Tcp(TcpMatch::default()),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

/// Flag names in bit order, as `print_tcpf` walks them; `ALL` and `NONE` only parse.
const FLAG_NAMES: &[(&str, u8)] = &[
    ("FIN", tcp_flags::FIN),
    ("SYN", tcp_flags::SYN),
    ("RST", tcp_flags::RST),
    ("PSH", tcp_flags::PSH),
    ("ACK", tcp_flags::ACK),
    ("URG", tcp_flags::URG),
    ("ALL", 0x3F),
    ("NONE", 0),
];

fn seen(ctx: &ParseCtx, names: &[&str]) -> bool {
    ctx.seen.iter().any(|s| names.contains(s))
}

/// `parse_tcp_flag`: comma-separated names (case-insensitive, empty items skipped like strtok).
fn parse_flags(s: &str) -> Result<u8> {
    s.split(',').filter(|t| !t.is_empty()).try_fold(0u8, |acc, t| {
        FLAG_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(t))
            .map(|(_, f)| acc | f)
            .ok_or_else(|| param(format!("Unknown TCP flag `{t}'")))
    })
}

/// Ports given as 0:65535 and not inverted are what iptables stores for "no port option".
fn port_opt(r: PortRange, invert: bool) -> Option<Inv<PortRange>> {
    (r != PortRange::ALL || invert).then_some(Inv::new(r, invert))
}

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Tcp(t) = m else { unreachable!("tcp parse on a tcp match") };
    let arg = arg.unwrap_or("");
    match opt {
        "source-port" | "sport" => {
            if seen(ctx, &["source-port", "sport"]) {
                return Err(param("Only one `--source-port' allowed"));
            }
            t.sport = port_opt(parse_port_range(arg, "tcp")?, invert);
        }
        "destination-port" | "dport" => {
            if seen(ctx, &["destination-port", "dport"]) {
                return Err(param("Only one `--destination-port' allowed"));
            }
            t.dport = port_opt(parse_port_range(arg, "tcp")?, invert);
        }
        "syn" | "tcp-flags" => {
            if seen(ctx, &["syn", "tcp-flags"]) {
                return Err(param("Only one of `--syn' or `--tcp-flags'  allowed"));
            }
            let (mask, comp) = if opt == "syn" {
                (tcp_flags::FIN | tcp_flags::SYN | tcp_flags::RST | tcp_flags::ACK, tcp_flags::SYN)
            } else {
                let comp = match ctx.next {
                    Some(n) if !n.starts_with('-') && !n.starts_with('!') => n,
                    _ => return Err(param("--tcp-flags requires two args.")),
                };
                (parse_flags(arg)?, parse_flags(comp)?)
            };
            t.flags = (mask != 0 || comp != 0 || invert).then_some(Inv::new(TcpFlags { mask, comp }, invert));
        }
        _ => {
            if seen(ctx, &["tcp-option"]) {
                return Err(param("Only one `--tcp-option' allowed"));
            }
            let v = strtoul(arg, 1, 255).ok_or_else(|| param(format!("Bad TCP option \"{arg}\"")))?;
            t.option = Some(Inv::new(v as u8, invert));
        }
    }
    Ok(())
}

/// The kernel accepts `-m tcp` only for `-p tcp` (not inverted).
fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    match ctx.ip.proto {
        Some(Inv { value: 6, invert: false }) => Ok(()),
        _ => Err(kernel_einval()),
    }
}

/// `print_tcpf`: names joined by `,`, or `NONE`.
fn flag_names(flags: u8) -> String {
    let names: Vec<&str> = FLAG_NAMES[..6].iter().filter(|(_, f)| flags & f != 0).map(|(n, _)| *n).collect();
    if names.is_empty() {
        "NONE".to_string()
    } else {
        names.join(",")
    }
}

fn save(m: &Match, out: &mut String) {
    let Match::Tcp(t) = m else { return };
    save_ports(out, "sport", t.sport.as_ref());
    save_ports(out, "dport", t.dport.as_ref());
    if let Some(o) = &t.option {
        out.push_str(if o.invert { " ! --tcp-option " } else { " --tcp-option " });
        out.push_str(&o.value.to_string());
    }
    if let Some(f) = t.flags.as_ref().filter(|f| f.value.mask != 0 || f.invert) {
        out.push_str(if f.invert { " ! --tcp-flags " } else { " --tcp-flags " });
        out.push_str(&format!("{} {}", flag_names(f.value.mask), flag_names(f.value.comp)));
    }
}

fn list(m: &Match, numeric: bool, out: &mut String) {
    let Match::Tcp(t) = m else { return };
    out.push_str(" tcp");
    list_ports(out, "spt", t.sport.as_ref(), "tcp", numeric);
    list_ports(out, "dpt", t.dport.as_ref(), "tcp", numeric);
    if let Some(o) = &t.option {
        out.push_str(&format!(" option={}{}", if o.invert { "!" } else { "" }, o.value));
    }
    if let Some(f) = t.flags.as_ref().filter(|f| f.value.mask != 0 || f.invert) {
        out.push_str(" flags:");
        if f.invert {
            out.push('!');
        }
        if numeric {
            out.push_str(&format!("0x{:02X}/0x{:02X}", f.value.mask, f.value.comp));
        } else {
            out.push_str(&format!("{}/{}", flag_names(f.value.mask), flag_names(f.value.comp)));
        }
    }
}

//! `-m icmp [!] --icmp-type {type[/code[:code]]|name}` (libipt_icmp): names may be abbreviated
//! (first unambiguous case-insensitive prefix), `any` is type 255 with all codes.

use super::util::strtoul_prefix;
use super::xtopt::{self, kernel_einval, XtOpt, INVERT, MAND};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{IcmpMatch, Inv, Match};

const TABLE: [XtOpt; 1] = [XtOpt::new("icmp-type", 0, Arg::Required, MAND | INVERT)];
static OPTIONS: [Opt; 1] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "icmp",
    options: &OPTIONS,
    new: || Match::Icmp(IcmpMatch { icmp_type: IcmpMatch::ANY_TYPE, code_lo: 0, code_hi: 0xFF, invert: false }),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

/// `icmp_codes`: name, type, code range (aliases after their main name).
const CODES: &[(&str, u8, u8, u8)] = &[
    ("any", 0xFF, 0, 0xFF),
    ("echo-reply", 0, 0, 0xFF),
    ("pong", 0, 0, 0xFF),
    ("destination-unreachable", 3, 0, 0xFF),
    ("network-unreachable", 3, 0, 0),
    ("host-unreachable", 3, 1, 1),
    ("protocol-unreachable", 3, 2, 2),
    ("port-unreachable", 3, 3, 3),
    ("fragmentation-needed", 3, 4, 4),
    ("source-route-failed", 3, 5, 5),
    ("network-unknown", 3, 6, 6),
    ("host-unknown", 3, 7, 7),
    ("network-prohibited", 3, 9, 9),
    ("host-prohibited", 3, 10, 10),
    ("TOS-network-unreachable", 3, 11, 11),
    ("TOS-host-unreachable", 3, 12, 12),
    ("communication-prohibited", 3, 13, 13),
    ("host-precedence-violation", 3, 14, 14),
    ("precedence-cutoff", 3, 15, 15),
    ("source-quench", 4, 0, 0xFF),
    ("redirect", 5, 0, 0xFF),
    ("network-redirect", 5, 0, 0),
    ("host-redirect", 5, 1, 1),
    ("TOS-network-redirect", 5, 2, 2),
    ("TOS-host-redirect", 5, 3, 3),
    ("echo-request", 8, 0, 0xFF),
    ("ping", 8, 0, 0xFF),
    ("router-advertisement", 9, 0, 0xFF),
    ("router-solicitation", 10, 0, 0xFF),
    ("time-exceeded", 11, 0, 0xFF),
    ("ttl-exceeded", 11, 0, 0xFF),
    ("ttl-zero-during-transit", 11, 0, 0),
    ("ttl-zero-during-reassembly", 11, 1, 1),
    ("parameter-problem", 12, 0, 0xFF),
    ("ip-header-bad", 12, 0, 0),
    ("required-option-missing", 12, 1, 1),
    ("timestamp-request", 13, 0, 0xFF),
    ("timestamp-reply", 14, 0, 0xFF),
    ("address-mask-request", 17, 0, 0xFF),
    ("address-mask-reply", 18, 0, 0xFF),
];

/// `parse_range`: `n` or `n:m` (each 0-255, any base); the rest after it.
fn parse_range(s: &str) -> Option<((u8, u8), &str)> {
    let (lo, rest) = strtoul_prefix(s, 0, 255)?;
    match rest.strip_prefix(':') {
        Some(r) => {
            let (hi, rest) = strtoul_prefix(r, 0, 255)?;
            Some(((lo as u8, hi as u8), rest))
        }
        None => Some(((lo as u8, lo as u8), rest)),
    }
}

/// `ipt_parse_icmp`: (type, code_lo, code_hi).
fn parse_icmp(s: &str) -> Result<(u8, u8, u8)> {
    let mut found: Option<&(&str, u8, u8, u8)> = None;
    for c in CODES {
        if c.0.len() >= s.len() && c.0.as_bytes()[..s.len()].eq_ignore_ascii_case(s.as_bytes()) {
            if let Some(prev) = found {
                return Err(param(format!("Ambiguous ICMP type `{s}': `{}' or `{}'?", prev.0, c.0)));
            }
            found = Some(c);
        }
    }
    if let Some(&(_, t, lo, hi)) = found {
        return Ok((t, lo, hi));
    }
    let ((t_lo, t_hi), rest) = parse_range(s).ok_or_else(|| param(format!("Unknown ICMP type `{s}'")))?;
    let (lo, hi) = match rest.chars().next() {
        None => (0, 0xFF),
        Some('/') => {
            let ((lo, hi), rest) = parse_range(&rest[1..]).ok_or_else(|| param(format!("Unknown ICMP code `{s}'")))?;
            if let Some(c) = rest.chars().next() {
                return Err(param(format!("unknown character {c}")));
            }
            (lo, hi)
        }
        Some(c) => return Err(param(format!("unknown character {c}"))),
    };
    if t_lo != t_hi {
        return Err(param("ICMP type range not supported"));
    }
    Ok((t_lo, lo, hi))
}

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Icmp(i) = m else { unreachable!("icmp parse on an icmp match") };
    xtopt::parse_pre("icmp", &TABLE, opt, invert, ctx)?;
    let (icmp_type, code_lo, code_hi) = parse_icmp(arg.unwrap_or(""))?;
    *i = IcmpMatch { icmp_type, code_lo, code_hi, invert };
    Ok(())
}

/// The option is mandatory; the kernel accepts `-m icmp` only for `-p icmp` (not inverted).
fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    xtopt::fcheck("icmp", &TABLE, ctx)?;
    match ctx.ip.proto {
        Some(Inv { value: 1, invert: false }) => Ok(()),
        _ => Err(kernel_einval()),
    }
}

fn save(m: &Match, out: &mut String) {
    let Match::Icmp(i) = m else { return };
    if i.invert {
        out.push_str(" !");
    }
    if i.icmp_type == 0xFF && i.code_lo == 0 && i.code_hi == 0xFF {
        out.push_str(" --icmp-type any");
    } else {
        out.push_str(&format!(" --icmp-type {}", i.icmp_type));
        if i.code_lo != 0 || i.code_hi != 0xFF {
            out.push_str(&format!("/{}", i.code_lo));
        }
    }
}

fn list(m: &Match, numeric: bool, out: &mut String) {
    let Match::Icmp(i) = m else { return };
    out.push_str(" icmp");
    if !numeric {
        if let Some(c) = CODES.iter().find(|c| c.1 == i.icmp_type && c.2 == i.code_lo && c.3 == i.code_hi) {
            out.push_str(&format!(" {}{}", if i.invert { "!" } else { "" }, c.0));
            return;
        }
    }
    if i.invert {
        out.push_str(" !");
    }
    out.push_str(&format!("type {}", i.icmp_type));
    if i.code_lo == i.code_hi {
        out.push_str(&format!(" code {}", i.code_lo));
    } else if i.code_lo != 0 || i.code_hi != 0xFF {
        out.push_str(&format!(" codes {}-{}", i.code_lo, i.code_hi));
    }
}

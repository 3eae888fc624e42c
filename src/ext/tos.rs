//! `-m tos [!] --tos {value[/mask]|name}` (libxt_tos revision 1): a number defaults to mask
//! 0xff, a symbolic name to mask 0x3f.

use super::util::strtoul_prefix;
use super::xtopt::{self, XtOpt, INVERT, MAND};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{Match, TosMatch};

const TABLE: [XtOpt; 1] = [XtOpt::new("tos", 0, Arg::Required, MAND | INVERT)];
static OPTIONS: [Opt; 1] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "tos",
    options: &OPTIONS,
    new: || Match::Tos(TosMatch { value: 0, mask: 0, invert: false }),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

/// `tos_symbol_names`.
const SYMBOLS: &[(&str, u8)] = &[
    ("Minimize-Delay", 0x10),
    ("Maximize-Throughput", 0x08),
    ("Maximize-Reliability", 0x04),
    ("Minimize-Cost", 0x02),
    ("Normal-Service", 0x00),
];

/// Mask a symbolic name implies in revision 1.
const SYMBOL_MASK: u8 = 0x3F;

/// `xtopt_parse_tosmask`.
fn parse_tos(s: &str) -> Result<(u8, u8)> {
    let illegal = || param(format!("Illegal value: \"{s}\""));
    if let Some((value, rest)) = strtoul_prefix(s, 0, 255) {
        let (mask, rest) = match rest.strip_prefix('/') {
            Some(m) => strtoul_prefix(m, 0, 255).ok_or_else(illegal)?,
            None => (0xFF, rest),
        };
        if !rest.is_empty() {
            return Err(illegal());
        }
        return Ok((value as u8, mask as u8));
    }
    SYMBOLS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(s))
        .map(|(_, v)| (*v, SYMBOL_MASK))
        .ok_or_else(|| param(format!("Symbolic name \"{s}\" is unknown")))
}

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Tos(t) = m else { unreachable!("tos parse on a tos match") };
    xtopt::parse_pre("tos", &TABLE, opt, invert, ctx)?;
    let (value, mask) = parse_tos(arg.unwrap_or(""))?;
    *t = TosMatch { value, mask, invert };
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    xtopt::fcheck("tos", &TABLE, ctx)
}

fn save(m: &Match, out: &mut String) {
    let Match::Tos(t) = m else { return };
    out.push_str(&format!("{} --tos 0x{:02x}/0x{:02x}", if t.invert { " !" } else { "" }, t.value, t.mask));
}

fn list(m: &Match, numeric: bool, out: &mut String) {
    let Match::Tos(t) = m else { return };
    out.push_str(" tos match");
    if t.invert {
        out.push('!');
    }
    let symbol = SYMBOLS.iter().find(|(_, v)| t.mask == SYMBOL_MASK && *v == t.value);
    match symbol {
        Some((n, _)) if !numeric => out.push_str(&format!(" {n}")),
        _ => out.push_str(&format!("0x{:02x}/0x{:02x}", t.value, t.mask)),
    }
}

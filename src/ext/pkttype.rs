//! `-m pkttype [!] --pkt-type {unicast|broadcast|multicast|otherhost}` (libxt_pkttype).

use super::xtopt::{self, XtOpt, INVERT, MAND};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{Match, PkttypeMatch};

const TABLE: [XtOpt; 1] = [XtOpt::new("pkt-type", 0, Arg::Required, MAND | INVERT)];
static OPTIONS: [Opt; 1] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "pkttype",
    options: &OPTIONS,
    new: || Match::Pkttype(PkttypeMatch { pkttype: 0, invert: false }),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

/// `supported_types`: printable names first, then parse-only aliases (`PACKET_*` values).
const NAMES: &[(&str, u8, bool)] = &[
    ("unicast", 0, true),
    ("broadcast", 1, true),
    ("multicast", 2, true),
    ("otherhost", 3, true),
    ("bcast", 1, false),
    ("mcast", 2, false),
    ("host", 0, false),
];

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Pkttype(p) = m else { unreachable!("pkttype parse on a pkttype match") };
    xtopt::parse_pre("pkttype", &TABLE, opt, invert, ctx)?;
    let arg = arg.unwrap_or("");
    let pkttype = NAMES
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(arg))
        .map(|(_, v, _)| *v)
        .ok_or_else(|| param(format!("Bad packet type '{arg}'")))?;
    *p = PkttypeMatch { pkttype, invert };
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    xtopt::fcheck("pkttype", &TABLE, ctx)
}

fn name(p: &PkttypeMatch) -> String {
    NAMES
        .iter()
        .find(|(_, v, printable)| *printable && *v == p.pkttype)
        .map(|(n, _, _)| n.to_string())
        .unwrap_or_else(|| p.pkttype.to_string())
}

fn save(m: &Match, out: &mut String) {
    let Match::Pkttype(p) = m else { return };
    out.push_str(&format!("{} --pkt-type {}", if p.invert { " !" } else { "" }, name(p)));
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::Pkttype(p) = m else { return };
    out.push_str(&format!(" PKTTYPE {} {}", if p.invert { "!=" } else { "=" }, name(p)));
}

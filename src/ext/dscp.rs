//! `-m dscp [!] --dscp N | [!] --dscp-class CLASS` (libxt_dscp), stored as the 6-bit value.

use super::xtopt::{self, parse_uint, XtOpt, INVERT};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{DscpMatch, Match};

const O_DSCP: u8 = 0;
const O_DSCP_CLASS: u8 = 1;

const TABLE: [XtOpt; 2] = [
    XtOpt::new("dscp", O_DSCP, Arg::Required, INVERT).excl(1 << O_DSCP_CLASS),
    XtOpt::new("dscp-class", O_DSCP_CLASS, Arg::Required, INVERT).excl(1 << O_DSCP),
];
static OPTIONS: [Opt; 2] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "dscp",
    options: &OPTIONS,
    new: || Match::Dscp(DscpMatch { dscp: 0, invert: false }),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

/// `ds_classes` of dscp_helper.c.
const CLASSES: &[(&str, u8)] = &[
    ("CS0", 0x00),
    ("CS1", 0x08),
    ("CS2", 0x10),
    ("CS3", 0x18),
    ("CS4", 0x20),
    ("CS5", 0x28),
    ("CS6", 0x30),
    ("CS7", 0x38),
    ("BE", 0x00),
    ("AF11", 0x0a),
    ("AF12", 0x0c),
    ("AF13", 0x0e),
    ("AF21", 0x12),
    ("AF22", 0x14),
    ("AF23", 0x16),
    ("AF31", 0x1a),
    ("AF32", 0x1c),
    ("AF33", 0x1e),
    ("AF41", 0x22),
    ("AF42", 0x24),
    ("AF43", 0x26),
    ("EF", 0x2e),
];

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Dscp(d) = m else { unreachable!("dscp parse on a dscp match") };
    let e = xtopt::parse_pre("dscp", &TABLE, opt, invert, ctx)?;
    let arg = arg.unwrap_or("");
    let dscp = if e.id == O_DSCP {
        parse_uint("dscp", "dscp", arg, 0, 63)? as u8
    } else {
        CLASSES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(arg))
            .map(|(_, v)| *v)
            .ok_or_else(|| param(format!("Invalid DSCP value `{arg}'")))?
    };
    *d = DscpMatch { dscp, invert };
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    if xtopt::seen_ids(&TABLE, ctx) == 0 {
        return Err(param("DSCP match: Parameter --dscp is required"));
    }
    xtopt::fcheck("dscp", &TABLE, ctx)
}

fn save(m: &Match, out: &mut String) {
    let Match::Dscp(d) = m else { return };
    out.push_str(&format!("{} --dscp 0x{:02x}", if d.invert { " !" } else { "" }, d.dscp));
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::Dscp(d) = m else { return };
    out.push_str(&format!(" DSCP match {}0x{:02x}", if d.invert { "!" } else { "" }, d.dscp));
}

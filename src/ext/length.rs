//! `-m length [!] --length lo[:hi]` (libxt_length): IP total length range.

use super::xtopt::{self, parse_uint_range, XtOpt, INVERT, MAND};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::Result;
use crate::model::{LengthMatch, Match};

const TABLE: [XtOpt; 1] = [XtOpt::new("length", 0, Arg::Required, MAND | INVERT)];
static OPTIONS: [Opt; 1] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "length",
    options: &OPTIONS,
    new: || Match::Length(LengthMatch { lo: 0, hi: 0, invert: false }),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Length(l) = m else { unreachable!("length parse on a length match") };
    xtopt::parse_pre("length", &TABLE, opt, invert, ctx)?;
    let (lo, hi) = parse_uint_range("length", "length", arg.unwrap_or(""), u64::from(u16::MAX))?;
    *l = LengthMatch { lo: lo as u16, hi: hi as u16, invert };
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    xtopt::fcheck("length", &TABLE, ctx)
}

fn range(l: &LengthMatch) -> String {
    if l.lo == l.hi {
        l.lo.to_string()
    } else {
        format!("{}:{}", l.lo, l.hi)
    }
}

fn save(m: &Match, out: &mut String) {
    let Match::Length(l) = m else { return };
    out.push_str(&format!("{} --length {}", if l.invert { " !" } else { "" }, range(l)));
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::Length(l) = m else { return };
    out.push_str(&format!(" length {}{}", if l.invert { "!" } else { "" }, range(l)));
}

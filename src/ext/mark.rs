//! `-m mark [!] --mark value[/mask]` (libxt_mark revision 1).

use super::util::parse_val_mask;
use super::xtopt::{self, XtOpt, INVERT, MAND};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::Result;
use crate::model::{MarkMatch, Match};

const TABLE: [XtOpt; 1] = [XtOpt::new("mark", 0, Arg::Required, MAND | INVERT)];
static OPTIONS: [Opt; 1] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "mark",
    options: &OPTIONS,
    new: || Match::Mark(MarkMatch { mark: 0, mask: u32::MAX, invert: false }),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Mark(k) = m else { unreachable!("mark parse on a mark match") };
    xtopt::parse_pre("mark", &TABLE, opt, invert, ctx)?;
    let (mark, mask) = parse_val_mask(arg.unwrap_or(""), "mark", "mark")?;
    *k = MarkMatch { mark, mask, invert };
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    xtopt::fcheck("mark", &TABLE, ctx)
}

/// `print_mark`: `0xV` or `0xV/0xM`.
fn mark_text(k: &MarkMatch) -> String {
    let mut s = String::new();
    super::util::fmt_val_mask(k.mark, k.mask, &mut s);
    s
}

fn save(m: &Match, out: &mut String) {
    let Match::Mark(k) = m else { return };
    out.push_str(if k.invert { " ! --mark" } else { " --mark" });
    out.push_str(&mark_text(k));
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::Mark(k) = m else { return };
    out.push_str(if k.invert { " mark match !" } else { " mark match" });
    out.push_str(&mark_text(k));
}

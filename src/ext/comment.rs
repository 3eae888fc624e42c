//! `-m comment --comment TEXT` (libxt_comment): up to 255 characters, not invertible.

use super::xtopt::{self, XtOpt, MAND};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::Match;

/// `XT_MAX_COMMENT_LEN - 1`.
const MAX_LEN: usize = 255;

const TABLE: [XtOpt; 1] = [XtOpt::new("comment", 0, Arg::Required, MAND)];
static OPTIONS: [Opt; 1] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "comment",
    options: &OPTIONS,
    new: || Match::Comment(String::new()),
    parse,
    check,
    save,
    list,
};

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Comment(c) = m else { unreachable!("comment parse on a comment match") };
    xtopt::parse_pre("comment", &TABLE, opt, invert, ctx)?;
    let arg = arg.unwrap_or("");
    if arg.len() > MAX_LEN {
        return Err(param(format!("Argument must have a maximum length of {MAX_LEN} characters\n")));
    }
    *c = arg.to_string();
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    xtopt::fcheck("comment", &TABLE, ctx)
}

fn save(m: &Match, out: &mut String) {
    let Match::Comment(c) = m else { return };
    out.push_str(" --comment");
    xtopt::save_string(c, out);
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::Comment(c) = m else { return };
    out.push_str(&format!(" /* {c} */"));
}

//! `-m comment --comment TEXT` (libxt_comment): up to 255 bytes (longer is cut), not
//! invertible.

use super::xtopt::{self, XtOpt, MAND};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::Result;
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
    list_ip: None,
};

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Comment(c) = m else { unreachable!("comment parse on a comment match") };
    xtopt::parse_pre("comment", &TABLE, opt, invert, ctx)?;
    let arg = arg.unwrap_or("");
    // iptables 1.8.9 silently keeps the first 255 bytes of a longer comment.
    let mut end = arg.len().min(MAX_LEN);
    while !arg.is_char_boundary(end) {
        end -= 1;
    }
    *c = arg[..end].to_string();
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

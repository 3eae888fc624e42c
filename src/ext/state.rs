//! `-m state [!] --state LIST` (the state match of libxt_conntrack in iptables 1.8.9).

use super::conntrack::{name_list, parse_name_list};
use super::xtopt::{self, XtOpt, INVERT, MAND};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{ct_state, Match, StateMatch};

const TABLE: [XtOpt; 1] = [XtOpt::new("state", 0, Arg::Required, MAND | INVERT)];
static OPTIONS: [Opt; 1] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "state",
    options: &OPTIONS,
    new: || Match::State(StateMatch { state: 0, invert: false }),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

/// Parse order of `state_parse_state`.
const PARSE_NAMES: &[(&str, u16)] = &[
    ("INVALID", ct_state::INVALID),
    ("NEW", ct_state::NEW),
    ("ESTABLISHED", ct_state::ESTABLISHED),
    ("RELATED", ct_state::RELATED),
    ("UNTRACKED", ct_state::UNTRACKED),
];

/// Print order of `state_print_state`.
const PRINT_NAMES: &[(&str, u16)] = &[
    ("INVALID", ct_state::INVALID),
    ("NEW", ct_state::NEW),
    ("RELATED", ct_state::RELATED),
    ("ESTABLISHED", ct_state::ESTABLISHED),
    ("UNTRACKED", ct_state::UNTRACKED),
];

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::State(s) = m else { unreachable!("state parse on a state match") };
    xtopt::parse_pre("state", &TABLE, opt, invert, ctx)?;
    let arg = arg.unwrap_or("");
    // An empty list, or an empty last item after valid ones, has its own message.
    let empty_tail = arg.is_empty()
        || arg.strip_suffix(',').is_some_and(|head| parse_name_list(head, PARSE_NAMES, "state").is_ok());
    if empty_tail {
        return Err(param("\"--state\" requires a list of states with no spaces, e.g. ESTABLISHED,RELATED"));
    }
    *s = StateMatch { state: parse_name_list(arg, PARSE_NAMES, "state")?, invert };
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    xtopt::fcheck("state", &TABLE, ctx)
}

fn save(m: &Match, out: &mut String) {
    let Match::State(s) = m else { return };
    out.push_str(if s.invert { " ! --state " } else { " --state " });
    out.push_str(&name_list(s.state, PRINT_NAMES));
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::State(s) = m else { return };
    out.push_str(if s.invert { " ! state " } else { " state " });
    out.push_str(&name_list(s.state, PRINT_NAMES));
}

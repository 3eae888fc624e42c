//! `-m iprange` (libxt_iprange revision 1): `--src-range`/`--dst-range a[-b]` with numeric
//! addresses (short forms completed with zeros); a reversed range is accepted with a warning.

use super::util::{fmt_ipv4, parse_ipv4_numeric};
use super::xtopt::{self, XtOpt, INVERT};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{Inv, IprangeMatch, Match};

const O_SRC: u8 = 0;
const O_DST: u8 = 1;

const TABLE: [XtOpt; 2] = [
    XtOpt::new("src-range", O_SRC, Arg::Required, INVERT),
    XtOpt::new("dst-range", O_DST, Arg::Required, INVERT),
];
static OPTIONS: [Opt; 2] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "iprange",
    options: &OPTIONS,
    new: || Match::Iprange(IprangeMatch::default()),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Iprange(r) = m else { unreachable!("iprange parse on an iprange match") };
    let e = xtopt::parse_pre("iprange", &TABLE, opt, invert, ctx)?;
    let arg = arg.unwrap_or("");
    let (from, to) = arg.split_once('-').unwrap_or((arg, arg));
    let addr = |s: &str| {
        parse_ipv4_numeric(s).ok_or_else(|| param(format!("iprange: Bad value for \"--{}\" option: \"{s}\"", e.name)))
    };
    let (lo, hi) = (addr(from)?, addr(to)?);
    if lo > hi {
        eprintln!("xt_iprange: range {from}-{to} is reversed and will never match");
    }
    let v = Some(Inv::new((lo, hi), invert));
    if e.id == O_SRC {
        r.src = v;
    } else {
        r.dst = v;
    }
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    if xtopt::seen_ids(&TABLE, ctx) == 0 {
        return Err(param("iprange match: You must specify `--src-range' or `--dst-range'"));
    }
    xtopt::fcheck("iprange", &TABLE, ctx)
}

fn range(r: &Inv<(u32, u32)>) -> String {
    format!("{}-{}", fmt_ipv4(r.value.0), fmt_ipv4(r.value.1))
}

fn save(m: &Match, out: &mut String) {
    let Match::Iprange(r) = m else { return };
    for (v, k) in [(&r.src, "src-range"), (&r.dst, "dst-range")] {
        if let Some(v) = v {
            out.push_str(&format!("{} --{k} {}", if v.invert { " !" } else { "" }, range(v)));
        }
    }
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::Iprange(r) = m else { return };
    for (v, k) in [(&r.src, "source"), (&r.dst, "destination")] {
        if let Some(v) = v {
            out.push_str(&format!(" {k} IP range {}{}", if v.invert { "! " } else { "" }, range(v)));
        }
    }
}

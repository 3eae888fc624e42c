//! `-m ttl` (libipt_ttl): `[!] --ttl-eq N`, `--ttl-lt N`, `--ttl-gt N` (one of them).

use super::xtopt::{self, parse_uint, XtOpt, INVERT};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{Match, TtlMatch, TtlOp};

const O_EQ: u8 = 0;
const O_LT: u8 = 1;
const O_GT: u8 = 2;

const TABLE: [XtOpt; 3] = [
    XtOpt::new("ttl-eq", O_EQ, Arg::Required, INVERT),
    XtOpt::new("ttl-lt", O_LT, Arg::Required, 0).excl(1 << O_EQ | 1 << O_GT),
    XtOpt::new("ttl-gt", O_GT, Arg::Required, 0).excl(1 << O_EQ | 1 << O_LT),
];
static OPTIONS: [Opt; 3] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "ttl",
    options: &OPTIONS,
    new: || Match::Ttl(TtlMatch { op: TtlOp::Eq, value: 0 }),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Ttl(t) = m else { unreachable!("ttl parse on a ttl match") };
    let e = xtopt::parse_pre("ttl", &TABLE, opt, invert, ctx)?;
    let value = parse_uint("ttl", e.name, arg.unwrap_or(""), 0, 255)? as u8;
    let op = match (e.id, invert) {
        (O_EQ, false) => TtlOp::Eq,
        (O_EQ, true) => TtlOp::Ne,
        (O_LT, _) => TtlOp::Lt,
        _ => TtlOp::Gt,
    };
    *t = TtlMatch { op, value };
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    if xtopt::seen_ids(&TABLE, ctx) == 0 {
        return Err(param("TTL match: You must specify one of `--ttl-eq', `--ttl-lt', `--ttl-gt"));
    }
    xtopt::fcheck("ttl", &TABLE, ctx)
}

fn save(m: &Match, out: &mut String) {
    let Match::Ttl(t) = m else { return };
    let opt = match t.op {
        TtlOp::Eq => " --ttl-eq",
        TtlOp::Ne => " ! --ttl-eq",
        TtlOp::Lt => " --ttl-lt",
        TtlOp::Gt => " --ttl-gt",
    };
    out.push_str(&format!("{opt} {}", t.value));
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::Ttl(t) = m else { return };
    let op = match t.op {
        TtlOp::Eq => "==",
        TtlOp::Ne => "!=",
        TtlOp::Lt => "<",
        TtlOp::Gt => ">",
    };
    out.push_str(&format!(" TTL match TTL {op} {}", t.value));
}

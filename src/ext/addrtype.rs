//! `-m addrtype` (libxt_addrtype revision 1): `[!] --src-type`, `[!] --dst-type` lists of
//! route types, `--limit-iface-in`/`--limit-iface-out` (the kernel restricts them by hook).

use super::xtopt::{self, kernel_einval, XtOpt, INVERT};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{AddrtypeMatch, Inv, Match};

const O_SRC_TYPE: u8 = 0;
const O_DST_TYPE: u8 = 1;
const O_LIMIT_IN: u8 = 2;
const O_LIMIT_OUT: u8 = 3;

const TABLE: [XtOpt; 4] = [
    XtOpt::new("src-type", O_SRC_TYPE, Arg::Required, INVERT),
    XtOpt::new("dst-type", O_DST_TYPE, Arg::Required, INVERT),
    XtOpt::new("limit-iface-in", O_LIMIT_IN, Arg::None, 0).excl(1 << O_LIMIT_OUT),
    XtOpt::new("limit-iface-out", O_LIMIT_OUT, Arg::None, 0).excl(1 << O_LIMIT_IN),
];
static OPTIONS: [Opt; 4] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "addrtype",
    options: &OPTIONS,
    new: || Match::Addrtype(AddrtypeMatch::default()),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

/// `rtn_names`: bit i is name i.
const NAMES: [&str; 12] = [
    "UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE", "UNREACHABLE", "PROHIBIT",
    "THROW", "NAT", "XRESOLVE",
];

/// `parse_types`: comma-separated (abbreviated, case-insensitive) names.
fn parse_types(arg: &str) -> Result<u16> {
    let mut mask = 0u16;
    let mut rest = arg;
    loop {
        let (item, next) = match rest.find(',') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let bit = NAMES.iter().position(|n| {
            !item.is_empty() && item.len() <= n.len() && n.as_bytes()[..item.len()].eq_ignore_ascii_case(item.as_bytes())
        });
        match (bit, next) {
            (Some(b), _) => mask |= 1 << b,
            (None, Some(_)) => return Err(param(format!("addrtype: bad type `{rest}'"))),
            (None, None) => return Err(param(format!("addrtype: bad type \"{rest}\""))),
        }
        match next {
            Some(n) => rest = n,
            None => return Ok(mask),
        }
    }
}

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Addrtype(a) = m else { unreachable!("addrtype parse on an addrtype match") };
    let e = xtopt::parse_pre("addrtype", &TABLE, opt, invert, ctx)?;
    match e.id {
        O_SRC_TYPE => a.src_type = Some(Inv::new(parse_types(arg.unwrap_or(""))?, invert)),
        O_DST_TYPE => a.dst_type = Some(Inv::new(parse_types(arg.unwrap_or(""))?, invert)),
        O_LIMIT_IN => a.limit_iface_in = true,
        _ => a.limit_iface_out = true,
    }
    Ok(())
}

fn check(m: &Match, ctx: &ParseCtx) -> Result<()> {
    let Match::Addrtype(a) = m else { return Ok(()) };
    let seen = xtopt::seen_ids(&TABLE, ctx);
    if seen & (1 << O_SRC_TYPE | 1 << O_DST_TYPE) == 0 {
        return Err(param("addrtype: you must specify --src-type or --dst-type"));
    }
    xtopt::fcheck("addrtype", &TABLE, ctx)?;
    // xt_addrtype: no output interface before routing, no input interface after it.
    let bad_out = a.limit_iface_out && matches!(ctx.chain, "PREROUTING" | "INPUT");
    let bad_in = a.limit_iface_in && matches!(ctx.chain, "POSTROUTING" | "OUTPUT");
    if bad_out || bad_in {
        return Err(kernel_einval());
    }
    Ok(())
}

fn types(mask: u16) -> String {
    NAMES.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

fn save(m: &Match, out: &mut String) {
    let Match::Addrtype(a) = m else { return };
    for (t, k) in [(&a.src_type, "src-type"), (&a.dst_type, "dst-type")] {
        if let Some(t) = t.filter(|t| t.value != 0) {
            out.push_str(&format!("{} --{k} {}", if t.invert { " !" } else { "" }, types(t.value)));
        }
    }
    if a.limit_iface_in {
        out.push_str(" --limit-iface-in");
    }
    if a.limit_iface_out {
        out.push_str(" --limit-iface-out");
    }
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::Addrtype(a) = m else { return };
    out.push_str(" ADDRTYPE match");
    for (t, k) in [(&a.src_type, "src-type"), (&a.dst_type, "dst-type")] {
        if let Some(t) = t.filter(|t| t.value != 0) {
            out.push_str(&format!(" {k} {}{}", if t.invert { "!" } else { "" }, types(t.value)));
        }
    }
    if a.limit_iface_in {
        out.push_str(" limit-in");
    }
    if a.limit_iface_out {
        out.push_str(" limit-out");
    }
}

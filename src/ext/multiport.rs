//! `-m multiport` (libxt_multiport revision 1): `--sports`, `--dports`, `--ports` with up to 15
//! slots (a range takes two), for `-p tcp/udp/udplite/sctp/dccp` only.

use super::util::{fmt_port_list, parse_port};
use super::xtopt::{self, XtOpt, INVERT};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{IpHeader, Match, MultiportDir, MultiportMatch, PortRange};

const O_SOURCE: u8 = 0;
const O_DEST: u8 = 1;
const O_EITHER: u8 = 2;
const F_ANY: u32 = 0x7;

/// `XT_MULTI_PORTS`.
const MAX_SLOTS: usize = 15;

const TABLE: [XtOpt; 5] = [
    XtOpt::new("source-ports", O_SOURCE, Arg::Required, INVERT).excl(F_ANY),
    XtOpt::new("sports", O_SOURCE, Arg::Required, INVERT).excl(F_ANY),
    XtOpt::new("destination-ports", O_DEST, Arg::Required, INVERT).excl(F_ANY),
    XtOpt::new("dports", O_DEST, Arg::Required, INVERT).excl(F_ANY),
    XtOpt::new("ports", O_EITHER, Arg::Required, INVERT).excl(F_ANY),
];
static OPTIONS: [Opt; 5] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "multiport",
    options: &OPTIONS,
    new: || Match::Multiport(MultiportMatch { dir: MultiportDir::Destination, ports: Vec::new(), invert: false }),
    parse,
    check,
    save,
    list,
    list_ip: Some(list_ip),
};

/// The protocols multiport works with, by number.
fn proto_name(p: u8) -> Option<&'static str> {
    Some(match p {
        6 => "tcp",
        17 => "udp",
        136 => "udplite",
        132 => "sctp",
        33 => "dccp",
        _ => return None,
    })
}

/// `check_proto`: the rule's `-p`, which must be one of ours and not inverted.
fn check_proto(ip: &IpHeader) -> Result<&'static str> {
    let wrong = || param("multiport only works with TCP, UDP, UDPLITE, SCTP and DCCP");
    match ip.proto {
        Some(p) if p.invert => Err(wrong()),
        Some(p) => proto_name(p.value).ok_or_else(wrong),
        None => Err(param("multiport needs `-p tcp', `-p udp', `-p udplite', `-p sctp' or `-p dccp'")),
    }
}

/// `parse_multi_ports_v1`: comma-separated ports or `a:b` ranges (strictly increasing).
fn parse_ports(s: &str, proto: &str) -> Result<Vec<PortRange>> {
    let mut out = Vec::new();
    let mut slots = 0;
    let mut items = s.split(',');
    for item in items.by_ref() {
        let range = item.split_once(':');
        if range.is_some() && slots == MAX_SLOTS - 1 {
            return Err(param("too many ports specified"));
        }
        let (lo, hi) = match range {
            Some((a, b)) => {
                let (lo, hi) = (parse_port(a, proto)?, parse_port(b, proto)?);
                if lo >= hi {
                    return Err(param("invalid portrange specified"));
                }
                slots += 2;
                (lo, hi)
            }
            None => {
                let p = parse_port(item, proto)?;
                slots += 1;
                (p, p)
            }
        };
        out.push(PortRange { lo, hi });
        if slots >= MAX_SLOTS {
            break;
        }
    }
    if items.next().is_some() {
        return Err(param("too many ports specified"));
    }
    Ok(out)
}

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Multiport(mp) = m else { unreachable!("multiport parse on a multiport match") };
    let e = xtopt::parse_pre("multiport", &TABLE, opt, invert, ctx)?;
    let proto = check_proto(ctx.ip)?;
    mp.ports = parse_ports(arg.unwrap_or(""), proto)?;
    mp.dir = match e.id {
        O_SOURCE => MultiportDir::Source,
        O_DEST => MultiportDir::Destination,
        _ => MultiportDir::Either,
    };
    mp.invert = invert;
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    if xtopt::seen_ids(&TABLE, ctx) == 0 {
        return Err(param("multiport expection an option"));
    }
    xtopt::fcheck("multiport", &TABLE, ctx)
}

fn dir_word(d: MultiportDir) -> &'static str {
    match d {
        MultiportDir::Source => "sports",
        MultiportDir::Destination => "dports",
        MultiportDir::Either => "ports",
    }
}

fn ports_text(mp: &MultiportMatch, port: impl Fn(u16) -> String) -> String {
    let items: Vec<String> = mp
        .ports
        .iter()
        .map(|r| if r.lo == r.hi { port(r.lo) } else { format!("{}:{}", port(r.lo), port(r.hi)) })
        .collect();
    items.join(",")
}

fn save(m: &Match, out: &mut String) {
    let Match::Multiport(mp) = m else { return };
    if mp.invert {
        out.push_str(" !");
    }
    out.push_str(&format!(" --{} {}", dir_word(mp.dir), ports_text(mp, |p| p.to_string())));
}

/// `-L` text; service names need the rule's protocol, so this is `list_ip`, and `list` (no
/// rule context) prints numbers.
fn list_with(mp: &MultiportMatch, proto: Option<&str>, numeric: bool, out: &mut String) {
    out.push_str(&format!(" multiport {} ", dir_word(mp.dir)));
    if mp.invert {
        out.push_str(" !");
    }
    let text = match proto {
        Some(proto) if !numeric => ports_text(mp, |p| fmt_port_list(p, proto, false)),
        _ => ports_text(mp, |p| p.to_string()),
    };
    out.push_str(&text);
}

fn list(m: &Match, numeric: bool, out: &mut String) {
    let Match::Multiport(mp) = m else { return };
    list_with(mp, None, numeric, out);
}

pub fn list_ip(m: &Match, ip: &IpHeader, numeric: bool, out: &mut String) {
    let Match::Multiport(mp) = m else { return };
    list_with(mp, ip.proto.and_then(|p| proto_name(p.value)), numeric, out);
}

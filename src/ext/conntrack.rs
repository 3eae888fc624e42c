//! `-m conntrack` (libxt_conntrack revision 3) and the state-list helpers `-m state` shares.
//! Addresses are kept as given (iptables does not mask them; the kernel masks when matching),
//! so `Ipv4Mask::addr` may have bits outside `mask` here.

use super::util::{addr_to_anyname, fmt_ipv4, fmt_mask_list, getaddrinfo_v4, parse_port_range_rc, parse_protocol, prefix_to_mask, strtoul};
use super::xtopt::{self, parse_uint_range, XtOpt, INVERT};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{ct_state, ct_status, ConntrackMatch, CtDir, Inv, Ipv4Mask, Match, PortRange};

const O_CTSTATE: u8 = 0;
const O_CTPROTO: u8 = 1;
const O_CTORIGSRC: u8 = 2;
const O_CTORIGDST: u8 = 3;
const O_CTREPLSRC: u8 = 4;
const O_CTREPLDST: u8 = 5;
const O_CTORIGSRCPORT: u8 = 6;
const O_CTORIGDSTPORT: u8 = 7;
const O_CTREPLSRCPORT: u8 = 8;
const O_CTREPLDSTPORT: u8 = 9;
const O_CTSTATUS: u8 = 10;
const O_CTEXPIRE: u8 = 11;
const O_CTDIR: u8 = 12;

const TABLE: [XtOpt; 13] = [
    XtOpt::new("ctstate", O_CTSTATE, Arg::Required, INVERT),
    XtOpt::new("ctproto", O_CTPROTO, Arg::Required, INVERT),
    XtOpt::new("ctorigsrc", O_CTORIGSRC, Arg::Required, INVERT),
    XtOpt::new("ctorigdst", O_CTORIGDST, Arg::Required, INVERT),
    XtOpt::new("ctreplsrc", O_CTREPLSRC, Arg::Required, INVERT),
    XtOpt::new("ctrepldst", O_CTREPLDST, Arg::Required, INVERT),
    XtOpt::new("ctstatus", O_CTSTATUS, Arg::Required, INVERT),
    XtOpt::new("ctexpire", O_CTEXPIRE, Arg::Required, INVERT),
    XtOpt::new("ctorigsrcport", O_CTORIGSRCPORT, Arg::Required, INVERT),
    XtOpt::new("ctorigdstport", O_CTORIGDSTPORT, Arg::Required, INVERT),
    XtOpt::new("ctreplsrcport", O_CTREPLSRCPORT, Arg::Required, INVERT),
    XtOpt::new("ctrepldstport", O_CTREPLDSTPORT, Arg::Required, INVERT),
    XtOpt::new("ctdir", O_CTDIR, Arg::Required, 0),
];
static OPTIONS: [Opt; 13] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "conntrack",
    options: &OPTIONS,
    new: || Match::Conntrack(ConntrackMatch::default()),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

/// `--ctstate` names in the order iptables tries them (a name may be abbreviated: the first
/// name the word is a case-insensitive prefix of wins).
pub const CT_STATES: &[(&str, u16)] = &[
    ("INVALID", ct_state::INVALID),
    ("NEW", ct_state::NEW),
    ("RELATED", ct_state::RELATED),
    ("ESTABLISHED", ct_state::ESTABLISHED),
    ("UNTRACKED", ct_state::UNTRACKED),
    ("SNAT", ct_state::SNAT),
    ("DNAT", ct_state::DNAT),
];

const CT_STATUSES: &[(&str, u16)] = &[
    ("NONE", ct_status::NONE),
    ("EXPECTED", ct_status::EXPECTED),
    ("SEEN_REPLY", ct_status::SEEN_REPLY),
    ("ASSURED", ct_status::ASSURED),
    ("CONFIRMED", ct_status::CONFIRMED),
];

/// `strncasecmp(word, name, len(word)) == 0` with a non-empty word.
fn abbrev_of(word: &str, name: &str) -> bool {
    !word.is_empty() && word.len() <= name.len() && name.as_bytes()[..word.len()].eq_ignore_ascii_case(word.as_bytes())
}

/// `conntrack_ps_states`-style list parsing: comma-separated (abbreviated) names from `names`;
/// the error names the rest of the list from the bad item on, as iptables does.
pub fn parse_name_list(arg: &str, names: &[(&str, u16)], what: &str) -> Result<u16> {
    let mut mask = 0;
    let mut rest = arg;
    loop {
        let (item, next) = match rest.find(',') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let bit = names
            .iter()
            .find(|(n, _)| abbrev_of(item, n))
            .map(|(_, b)| *b)
            .ok_or_else(|| param(format!("Bad {what} \"{rest}\"")))?;
        mask |= bit;
        match next {
            Some(n) => rest = n,
            None => return Ok(mask),
        }
    }
}

/// Names of the set bits, in `names` order, joined by `,`.
pub fn name_list(mask: u16, names: &[(&str, u16)]) -> String {
    names.iter().filter(|(_, b)| *b != 0 && mask & b != 0).map(|(n, _)| *n).collect::<Vec<_>>().join(",")
}

/// `XTTYPE_HOSTMASK`: a host (`getaddrinfo`, one address only) and an optional `/len` or
/// `/dotted` mask; a mask that is not a prefix leaves all ones, as libxtables 1.8.9 does.
fn parse_hostmask(arg: &str, opt: &str) -> Result<Ipv4Mask> {
    let (host, mask) = match arg.split_once('/') {
        Some((h, m)) => (h, Some(m)),
        None => (arg, None),
    };
    let addrs = getaddrinfo_v4(host).map_err(|e| param(format!("getaddrinfo: {e}\n")))?;
    let Some(&addr) = addrs.first() else { return Err(param("getaddrinfo: Name or service not known\n")) };
    if addrs.iter().any(|a| *a != addr) {
        return Err(param(format!("{host} resolves to more than one address\n")));
    }
    let mask = match mask {
        None => u32::MAX,
        Some(m) => match strtoul(m, 0, 32) {
            Some(bits) => prefix_to_mask(bits as u8),
            None => match getaddrinfo_v4(m).ok().and_then(|v| v.first().copied()).filter(|_| is_numeric_host(m)) {
                Some(dotted) if (Ipv4Mask { addr: 0, mask: dotted }).prefix_len().is_some() => dotted,
                Some(_) => u32::MAX,
                None => {
                    return Err(param(format!(
                        "conntrack: bad value for option \"--{opt}\", neither a valid network mask nor valid CIDR (0-32).\n"
                    )))
                }
            },
        },
    };
    Ok(Ipv4Mask { addr, mask })
}

/// What `AI_NUMERICHOST` accepts for IPv4: digits, dots and `inet_aton`'s hex/octal forms.
fn is_numeric_host(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit() || c == b'.' || c == b'x' || c == b'X')
}

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Conntrack(c) = m else { unreachable!("conntrack parse on a conntrack match") };
    let e = xtopt::parse_pre("conntrack", &TABLE, opt, invert, ctx)?;
    let arg = arg.unwrap_or("");
    let port = || parse_port_range_rc(arg, "conntrack", e.name).map(|r| Some(Inv::new(r, invert)));
    let addr = || parse_hostmask(arg, e.name).map(|a| Some(Inv::new(a, invert)));
    match e.id {
        O_CTSTATE => c.state = Some(Inv::new(parse_name_list(arg, CT_STATES, "ctstate")?, invert)),
        O_CTPROTO => c.proto = Some(Inv::new(parse_protocol(arg)?, invert)),
        O_CTORIGSRC => c.orig_src = addr()?,
        O_CTORIGDST => c.orig_dst = addr()?,
        O_CTREPLSRC => c.repl_src = addr()?,
        O_CTREPLDST => c.repl_dst = addr()?,
        O_CTORIGSRCPORT => c.orig_src_port = port()?,
        O_CTORIGDSTPORT => c.orig_dst_port = port()?,
        O_CTREPLSRCPORT => c.repl_src_port = port()?,
        O_CTREPLDSTPORT => c.repl_dst_port = port()?,
        O_CTSTATUS => c.status = Some(Inv::new(parse_name_list(arg, CT_STATUSES, "ctstatus")?, invert)),
        O_CTEXPIRE => {
            let (lo, hi) = parse_uint_range("conntrack", e.name, arg, u64::from(u32::MAX))?;
            c.expire = Some(Inv::new((lo as u32, hi as u32), invert));
        }
        _ => {
            c.dir = Some(if arg.eq_ignore_ascii_case("ORIGINAL") {
                CtDir::Original
            } else if arg.eq_ignore_ascii_case("REPLY") {
                CtDir::Reply
            } else {
                return Err(param(format!("conntrack: Bad value for \"--ctdir\" option: \"{arg}\"")));
            })
        }
    }
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    if xtopt::seen_ids(&TABLE, ctx) == 0 {
        return Err(param("conntrack: At least one option is required"));
    }
    xtopt::fcheck("conntrack", &TABLE, ctx)
}

/// `conntrack_dump` shared by save (`prefix` `--`, numeric) and list (no prefix).
fn dump(c: &ConntrackMatch, prefix: &str, numeric: bool, out: &mut String) {
    let inv = |i: bool| if i { " !" } else { "" };
    let key = |out: &mut String, i: bool, k: &str| out.push_str(&format!("{} {prefix}{k}", inv(i)));
    if let Some(s) = &c.state {
        key(out, s.invert, "ctstate");
        out.push_str(&format!(" {}", name_list(s.value, CT_STATES)));
    }
    if let Some(p) = &c.proto {
        key(out, p.invert, "ctproto");
        out.push_str(&format!(" {}", p.value));
    }
    for (a, k) in [(&c.orig_src, "ctorigsrc"), (&c.orig_dst, "ctorigdst"), (&c.repl_src, "ctreplsrc"), (&c.repl_dst, "ctrepldst")] {
        if let Some(a) = a {
            key(out, a.invert, k);
            if !numeric && a.value.addr == 0 {
                out.push_str(" anywhere");
            } else {
                let host = if numeric { fmt_ipv4(a.value.addr) } else { addr_to_anyname(a.value.addr) };
                out.push_str(&format!(" {host}{}", fmt_mask_list(a.value.mask)));
            }
        }
    }
    let ports = |r: &PortRange| if r.lo == r.hi { r.lo.to_string() } else { format!("{}:{}", r.lo, r.hi) };
    for (p, k) in [
        (&c.orig_src_port, "ctorigsrcport"),
        (&c.orig_dst_port, "ctorigdstport"),
        (&c.repl_src_port, "ctreplsrcport"),
        (&c.repl_dst_port, "ctrepldstport"),
    ] {
        if let Some(p) = p {
            key(out, p.invert, k);
            out.push_str(&format!(" {}", ports(&p.value)));
        }
    }
    if let Some(s) = &c.status {
        key(out, s.invert, "ctstatus");
        let names = name_list(s.value, CT_STATUSES);
        out.push_str(&format!(" {}", if names.is_empty() { "NONE" } else { &names }));
    }
    if let Some(e) = &c.expire {
        key(out, e.invert, "ctexpire");
        let (lo, hi) = e.value;
        out.push_str(&if lo == hi { format!(" {lo}") } else { format!(" {lo}:{hi}") });
    }
    if let Some(d) = &c.dir {
        key(out, false, "ctdir");
        out.push_str(match d {
            CtDir::Original => " ORIGINAL",
            CtDir::Reply => " REPLY",
        });
    }
}

fn save(m: &Match, out: &mut String) {
    let Match::Conntrack(c) = m else { return };
    dump(c, "--", true, out);
}

fn list(m: &Match, numeric: bool, out: &mut String) {
    let Match::Conntrack(c) = m else { return };
    dump(c, "", numeric, out);
}

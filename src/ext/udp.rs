//! `-m udp` (libxt_udp): `--sport/--dport` as `XTTYPE_PORTRC` (any-protocol service names,
//! numbers truncated to 16 bits, `hi < lo` accepted, as iptables 1.8.9 does).

use super::util::{list_ports, parse_port_range_rc, save_ports};
use super::xtopt::{self, kernel_einval, XtOpt, INVERT};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::Result;
use crate::model::{Inv, Match, PortRange, UdpMatch};

const O_SPORT: u8 = 0;
const O_DPORT: u8 = 1;

const TABLE: [XtOpt; 4] = [
    XtOpt::new("source-port", O_SPORT, Arg::Required, INVERT),
    XtOpt::new("sport", O_SPORT, Arg::Required, INVERT),
    XtOpt::new("destination-port", O_DPORT, Arg::Required, INVERT),
    XtOpt::new("dport", O_DPORT, Arg::Required, INVERT),
];
static OPTIONS: [Opt; 4] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "udp",
    options: &OPTIONS,
    new: || Match::Udp(UdpMatch::default()),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Udp(u) = m else { unreachable!("udp parse on a udp match") };
    let e = xtopt::parse_pre("udp", &TABLE, opt, invert, ctx)?;
    let r = parse_port_range_rc(arg.unwrap_or(""), "udp", e.name)?;
    let v = (r != PortRange::ALL || invert).then_some(Inv::new(r, invert));
    if e.id == O_SPORT {
        u.sport = v;
    } else {
        u.dport = v;
    }
    Ok(())
}

/// The kernel accepts `-m udp` only for `-p udp` (not inverted).
fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    match ctx.ip.proto {
        Some(Inv { value: 17, invert: false }) => Ok(()),
        _ => Err(kernel_einval()),
    }
}

fn save(m: &Match, out: &mut String) {
    let Match::Udp(u) = m else { return };
    save_ports(out, "sport", u.sport.as_ref());
    save_ports(out, "dport", u.dport.as_ref());
}

fn list(m: &Match, numeric: bool, out: &mut String) {
    let Match::Udp(u) = m else { return };
    out.push_str(" udp");
    list_ports(out, "spt", u.sport.as_ref(), "udp", numeric);
    list_ports(out, "dpt", u.dport.as_ref(), "udp", numeric);
}

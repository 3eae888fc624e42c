//! `-m mac [!] --mac-source XX:XX:XX:XX:XX:XX` (libxt_mac); the kernel allows it only where a
//! source MAC exists (PREROUTING, INPUT, FORWARD).

use super::util::strtoumax;
use super::xtopt::{self, kernel_einval, XtOpt, INVERT, MAND};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{MacMatch, Match};

const TABLE: [XtOpt; 1] = [XtOpt::new("mac-source", 0, Arg::Required, MAND | INVERT)];
static OPTIONS: [Opt; 1] = xtopt::opts(TABLE);

pub static DEF: MatchDef = MatchDef {
    name: "mac",
    options: &OPTIONS,
    new: || Match::Mac(MacMatch { addr: [0; 6], invert: false }),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

/// `xtopt_parse_ethermac`: six hex bytes of at most two digits, `:`-separated.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut addr = [0u8; 6];
    let mut rest = s;
    for (i, byte) in addr.iter_mut().enumerate() {
        let (v, after) = strtoumax(rest, 16)?;
        if rest.len() - after.len() > 2 {
            return None;
        }
        *byte = v as u8;
        rest = match (i, after.strip_prefix(':')) {
            (5, _) if after.is_empty() => after,
            (0..=4, Some(r)) => r,
            _ => return None,
        };
    }
    Some(addr)
}

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Mac(k) = m else { unreachable!("mac parse on a mac match") };
    xtopt::parse_pre("mac", &TABLE, opt, invert, ctx)?;
    let addr = parse_mac(arg.unwrap_or("")).ok_or_else(|| param("Invalid MAC address specified."))?;
    *k = MacMatch { addr, invert };
    Ok(())
}

fn check(_m: &Match, ctx: &ParseCtx) -> Result<()> {
    xtopt::fcheck("mac", &TABLE, ctx)?;
    if matches!(ctx.chain, "OUTPUT" | "POSTROUTING") {
        return Err(kernel_einval());
    }
    Ok(())
}

fn mac_text(a: &[u8; 6]) -> String {
    a.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn save(m: &Match, out: &mut String) {
    let Match::Mac(k) = m else { return };
    out.push_str(&format!("{} --mac-source {}", if k.invert { " !" } else { "" }, mac_text(&k.addr)));
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::Mac(k) = m else { return };
    out.push_str(&format!(" MAC{} {}", if k.invert { " !" } else { "" }, mac_text(&k.addr)));
}

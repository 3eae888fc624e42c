//! `-m limit --limit N[/unit] --limit-burst N` (libxt_limit): the average is stored as
//! `XT_LIMIT_SCALE` × seconds per packet; the default is 3/hour with burst 5.

use super::xtopt::{self, parse_uint, XtOpt};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Error, Result};
use crate::model::{LimitMatch, Match};

const O_LIMIT: u8 = 0;
const O_BURST: u8 = 1;

const TABLE: [XtOpt; 2] = [
    XtOpt::new("limit", O_LIMIT, Arg::Required, 0),
    XtOpt::new("limit-burst", O_BURST, Arg::Required, 0),
];
static OPTIONS: [Opt; 2] = xtopt::opts(TABLE);

/// `XT_LIMIT_BURST`.
const DEFAULT_BURST: u32 = 5;
/// `XT_LIMIT_AVG`: 3 per hour.
const DEFAULT_AVG: u32 = LimitMatch::SCALE * 60 * 60 / 3;

pub static DEF: MatchDef = MatchDef {
    name: "limit",
    options: &OPTIONS,
    new: || Match::Limit(LimitMatch { avg: DEFAULT_AVG, burst: DEFAULT_BURST }),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

/// Units `print_rate` picks from, largest first, in seconds.
const RATES: [(&str, u32); 4] = [("day", 24 * 60 * 60), ("hour", 60 * 60), ("min", 60), ("sec", 1)];

/// C `atoi`: optional white space and sign, then digits; 0 when there are none.
fn atoi(s: &str) -> i64 {
    let s = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let n = digits.bytes().take_while(u8::is_ascii_digit).fold(0i64, |acc, d| {
        acc.wrapping_mul(10).wrapping_add(i64::from(d - b'0'))
    });
    if neg {
        -n
    } else {
        n
    }
}

/// `parse_rate`: `N[/second|minute|hour|day]` (the unit may be abbreviated).
fn parse_rate(rate: &str) -> Result<u32> {
    let bad = || param(format!("bad rate \"{rate}\"'"));
    let mult: u32 = match rate.split_once('/') {
        None => 1,
        Some((_, unit)) => {
            let abbrev = |full: &str| !unit.is_empty() && full.len() >= unit.len() && full.as_bytes()[..unit.len()].eq_ignore_ascii_case(unit.as_bytes());
            if unit.is_empty() {
                return Err(bad());
            } else if abbrev("second") {
                1
            } else if abbrev("minute") {
                60
            } else if abbrev("hour") {
                60 * 60
            } else if abbrev("day") {
                24 * 60 * 60
            } else {
                return Err(bad());
            }
        }
    };
    let r = atoi(rate) as u32;
    if r == 0 {
        return Err(bad());
    }
    let avg = LimitMatch::SCALE * mult / r;
    if avg == 0 {
        return Err(param(format!("Rate too fast \"{rate}\"")));
    }
    Ok(avg)
}

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Limit(l) = m else { unreachable!("limit parse on a limit match") };
    let e = xtopt::parse_pre("limit", &TABLE, opt, invert, ctx)?;
    let arg = arg.unwrap_or("");
    if e.id == O_LIMIT {
        l.avg = parse_rate(arg)?;
    } else {
        l.burst = parse_uint("limit", "limit-burst", arg, 0, 10000)? as u32;
    }
    Ok(())
}

/// xt_limit's `user2credits` with this kernel's HZ × CREDITS_PER_JIFFY (250 × 128; 1000 × 32
/// gives the same), in u32 arithmetic like the kernel.
fn user2credits(user: u32) -> u32 {
    const HZ_CPJ: u32 = 32000;
    if user > u32::MAX / HZ_CPJ {
        (user / LimitMatch::SCALE).wrapping_mul(HZ_CPJ)
    } else {
        user * HZ_CPJ / LimitMatch::SCALE
    }
}

/// The kernel refuses a zero burst or an avg × burst that overflows its credit counter.
fn check(m: &Match, ctx: &ParseCtx) -> Result<()> {
    xtopt::fcheck("limit", &TABLE, ctx)?;
    let Match::Limit(l) = m else { return Ok(()) };
    if l.burst == 0 || user2credits(l.avg.wrapping_mul(l.burst)) < user2credits(l.avg) {
        return Err(Error::State("Numerical result out of range.".into()));
    }
    Ok(())
}

/// `print_rate`: the largest unit that still gives an exact-enough integer count.
fn rate_text(period: u32) -> String {
    if period == 0 {
        return "inf".to_string();
    }
    let scaled = |secs: u32| LimitMatch::SCALE * secs;
    let mut i = 1;
    while i < RATES.len() {
        let mult = scaled(RATES[i].1);
        if period > mult || mult / period < mult % period {
            break;
        }
        i += 1;
    }
    format!("{}/{}", scaled(RATES[i - 1].1) / period, RATES[i - 1].0)
}

fn save(m: &Match, out: &mut String) {
    let Match::Limit(l) = m else { return };
    out.push_str(&format!(" --limit {}", rate_text(l.avg)));
    if l.burst != DEFAULT_BURST {
        out.push_str(&format!(" --limit-burst {}", l.burst));
    }
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::Limit(l) = m else { return };
    out.push_str(&format!(" limit: avg {} burst {}", rate_text(l.avg), l.burst));
}

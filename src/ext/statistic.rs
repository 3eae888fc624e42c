//! `-m statistic` (libxt_statistic): `--mode random [!] --probability P` or
//! `--mode nth [!] --every N [--packet P]`. As in `xt_statistic_info`, the probability and
//! `every - 1` share one slot, so options given before `--mode` are carried over.

use super::xtopt::{self, parse_uint, XtOpt, INVERT, MAND};
use super::{Arg, MatchDef, Opt, ParseCtx};
use crate::error::{param, Result};
use crate::model::{Match, StatisticMatch, StatisticMode};

const O_MODE: u8 = 0;
const O_PROBABILITY: u8 = 1;
const O_EVERY: u8 = 2;
const O_PACKET: u8 = 3;

const TABLE: [XtOpt; 4] = [
    XtOpt::new("mode", O_MODE, Arg::Required, MAND),
    XtOpt::new("probability", O_PROBABILITY, Arg::Required, INVERT).excl(1 << O_EVERY | 1 << O_PACKET),
    XtOpt::new("every", O_EVERY, Arg::Required, INVERT).excl(1 << O_PROBABILITY).also(1 << O_PACKET),
    XtOpt::new("packet", O_PACKET, Arg::Required, 0).excl(1 << O_PROBABILITY).also(1 << O_EVERY),
];
static OPTIONS: [Opt; 4] = xtopt::opts(TABLE);

/// 1.0 as iptables stores a probability.
const ONE: f64 = 2147483648.0;

pub static DEF: MatchDef = MatchDef {
    name: "statistic",
    options: &OPTIONS,
    // Until `--mode` (mandatory) says otherwise, keep both slots like the C union does.
    new: || Match::Statistic(StatisticMatch { mode: StatisticMode::Nth { every: 0, packet: 0 }, invert: false }),
    parse,
    check,
    save,
    list,
    list_ip: None,
};

/// (shared slot, packet) of the current value.
fn slots(mode: &StatisticMode) -> (u32, u32) {
    match *mode {
        StatisticMode::Random { probability } => (probability, 0),
        StatisticMode::Nth { every, packet } => (every, packet),
    }
}

/// Whether `--mode` has chosen random (checks need the mode, which the value alone can't tell
/// before `--mode`; it is mandatory, so checks run only once it is known).
fn is_random(mode: &StatisticMode) -> bool {
    matches!(mode, StatisticMode::Random { .. })
}

fn parse(m: &mut Match, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Match::Statistic(s) = m else { unreachable!("statistic parse on a statistic match") };
    let e = xtopt::parse_pre("statistic", &TABLE, opt, invert, ctx)?;
    if invert {
        s.invert = true;
    }
    let arg = arg.unwrap_or("");
    let (slot, packet) = slots(&s.mode);
    let random = is_random(&s.mode);
    let with = |slot: u32, packet: u32| {
        if random {
            StatisticMode::Random { probability: slot }
        } else {
            StatisticMode::Nth { every: slot, packet }
        }
    };
    s.mode = match e.id {
        O_MODE => match arg {
            "random" => StatisticMode::Random { probability: slot },
            "nth" => StatisticMode::Nth { every: slot, packet },
            _ => return Err(param(format!("Bad mode \"{arg}\""))),
        },
        O_PROBABILITY => {
            let p = parse_probability(arg)?;
            with((ONE * p).round() as u32, packet)
        }
        O_EVERY => {
            let n = parse_uint("statistic", "every", arg, 1, u64::from(u32::MAX))? as u32;
            with(n - 1, packet)
        }
        _ => with(slot, parse_uint("statistic", "packet", arg, 0, u64::from(u32::MAX))? as u32),
    };
    Ok(())
}

/// `xtopt_parse_float` with range 0-1.
fn parse_probability(arg: &str) -> Result<f64> {
    let bad = || param("statistic: bad value for option \"--probability\", or out of range (0-1).\n");
    let v: f64 = arg.trim_start().parse().map_err(|_| bad())?;
    if !(0.0..=1.0).contains(&v) {
        return Err(bad());
    }
    Ok(v)
}

fn check(m: &Match, ctx: &ParseCtx) -> Result<()> {
    let Match::Statistic(s) = m else { return Ok(()) };
    let seen = xtopt::seen_ids(&TABLE, ctx);
    // Without --mode the kernel struct says random (0); the mandatory check comes after.
    let random = is_random(&s.mode) || seen & (1 << O_MODE) == 0;
    if random && seen & (1 << O_PROBABILITY) == 0 {
        return Err(param("--probability must be specified when using random mode"));
    }
    if !random && seen & (1 << O_EVERY | 1 << O_PACKET) == 0 {
        return Err(param("--every and --packet must be specified when using nth mode"));
    }
    let (every, packet) = slots(&s.mode);
    if !random && packet > every {
        return Err(param("the --packet p must be 0 <= p <= n-1"));
    }
    xtopt::fcheck("statistic", &TABLE, ctx)
}

/// `print_match` with `prefix` `--` (save) or empty (list).
fn print(s: &StatisticMatch, prefix: &str, out: &mut String) {
    let inv = if s.invert { " !" } else { "" };
    match s.mode {
        StatisticMode::Random { probability } => out.push_str(&format!(
            " {prefix}mode random{inv} {prefix}probability {:.11}",
            f64::from(probability) / ONE
        )),
        StatisticMode::Nth { every, packet } => {
            out.push_str(&format!(" {prefix}mode nth{inv} {prefix}every {}", u64::from(every) + 1));
            if packet != 0 || !prefix.is_empty() {
                out.push_str(&format!(" {prefix}packet {packet}"));
            }
        }
    }
}

fn save(m: &Match, out: &mut String) {
    let Match::Statistic(s) = m else { return };
    print(s, "--", out);
}

fn list(m: &Match, _numeric: bool, out: &mut String) {
    let Match::Statistic(s) = m else { return };
    out.push_str(" statistic");
    print(s, "", out);
}

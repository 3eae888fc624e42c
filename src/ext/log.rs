//! `-j LOG` (libxt_LOG): `--log-level` (0-7 or syslog names), `--log-prefix` (1 to 29
//! characters, longer is cut), and the flag options.

use super::util::strtoul;
use super::xtopt::{self, XtOpt};
use super::{Arg, Opt, ParseCtx, TargetDef};
use crate::error::{param, Result};
use crate::model::{log_flags, LogTarget, Target};

// Ids of the flag options are their bit numbers in `logflags`, as in libxt_LOG.
const O_TCPSEQ: u8 = 0;
const O_TCPOPTS: u8 = 1;
const O_IPOPTS: u8 = 2;
const O_UID: u8 = 3;
const O_MAC: u8 = 5;
const O_LEVEL: u8 = 6;
const O_PREFIX: u8 = 7;

const TABLE: [XtOpt; 7] = [
    XtOpt::new("log-level", O_LEVEL, Arg::Required, 0),
    XtOpt::new("log-prefix", O_PREFIX, Arg::Required, 0),
    XtOpt::new("log-tcp-sequence", O_TCPSEQ, Arg::None, 0),
    XtOpt::new("log-tcp-options", O_TCPOPTS, Arg::None, 0),
    XtOpt::new("log-ip-options", O_IPOPTS, Arg::None, 0),
    XtOpt::new("log-uid", O_UID, Arg::None, 0),
    XtOpt::new("log-macdecode", O_MAC, Arg::None, 0),
];
static OPTIONS: [Opt; 7] = xtopt::opts(TABLE);

/// Room in `xt_log_info.prefix` (30 bytes with the NUL).
const PREFIX_MAX: usize = 29;

pub static DEF: TargetDef = TargetDef {
    name: "LOG",
    options: &OPTIONS,
    new: || Target::Log(LogTarget::default()),
    parse,
    check,
    save,
    list,
};

/// Names `--log-level` accepts (`xtopt_parse_sysloglevel`).
const LEVEL_NAMES: &[(&str, u8)] = &[
    ("alert", 1),
    ("crit", 2),
    ("debug", 7),
    ("emerg", 0),
    ("error", 3),
    ("info", 6),
    ("notice", 5),
    ("panic", 0),
    ("warning", 4),
];

/// `priority2name` for `-L`.
const PRIORITY_NAMES: [&str; 8] = ["emerg", "alert", "crit", "err", "warn", "notice", "info", "debug"];

fn parse(t: &mut Target, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Target::Log(l) = t else { unreachable!("LOG parse on a LOG target") };
    let e = xtopt::parse_pre("LOG", &TABLE, opt, invert, ctx)?;
    let arg = arg.unwrap_or("");
    match e.id {
        O_LEVEL => {
            l.level = match strtoul(arg, 0, 7) {
                Some(v) => v as u8,
                None => LEVEL_NAMES
                    .iter()
                    .find(|(n, _)| *n == arg)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| param(format!("log level \"{arg}\" unknown\n")))?,
            };
        }
        O_PREFIX => {
            if arg.is_empty() {
                return Err(param("Argument must have a minimum length of 1 characters\n"));
            }
            if arg.contains('\n') {
                return Err(param("Newlines not allowed in --log-prefix"));
            }
            let mut end = arg.len().min(PREFIX_MAX);
            while !arg.is_char_boundary(end) {
                end -= 1;
            }
            l.prefix = arg[..end].to_string();
        }
        id => l.flags |= 1 << id,
    }
    Ok(())
}

fn check(_t: &Target, ctx: &ParseCtx) -> Result<()> {
    xtopt::fcheck("LOG", &TABLE, ctx)
}

const FLAG_WORDS: &[(u8, &str)] = &[
    (log_flags::TCPSEQ, "tcp-sequence"),
    (log_flags::TCPOPT, "tcp-options"),
    (log_flags::IPOPT, "ip-options"),
    (log_flags::UID, "uid"),
    (log_flags::MACDECODE, "macdecode"),
];

fn save(t: &Target, out: &mut String) {
    let Target::Log(l) = t else { return };
    if !l.prefix.is_empty() {
        out.push_str(" --log-prefix");
        xtopt::save_string(&l.prefix, out);
    }
    if l.level != 4 {
        out.push_str(&format!(" --log-level {}", l.level));
    }
    for (f, w) in FLAG_WORDS {
        if l.flags & f != 0 {
            out.push_str(&format!(" --log-{w}"));
        }
    }
}

fn list(t: &Target, numeric: bool, out: &mut String) {
    let Target::Log(l) = t else { return };
    out.push_str(" LOG");
    if numeric {
        out.push_str(&format!(" flags {} level {}", l.flags, l.level));
    } else {
        match PRIORITY_NAMES.get(usize::from(l.level)) {
            Some(n) => out.push_str(&format!(" level {n}")),
            None => out.push_str(&format!(" UNKNOWN level {}", l.level)),
        }
        for (f, w) in FLAG_WORDS {
            if l.flags & f != 0 {
                out.push_str(&format!(" {w}"));
            }
        }
    }
    if !l.prefix.is_empty() {
        out.push_str(&format!(" prefix \"{}\"", l.prefix));
    }
}

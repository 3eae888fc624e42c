//! `-j REJECT` (libipt_REJECT): `--reject-with TYPE`, any unambiguous-by-order prefix of a
//! name or alias (case-insensitive), default `icmp-port-unreachable`; save always prints it.

use super::xtopt::{self, kernel_einval, XtOpt};
use super::{Arg, Opt, ParseCtx, TargetDef};
use crate::error::{param, Result};
use crate::model::{Inv, RejectWith, Target};

const TABLE: [XtOpt; 1] = [XtOpt::new("reject-with", 0, Arg::Required, 0)];
static OPTIONS: [Opt; 1] = xtopt::opts(TABLE);

pub static DEF: TargetDef = TargetDef {
    name: "REJECT",
    options: &OPTIONS,
    new: || Target::Reject(RejectWith::IcmpPortUnreachable),
    parse,
    check,
    save,
    list,
};

/// `reject_table` in `enum ipt_reject_with` order (echo-reply has no entry).
const NAMES: &[(&str, &str, RejectWith)] = &[
    ("icmp-net-unreachable", "net-unreach", RejectWith::IcmpNetUnreachable),
    ("icmp-host-unreachable", "host-unreach", RejectWith::IcmpHostUnreachable),
    ("icmp-proto-unreachable", "proto-unreach", RejectWith::IcmpProtUnreachable),
    ("icmp-port-unreachable", "port-unreach", RejectWith::IcmpPortUnreachable),
    ("icmp-net-prohibited", "net-prohib", RejectWith::IcmpNetProhibited),
    ("icmp-host-prohibited", "host-prohib", RejectWith::IcmpHostProhibited),
    ("tcp-reset", "tcp-rst", RejectWith::TcpReset),
    ("icmp-admin-prohibited", "admin-prohib", RejectWith::IcmpAdminProhibited),
];

/// `strncasecmp(name, arg, strlen(arg)) == 0`: `arg` is a case-insensitive prefix of `name`.
fn is_prefix(name: &str, arg: &str) -> bool {
    name.len() >= arg.len() && name.as_bytes()[..arg.len()].eq_ignore_ascii_case(arg.as_bytes())
}

fn parse(t: &mut Target, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Target::Reject(w) = t else { unreachable!("REJECT parse on a REJECT target") };
    xtopt::parse_pre("REJECT", &TABLE, opt, invert, ctx)?;
    let arg = arg.unwrap_or("");
    if let Some((_, _, with)) = NAMES.iter().find(|(n, a, _)| is_prefix(n, arg) || is_prefix(a, arg)) {
        *w = *with;
        return Ok(());
    }
    if is_prefix("echo-reply", arg) || is_prefix("echoreply", arg) {
        eprintln!("--reject-with echo-reply no longer supported");
    }
    Err(param(format!("unknown reject type \"{arg}\"")))
}

/// The kernel sends TCP resets only for `-p tcp` rules.
fn check(t: &Target, ctx: &ParseCtx) -> Result<()> {
    match (t, ctx.ip.proto) {
        (Target::Reject(RejectWith::TcpReset), p) if p != Some(Inv::new(6, false)) => Err(kernel_einval()),
        _ => Ok(()),
    }
}

fn save(t: &Target, out: &mut String) {
    let Target::Reject(w) = t else { return };
    out.push_str(" --reject-with ");
    out.push_str(w.name());
}

fn list(t: &Target, _numeric: bool, out: &mut String) {
    let Target::Reject(w) = t else { return };
    out.push_str(" reject-with ");
    out.push_str(w.name());
}

//! libxtables' generic option rules (`struct xt_option_entry` and `xtables_option_parse` /
//! `xtables_options_fcheck`): each extension lists its options once with an id and flags, and the
//! "can only be used once", "cannot be inverted", "must be specified", "also requires" and
//! "cannot be used together" errors come from here with iptables' exact text.

use super::{Arg, Opt, ParseCtx};
use crate::error::{param, Result};

/// The option may be given with `!`.
pub const INVERT: u8 = 1 << 0;
/// The option is mandatory.
pub const MAND: u8 = 1 << 1;
/// The option may be given more than once.
pub const MULTI: u8 = 1 << 2;

/// One option of an extension: its name, the id options with the same meaning share (aliases
/// such as `--sport`/`--source-port`), flags, and bit masks of ids it excludes or requires.
#[derive(Debug, Clone, Copy)]
pub struct XtOpt {
    pub name: &'static str,
    pub id: u8,
    pub arg: Arg,
    pub flags: u8,
    pub excl: u32,
    pub also: u32,
}

impl XtOpt {
    pub const fn new(name: &'static str, id: u8, arg: Arg, flags: u8) -> Self {
        XtOpt { name, id, arg, flags, excl: 0, also: 0 }
    }

    pub const fn excl(mut self, mask: u32) -> Self {
        self.excl = mask;
        self
    }

    pub const fn also(mut self, mask: u32) -> Self {
        self.also = mask;
        self
    }
}

/// The `Opt` list the walker sees, derived from the table at compile time.
pub const fn opts<const N: usize>(table: [XtOpt; N]) -> [Opt; N] {
    let mut out = [Opt { name: "", arg: Arg::None }; N];
    let mut i = 0;
    while i < N {
        out[i] = Opt { name: table[i].name, arg: table[i].arg };
        i += 1;
    }
    out
}

fn entry<'t>(table: &'t [XtOpt], name: &str) -> &'t XtOpt {
    table.iter().find(|e| e.name == name).expect("the walker only passes options from our table")
}

/// Bit set of the ids of the options seen so far (`cb->xflags`).
pub fn seen_ids(table: &[XtOpt], ctx: &ParseCtx) -> u32 {
    ctx.seen.iter().filter_map(|n| table.iter().find(|e| e.name == *n)).fold(0, |acc, e| acc | 1 << e.id)
}

/// Whether an option with this id was given.
pub fn was_seen(table: &[XtOpt], ctx: &ParseCtx, id: u8) -> bool {
    seen_ids(table, ctx) & (1 << id) != 0
}

/// The checks `xtables_option_parse` makes before parsing an option's value; returns the
/// option's entry (whose `id` the extension dispatches on).
pub fn parse_pre<'t>(ext: &str, table: &'t [XtOpt], opt: &str, invert: bool, ctx: &ParseCtx) -> Result<&'t XtOpt> {
    let e = entry(table, opt);
    let eflag = 1u32 << e.id;
    let first = table.iter().find(|x| x.id == e.id).unwrap_or(e);
    if (e.flags & MULTI == 0 || e.excl & eflag != 0) && seen_ids(table, ctx) & eflag != 0 {
        return Err(param(format!("{ext}: option \"--{}\" can only be used once.\n", first.name)));
    }
    if invert && e.flags & INVERT == 0 {
        return Err(param(format!("{ext}: option \"--{}\" cannot be inverted.\n", first.name)));
    }
    Ok(first)
}

/// `xtables_options_fcheck`: mandatory options, then for each given option (in table order)
/// the options it requires or excludes (in id order).
pub fn fcheck(ext: &str, table: &[XtOpt], ctx: &ParseCtx) -> Result<()> {
    let xflags = seen_ids(table, ctx);
    for e in table {
        let ef = 1u32 << e.id;
        if e.flags & MAND != 0 && xflags & ef == 0 {
            return Err(param(format!("{ext}: option \"--{}\" must be specified\n", e.name)));
        }
        if xflags & ef == 0 {
            continue;
        }
        for i in 0..32u8 {
            if i == e.id {
                continue;
            }
            let Some(other) = table.iter().find(|o| o.id == i) else { continue };
            let of = 1u32 << i;
            if e.also & of != 0 && xflags & of == 0 {
                return Err(param(format!("{ext}: option \"--{}\" also requires \"--{}\".\n", e.name, other.name)));
            }
            if e.excl & of != 0 && xflags & (ef | of) == (ef | of) {
                return Err(param(format!(
                    "{ext}: option \"--{}\" cannot be used together with \"--{}\".\n",
                    e.name, other.name
                )));
            }
        }
    }
    Ok(())
}

/// `xtopt_parse_int`: a number in `min..=max` (any base) or iptables' range error.
pub fn parse_uint(ext: &str, opt: &str, arg: &str, min: u64, max: u64) -> Result<u64> {
    super::util::strtoul(arg, min, max).ok_or_else(|| {
        param(format!("{ext}: bad value for option \"--{opt}\", or out of range ({min}-{max}).\n"))
    })
}

/// `xtopt_parse_mint` for two components (`lo[:hi]`, either side optional; a missing `hi` is
/// `max`, a missing `lo` is `min`); a single value gives `lo == hi`.
pub fn parse_uint_range(ext: &str, opt: &str, arg: &str, max: u64) -> Result<(u64, u64)> {
    let mut vals: Vec<u64> = Vec::new();
    let lmin = 0u64;
    let mut rest = arg;
    loop {
        if vals.len() == 2 {
            return Err(param(format!("{ext}: Too many components for option \"--{opt}\" (max: 2)\n")));
        }
        let (value, end) = if rest.is_empty() || rest.starts_with(':') {
            (if vals.len() == 1 { max } else { lmin }, rest)
        } else {
            let (v, end) = super::util::strtoul_prefix(rest, lmin, max).ok_or_else(|| {
                param(format!(
                    "{ext}: bad value for option \"--{opt}\" near \"{rest}\", or out of range ({lmin}-{max}).\n"
                ))
            })?;
            if !end.is_empty() && !end.starts_with(':') {
                return Err(param(format!("{ext}: Argument to \"--{opt}\" has unexpected characters near \"{end}\".\n")));
            }
            (v, end)
        };
        vals.push(value);
        match end.strip_prefix(':') {
            Some(r) => rest = r,
            None => break,
        }
    }
    Ok((vals[0], if vals.len() > 1 { vals[1] } else { vals[0] }))
}

/// `xtables_save_string`: the value as is when it is only `[A-Za-z0-9_-]` (and not empty),
/// else double-quoted with `"`, `\` and `'` backslash-escaped. Writes the leading space.
pub fn save_string(value: &str, out: &mut String) {
    out.push(' ');
    if !value.is_empty() && value.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The kernel's refusal of a rule (`EINVAL` from a match or target check), as iptables reports
/// it.
pub fn kernel_einval() -> crate::error::Error {
    crate::error::Error::State("Invalid argument. Run `dmesg' for more information.".into())
}

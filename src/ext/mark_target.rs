//! `-j MARK` (libxt_MARK revision 2): `--set-xmark v[/m]`, `--set-mark v[/m]`, `--and-mark`,
//! `--or-mark`, `--xor-mark`, all stored as xset value/mask (new mark = (mark & !mask) ^ value).

use super::util::parse_val_mask;
use super::xtopt::{self, parse_uint, XtOpt};
use super::{Arg, Opt, ParseCtx, TargetDef};
use crate::error::{param, Result};
use crate::model::{MarkTarget, Target};

const O_SET_XMARK: u8 = 0;
const O_SET_MARK: u8 = 1;
const O_AND_MARK: u8 = 2;
const O_OR_MARK: u8 = 3;
const O_XOR_MARK: u8 = 4;
const F_ANY: u32 = 0x1F;

const TABLE: [XtOpt; 5] = [
    XtOpt::new("set-xmark", O_SET_XMARK, Arg::Required, 0).excl(F_ANY),
    XtOpt::new("set-mark", O_SET_MARK, Arg::Required, 0).excl(F_ANY),
    XtOpt::new("and-mark", O_AND_MARK, Arg::Required, 0).excl(F_ANY),
    XtOpt::new("or-mark", O_OR_MARK, Arg::Required, 0).excl(F_ANY),
    XtOpt::new("xor-mark", O_XOR_MARK, Arg::Required, 0).excl(F_ANY),
];
static OPTIONS: [Opt; 5] = xtopt::opts(TABLE);

pub static DEF: TargetDef = TargetDef {
    name: "MARK",
    options: &OPTIONS,
    new: || Target::Mark(MarkTarget { value: 0, mask: 0 }),
    parse,
    check,
    save,
    list,
};

fn parse(t: &mut Target, opt: &str, arg: Option<&str>, invert: bool, ctx: &ParseCtx) -> Result<()> {
    let Target::Mark(k) = t else { unreachable!("MARK parse on a MARK target") };
    let e = xtopt::parse_pre("MARK", &TABLE, opt, invert, ctx)?;
    let arg = arg.unwrap_or("");
    let u32_arg = || parse_uint("MARK", e.name, arg, 0, u64::from(u32::MAX)).map(|v| v as u32);
    *k = match e.id {
        O_SET_XMARK => {
            let (value, mask) = parse_val_mask(arg, "MARK", e.name)?;
            MarkTarget { value, mask }
        }
        O_SET_MARK => {
            let (value, mask) = parse_val_mask(arg, "MARK", e.name)?;
            MarkTarget { value, mask: value | mask }
        }
        O_AND_MARK => MarkTarget { value: 0, mask: !u32_arg()? },
        O_OR_MARK => {
            let v = u32_arg()?;
            MarkTarget { value: v, mask: v }
        }
        _ => MarkTarget { value: u32_arg()?, mask: 0 },
    };
    Ok(())
}

fn check(_t: &Target, ctx: &ParseCtx) -> Result<()> {
    if xtopt::seen_ids(&TABLE, ctx) == 0 {
        return Err(param("MARK: One of the --set-xmark, --{and,or,xor,set}-mark options is required"));
    }
    xtopt::fcheck("MARK", &TABLE, ctx)
}

fn save(t: &Target, out: &mut String) {
    let Target::Mark(k) = t else { return };
    out.push_str(&format!(" --set-xmark 0x{:x}/0x{:x}", k.value, k.mask));
}

/// `mark_tg_print`: the simplest operation that has this value/mask.
fn list(t: &Target, _numeric: bool, out: &mut String) {
    let Target::Mark(k) = t else { return };
    let text = if k.value == 0 {
        format!(" MARK and 0x{:x}", !k.mask)
    } else if k.value == k.mask {
        format!(" MARK or 0x{:x}", k.value)
    } else if k.mask == 0 {
        format!(" MARK xor 0x{:x}", k.value)
    } else if k.mask == u32::MAX {
        format!(" MARK set 0x{:x}", k.value)
    } else {
        format!(" MARK xset 0x{:x}/0x{:x}", k.value, k.mask)
    };
    out.push_str(&text);
}

//! Value parsers only the walker needs (interfaces, rule numbers, the `sscanf` forms of `-c`
//! and `-w`), with iptables' exact acceptance rules and messages. Addresses, protocols and
//! plain numbers come from `ext::util`, shared with the extensions.

use crate::error::{param, Result};
use crate::ext::util::strtoul;
use crate::model::Iface;

/// `IFNAMSIZ - 1`.
pub const MAX_IFACE_LEN: usize = 15;

/// `-i`/`-o NAME[+]`; the empty name was refused before (its message depends on the caller).
pub fn parse_iface(arg: &str) -> Result<Iface> {
    if arg.len() > MAX_IFACE_LEN {
        return Err(param(format!("interface name `{arg}' must be shorter than IFNAMSIZ ({MAX_IFACE_LEN})")));
    }
    if arg.contains(['/', ' ']) {
        eprintln!("Warning: weird character in interface `{arg}' ('/' and ' ' are not allowed by the kernel).");
    }
    Ok(match arg.strip_suffix('+') {
        Some(prefix) => Iface { name: prefix.to_string(), wildcard: true },
        None => Iface { name: arg.to_string(), wildcard: false },
    })
}

/// A rule number (`-D chain N`, `-I chain N`, `-L chain N`): 1..=INT_MAX.
pub fn parse_rulenum(s: &str) -> Result<u32> {
    strtoul(s, 1, i32::MAX as u64).map(|n| n as u32).ok_or_else(|| param(format!("Invalid rule number `{s}'")))
}

/// `sscanf("%llu")`: leading space, optional sign, leading digits (the rest is ignored).
pub fn scan_u64(s: &str) -> Option<u64> {
    let t = s.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if end == 0 {
        return None;
    }
    let v = t[..end].parse::<u64>().unwrap_or(u64::MAX);
    Some(if neg { v.wrapping_neg() } else { v })
}

/// `sscanf("%i")`: leading space, sign, `0x`/`0` prefixes, leading digits.
pub fn scan_int(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (t, radix) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (h, 16)
    } else if t.starts_with('0') {
        (t, 8)
    } else {
        (t, 10)
    };
    let end = t.find(|c: char| !c.is_digit(radix)).unwrap_or(t.len());
    if end == 0 {
        return None;
    }
    let v = i64::from_str_radix(&t[..end], radix).unwrap_or(i64::MAX);
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans() {
        assert_eq!(scan_u64("12abc"), Some(12));
        assert_eq!(scan_u64("x"), None);
        assert_eq!(scan_int("0x10"), Some(16));
        assert_eq!(scan_int("5"), Some(5));
        assert_eq!(parse_rulenum("0x2").ok(), Some(2));
        assert!(parse_rulenum("0").is_err());
    }

    #[test]
    fn ifaces() {
        assert_eq!(parse_iface("eth+").ok(), Some(Iface { name: "eth".into(), wildcard: true }));
        assert!(parse_iface("abcdefghijklmnop").is_err());
    }
}

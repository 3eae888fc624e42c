//! Value parsers and printers shared by the extensions and the rule walker (`-s -d -p`), each a
//! transcription of the libxtables routine named in its doc so that what iptables 1.8.9 accepts,
//! rejects (with which message) and prints back is the same here.
//!
//! Name databases (`/etc/services`, `/etc/protocols`, `/etc/networks`) are read directly, once per
//! process, instead of through the non-reentrant `getservbyname` family: this machine's
//! nsswitch uses `files` for all three, so the answers are the same and tests may run in
//! parallel. Host names go through `getaddrinfo`/`getnameinfo` like iptables does.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use crate::error::{param, Result};
use crate::model::{Ipv4Mask, PortRange};

// ---------------------------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------------------------

/// C `strtoumax(s, &end, base)` as glibc does it, with libxtables' extra refusal of a leading
/// `-`: skips leading white space and an optional `+`; base 0 picks hex for `0x`, octal for a
/// leading `0`, decimal otherwise (base 16 also allows the `0x` prefix). Returns the value and
/// the unparsed rest, or `None` when no digit was read, the number is negative, or it overflows
/// 64 bits (`ERANGE`).
pub fn strtoumax(s: &str, base: u32) -> Option<(u64, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
        i += 1;
    }
    match b.get(i) {
        Some(b'-') => return None,
        Some(b'+') => i += 1,
        _ => {}
    }
    let mut base = base;
    let has_hex_prefix = |i: usize| {
        b.get(i) == Some(&b'0')
            && matches!(b.get(i + 1), Some(b'x' | b'X'))
            && b.get(i + 2).is_some_and(|c| c.is_ascii_hexdigit())
    };
    if (base == 0 || base == 16) && has_hex_prefix(i) {
        base = 16;
        i += 2;
    } else if base == 0 {
        base = if b.get(i) == Some(&b'0') { 8 } else { 10 };
    }
    let start = i;
    let mut value: u64 = 0;
    let mut overflow = false;
    while let Some(d) = b.get(i).and_then(|&c| (c as char).to_digit(base)) {
        match value.checked_mul(u64::from(base)).and_then(|v| v.checked_add(u64::from(d))) {
            Some(v) => value = v,
            None => overflow = true,
        }
        i += 1;
    }
    if i == start || overflow {
        return None;
    }
    Some((value, &s[i..]))
}

/// `str::split_once` for an ASCII byte, found by memchr: a split by a char costs ~250
/// instructions, more than reading the address or port it splits off (a restore splits
/// every line, and each rule's addresses and ports).
pub fn split_at_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    debug_assert!(b.is_ascii(), "a byte inside a UTF-8 character is no boundary");
    memchr::memchr(b, s.as_bytes()).map(|i| (&s[..i], &s[i + 1..]))
}

/// `xtables_strtoul_base` with a NULL end pointer: the whole string must be a number in
/// `min..=max` (`max == 0` means no upper bound, as in libxtables).
pub fn strtoul_base(s: &str, base: u32, min: u64, max: u64) -> Option<u64> {
    match strtoul_prefix_base(s, base, min, max) {
        Some((v, "")) => Some(v),
        _ => None,
    }
}

/// `xtables_strtoul` (base 0) requiring the whole string: decimal, `0x` hex or `0` octal.
pub fn strtoul(s: &str, min: u64, max: u64) -> Option<u64> {
    strtoul_base(s, 0, min, max)
}

/// `xtables_strtoul_base` with an end pointer: a number in range at the start of `s`, and the
/// rest of `s` after it.
pub fn strtoul_prefix_base(s: &str, base: u32, min: u64, max: u64) -> Option<(u64, &str)> {
    let (v, rest) = strtoumax(s, base)?;
    (min <= v && (max == 0 || v <= max)).then_some((v, rest))
}

/// `xtables_strtoul` (base 0) with an end pointer.
pub fn strtoul_prefix(s: &str, min: u64, max: u64) -> Option<(u64, &str)> {
    strtoul_prefix_base(s, 0, min, max)
}

/// `xtables_parse_val_mask` without a name map (`--mark`, `--set-xmark`...): `value[/mask]`,
/// each a 32-bit number in any base; the mask defaults to `0xffffffff`. `ext` and `opt` name
/// the extension and option in the error text.
pub fn parse_val_mask(arg: &str, ext: &str, opt: &str) -> Result<(u32, u32)> {
    let bad = || param(format!("{ext}: bad integer value for option \"--{opt}\", or out of range.\n"));
    let (val, rest) = strtoul_prefix(arg, 0, u64::from(u32::MAX)).ok_or_else(bad)?;
    let mask = match rest {
        "" => return Ok((val as u32, u32::MAX)),
        r if r.starts_with('/') => match strtoul_prefix(&r[1..], 0, u64::from(u32::MAX)) {
            Some((m, "")) => m,
            Some(_) => {
                return Err(param(format!(
                    "{ext}: trailing garbage after value for option \"--{opt}\".\n"
                )))
            }
            None => return Err(bad()),
        },
        _ => return Err(param(format!("{ext}: trailing garbage after value for option \"--{opt}\".\n"))),
    };
    Ok((val as u32, mask as u32))
}

/// `xtables_print_val_mask` without a name map: ` 0xV/0xM`, or ` 0xV` when the mask is all ones.
pub fn fmt_val_mask(val: u32, mask: u32, out: &mut String) {
    if mask == u32::MAX {
        out.push_str(&format!(" 0x{val:x}"));
    } else {
        out.push_str(&format!(" 0x{val:x}/0x{mask:x}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Name databases
// ---------------------------------------------------------------------------------------------

/// One `/etc/services` entry.
struct Service {
    names: Vec<String>,
    port: u16,
    proto: String,
}

/// One `/etc/protocols` entry.
struct Protocol {
    names: Vec<String>,
    number: u8,
}

fn read_db(path: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() >= 2)
        .collect()
}

fn services() -> &'static [Service] {
    static DB: OnceLock<Vec<Service>> = OnceLock::new();
    DB.get_or_init(|| {
        read_db("/etc/services")
            .into_iter()
            .filter_map(|mut f| {
                let (port, proto) = f[1].split_once('/')?;
                let port = port.parse().ok()?;
                let proto = proto.to_string();
                f.remove(1);
                Some(Service { names: f, port, proto })
            })
            .collect()
    })
}

fn protocols() -> &'static [Protocol] {
    static DB: OnceLock<Vec<Protocol>> = OnceLock::new();
    DB.get_or_init(|| {
        read_db("/etc/protocols")
            .into_iter()
            .filter_map(|mut f| {
                let number = f[1].parse().ok()?;
                f.remove(1);
                Some(Protocol { names: f, number })
            })
            .collect()
    })
}

/// `/etc/networks` as (name or alias, network number as `inet_network` returns it).
fn networks() -> &'static [(String, u32)] {
    static DB: OnceLock<Vec<(String, u32)>> = OnceLock::new();
    DB.get_or_init(|| {
        read_db("/etc/networks")
            .into_iter()
            .filter_map(|f| {
                let net = inet_network(&f[1])?;
                Some(f.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, n)| (n.clone(), net)).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    })
}

/// glibc `inet_network`: up to four dot-separated parts, each decimal, `0x` hex or `0` octal,
/// packed as `(a << 8 | b) << 8 ...` (so `"127"` is 0x7f, not 127.0.0.0).
fn inet_network(s: &str) -> Option<u32> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    parts.iter().try_fold(0u32, |acc, p| {
        let v = strtoul(p, 0, 255)?;
        Some(acc << 8 | v as u32)
    })
}

/// `getservbyname(name, proto)`: the port of the first `/etc/services` entry whose name or alias
/// is `name` (case-sensitive) for `proto`; any protocol when `proto` is `None`.
pub fn service_to_port(name: &str, proto: Option<&str>) -> Option<u16> {
    services()
        .iter()
        .find(|s| proto.is_none_or(|p| s.proto == p) && s.names.iter().any(|n| n == name))
        .map(|s| s.port)
}

/// `getservbyport(port, proto)`: the official name of the first `/etc/services` entry for this
/// port and protocol. Used by `-L` without `-n`.
pub fn port_to_service(port: u16, proto: &str) -> Option<&'static str> {
    services().iter().find(|s| s.port == port && s.proto == proto).map(|s| s.names[0].as_str())
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// A port as `-L` prints it: the service name for `proto` unless `numeric` or unnamed.
pub fn fmt_port_list(port: u16, proto: &str, numeric: bool) -> String {
    match (!numeric).then(|| port_to_service(port, proto)).flatten() {
        Some(name) => name.to_string(),
        None => port.to_string(),
    }
}

/// tcp/udp `print_ports`: ` spt:[!]P` or ` spts:[!]A:B`; nothing for 0:65535 not inverted.
pub fn list_ports(out: &mut String, name: &str, r: Option<&crate::model::Inv<PortRange>>, proto: &str, numeric: bool) {
    let Some(r) = r else { return };
    if r.value == PortRange::ALL && !r.invert {
        return;
    }
    let inv = if r.invert { "!" } else { "" };
    let p = |x| fmt_port_list(x, proto, numeric);
    if r.value.lo == r.value.hi {
        out.push_str(&format!(" {name}:{inv}{}", p(r.value.lo)));
    } else {
        out.push_str(&format!(" {name}s:{inv}{}:{}", p(r.value.lo), p(r.value.hi)));
    }
}

/// tcp/udp save of a port option: `[ !] --NAME P[:Q]`; iptables 1.8.9 prints nothing for
/// 0:65535 even when inverted.
pub fn save_ports(out: &mut String, name: &str, r: Option<&crate::model::Inv<PortRange>>) {
    let Some(r) = r else { return };
    if r.value == PortRange::ALL {
        return;
    }
    if r.invert {
        out.push_str(" !");
    }
    if r.value.lo == r.value.hi {
        out.push_str(&format!(" --{name} {}", r.value.lo));
    } else {
        out.push_str(&format!(" --{name} {}:{}", r.value.lo, r.value.hi));
    }
}

/// `xtables_parse_port`: a number `0..=65535` (any base) or a service name for `proto`.
/// Error: ``invalid port/service `X' specified``.
pub fn parse_port(s: &str, proto: &str) -> Result<u16> {
    if let Some(v) = strtoul(s, 0, 65535) {
        return Ok(v as u16);
    }
    service_to_port(s, Some(proto)).ok_or_else(|| param(format!("invalid port/service `{s}' specified")))
}

/// `parse_tcp_ports`/`parse_udp_ports`/`parse_multi_ports` range form: `p`, `a:b`, `a:`, `:b`,
/// `:` (each side through [`parse_port`]). Error for `a > b`: `invalid portrange (min > max)`.
pub fn parse_port_range(s: &str, proto: &str) -> Result<PortRange> {
    let Some((lo, hi)) = split_at_byte(s, b':') else {
        let p = parse_port(s, proto)?;
        return Ok(PortRange { lo: p, hi: p });
    };
    let lo = if lo.is_empty() { 0 } else { parse_port(lo, proto)? };
    let hi = if hi.is_empty() { 0xFFFF } else { parse_port(hi, proto)? };
    if lo > hi {
        return Err(param("invalid portrange (min > max)"));
    }
    Ok(PortRange { lo, hi })
}

/// libxtables' `xtables_getportbyname` as `XTTYPE_PORT`/`PORTRC` options use it
/// (`getaddrinfo(NULL, name)`): a decimal number, or a service of any protocol.
pub fn getportbyname(s: &str) -> Option<u16> {
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
        // getaddrinfo's numeric service is strtoul(base 10) truncated to 16 bits
        return s.parse::<u64>().ok().map(|v| v as u16);
    }
    service_to_port(s, Some("tcp")).or_else(|| service_to_port(s, Some("udp")))
}

/// `xtopt_parse_mport` (`XTTYPE_PORTRC`, e.g. conntrack's `--ctorigsrcport`): `p` or `a:b`
/// with either side optional, ports resolved by [`getportbyname`]. `ext`/`opt` name the
/// extension and option in error messages. Like iptables 1.8.9, `hi < lo` is accepted.
pub fn parse_port_range_rc(s: &str, ext: &str, opt: &str) -> Result<PortRange> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() > 2 {
        return Err(param(format!("{ext}: Too many components for option \"--{opt}\" (max: 2)\n")));
    }
    let mut range = [0u16, u16::MAX];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() {
            continue;
        }
        range[i] = getportbyname(p).ok_or_else(|| param(format!("Port \"{p}\" does not resolve to anything.\n")))?;
    }
    if parts.len() == 1 {
        range[1] = range[0];
    }
    Ok(PortRange { lo: range[0], hi: range[1] })
}

// ---------------------------------------------------------------------------------------------
// Protocols
// ---------------------------------------------------------------------------------------------

/// `xtables_chain_protos`: names iptables knows without `/etc/protocols`, checked before it.
const CHAIN_PROTOS: &[(&str, u8)] = &[
    ("tcp", 6),
    ("sctp", 132),
    ("udp", 17),
    ("udplite", 136),
    ("icmp", 1),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("esp", 50),
    ("ah", 51),
    ("mobility-header", 135),
    ("ipv6-mh", 135),
    ("mh", 135),
    ("dccp", 33),
    ("ipcomp", 108),
    ("all", 0),
];

/// `xtables_parse_protocol`: a number `0..=255` (any base), a built-in name (`all` is 0), or a
/// name or alias from `/etc/protocols`. Error: `unknown protocol "X" specified`.
pub fn parse_protocol(s: &str) -> Result<u8> {
    if let Some(v) = strtoul(s, 0, 255) {
        return Ok(v as u8);
    }
    if let Some(&(_, n)) = CHAIN_PROTOS.iter().find(|(name, _)| *name == s) {
        return Ok(n);
    }
    protocols()
        .iter()
        .find(|p| p.names.iter().any(|n| n == s))
        .map(|p| p.number)
        .ok_or_else(|| param(format!("unknown protocol \"{s}\" specified")))
}

/// iptables' `proto_to_name`: the built-in name, else (unless `nolookup`, i.e. `-n`) the
/// official `/etc/protocols` name; `None` when neither knows the number.
pub fn proto_to_name(proto: u8, nolookup: bool) -> Option<&'static str> {
    if let Some(&(name, _)) = CHAIN_PROTOS.iter().find(|(_, n)| *n == proto) {
        return Some(name);
    }
    if proto != 0 && !nolookup {
        return protocols().iter().find(|p| p.number == proto).map(|p| p.names[0].as_str());
    }
    None
}

// ---------------------------------------------------------------------------------------------
// IPv4 addresses
// ---------------------------------------------------------------------------------------------

/// `__numeric_to_ipaddr`: 1 to 4 dot-separated bytes (each any base); fewer than four are
/// completed with zeros (`10` is 10.0.0.0, `1.2.3` is 1.2.3.0) unless `is_mask`, which needs all
/// four. Like libxtables, only the first 19 characters are looked at.
fn numeric_to_ipaddr(dotted: &str, is_mask: bool) -> Option<u32> {
    let dotted = truncate(dotted, 19);
    let mut bytes = [0u8; 4];
    let mut rest = dotted;
    for (i, byte) in bytes.iter_mut().enumerate() {
        let (part, tail) = match rest.split_once('.') {
            Some(pt) if i < 3 => pt,
            _ => {
                if i < 3 && is_mask {
                    return None;
                }
                *byte = strtoul(rest, 0, 255)? as u8;
                return Some(u32::from_be_bytes(bytes));
            }
        };
        *byte = strtoul(part, 0, 255)? as u8;
        rest = tail;
    }
    unreachable!("the fourth byte always returns")
}

/// The longest prefix of `s` of at most `n` bytes that ends on a char boundary.
fn truncate(s: &str, n: usize) -> &str {
    let mut end = s.len().min(n);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `parse_ipmask`: a dotted mask (any bits, stored as given) or a prefix length `0..=32`.
/// Error: ``invalid mask `X' specified``.
pub fn parse_ipmask(s: &str) -> Result<u32> {
    if let Some(m) = numeric_to_ipaddr(s, true) {
        return Ok(m);
    }
    let bits = strtoul(s, 0, 32).ok_or_else(|| param(format!("invalid mask `{s}' specified")))?;
    Ok(prefix_to_mask(bits as u8))
}

/// The mask of a prefix length (`0` for /0).
pub fn prefix_to_mask(bits: u8) -> u32 {
    if bits == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(bits.min(32)))
    }
}

/// Resolves a host name to its IPv4 addresses with `getaddrinfo(AF_INET, SOCK_RAW)`, in the
/// order the resolver returns them.
fn host_to_ipaddrs(name: &str) -> Option<Vec<u32>> {
    getaddrinfo_v4(name).ok()
}

/// `getaddrinfo(name, AF_INET, SOCK_RAW)` (numeric forms as `inet_aton` reads them, e.g. `1.2.3`
/// is 1.2.0.3); the error is `gai_strerror`'s text.
pub fn getaddrinfo_v4(name: &str) -> Result<Vec<u32>, String> {
    let cname = CString::new(name).map_err(|_| "Name or service not known".to_string())?;
    // SAFETY: plain libc call with a zeroed hints struct and an out-pointer we free below.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_family = libc::AF_INET;
        hints.ai_socktype = libc::SOCK_RAW;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        let rc = libc::getaddrinfo(cname.as_ptr(), std::ptr::null(), &hints, &mut res);
        if rc != 0 {
            return Err(CStr::from_ptr(libc::gai_strerror(rc)).to_string_lossy().into_owned());
        }
        let mut out = Vec::new();
        let mut p = res;
        while !p.is_null() {
            let ai = &*p;
            if ai.ai_family == libc::AF_INET && !ai.ai_addr.is_null() {
                let sin = &*(ai.ai_addr as *const libc::sockaddr_in);
                out.push(u32::from_be(sin.sin_addr.s_addr));
            }
            p = ai.ai_next;
        }
        libc::freeaddrinfo(res);
        Ok(out)
    }
}

/// `ipparse_hostnetwork`: a numeric address (short forms allowed), a name from
/// `/etc/networks`, or a host name. Error: ``host/network `X' not found``.
fn parse_hostnetwork(name: &str) -> Result<Vec<u32>> {
    if let Some(a) = numeric_to_ipaddr(name, false) {
        return Ok(vec![a]);
    }
    if let Some((_, net)) = networks().iter().find(|(n, _)| n == name) {
        return Ok(vec![*net]);
    }
    match host_to_ipaddrs(name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(param(format!("host/network `{name}' not found"))),
    }
}

/// Splits `name[/mask]` at the last `/` and parses the mask (default /32). A zero mask makes
/// the name irrelevant: it is replaced by `0.0.0.0` ("any/0").
fn split_mask(spec: &str) -> Result<(&str, u32)> {
    let (host, mask) = match spec.rfind('/') {
        Some(i) => (&spec[..i], parse_ipmask(&spec[i + 1..])?),
        None => (spec, u32::MAX),
    };
    Ok((if mask == 0 { "0.0.0.0" } else { host }, mask))
}

/// `xtables_ipparse_any`: `host[/mask]` (numeric with short forms, network name or host name;
/// mask as a prefix length or dotted). Returns every address the name resolves to, masked, with
/// duplicates removed (a host with several addresses gives several rules).
pub fn parse_ipv4_any(spec: &str) -> Result<Vec<Ipv4Mask>> {
    let (host, mask) = split_mask(truncate(spec, 255))?;
    let mut out: Vec<Ipv4Mask> = Vec::new();
    for a in parse_hostnetwork(host)? {
        let m = Ipv4Mask::new(a, mask);
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// `xtables_ipparse_multiple`, what iptables 1.8.9 uses for `-s`/`-d`: a comma-separated list
/// of [`parse_ipv4_any`] specs (leading white space of each skipped), in order, without
/// removing duplicates. Error for an element over 255 bytes: `Hostname too long`.
pub fn parse_ipv4_multiple(spec: &str) -> Result<crate::parse::Addrs> {
    let mut out = crate::parse::Addrs::new();
    let mut rest = spec;
    loop {
        let (item, next) = split_at_byte(rest, b',').map_or((rest, None), |(item, next)| (item, Some(next)));
        let item = item.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
        if let Some(m) = plain_ipv4_mask(item.as_bytes()) {
            out.push(m);
        } else {
            if item.len() > 255 {
                return Err(param("Hostname too long"));
            }
            let (host, mask) = split_mask(item)?;
            out.extend(parse_hostnetwork(host)?.into_iter().map(|a| Ipv4Mask::new(a, mask)));
        }
        match next {
            Some(n) => rest = n,
            None => return Ok(out),
        }
    }
}

/// The common `a.b.c.d` or `a.b.c.d/len` in its canonical spelling (decimal, no leading
/// zeros: what `iptables-save` prints), which every other path reads the same way; None for
/// anything else (short forms, octal, dotted masks, names), left to the general path.
fn plain_ipv4_mask(b: &[u8]) -> Option<Ipv4Mask> {
    let mut addr = 0u32;
    let mut i = 0;
    for octet in 0..4 {
        if octet > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut v = 0u32;
        while i - start < 3 && i < b.len() && b[i].is_ascii_digit() {
            v = v * 10 + u32::from(b[i] - b'0');
            i += 1;
        }
        if i == start || v > 255 || (i - start > 1 && b[start] == b'0') {
            return None;
        }
        addr = addr << 8 | v;
    }
    let len = match b[i..] {
        [] => 32,
        [b'/', d @ b'0'..=b'9'] => d - b'0',
        [b'/', t @ b'1'..=b'9', u @ b'0'..=b'9'] => (t - b'0') * 10 + (u - b'0'),
        _ => return None,
    };
    if len > 32 {
        return None;
    }
    Some(Ipv4Mask::new(if len == 0 { 0 } else { addr }, prefix_to_mask(len)))
}

/// `xtables_numeric_to_ipaddr` exposed for single-address options (`--src-range a-b`): full or
/// short dotted form, no names, no mask.
pub fn parse_ipv4_numeric(s: &str) -> Option<u32> {
    numeric_to_ipaddr(s, false)
}

/// Dotted-quad text of a host-order address.
pub fn fmt_ipv4(addr: u32) -> String {
    let mut s = String::with_capacity(15);
    push_ipv4(&mut s, addr);
    s
}

/// Appends the dotted quad of `addr` (listings print tens of thousands: no `fmt` machinery).
pub fn push_ipv4(out: &mut String, addr: u32) {
    for (i, b) in addr.to_be_bytes().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_u8(out, b);
    }
}

fn push_u8(out: &mut String, b: u8) {
    if b >= 100 {
        out.push(char::from(b'0' + b / 100));
    }
    if b >= 10 {
        out.push(char::from(b'0' + b / 10 % 10));
    }
    out.push(char::from(b'0' + b % 10));
}

/// `xtables_ipmask_to_numeric`, the `-L` mask suffix: empty for /32, `/N` for a CIDR mask,
/// `/a.b.c.d` otherwise.
pub fn fmt_mask_list(mask: u32) -> String {
    let m = Ipv4Mask { addr: 0, mask };
    match m.prefix_len() {
        Some(32) => String::new(),
        Some(n) => format!("/{n}"),
        None => format!("/{}", fmt_ipv4(mask)),
    }
}

/// `save_ipv4_addr`'s address form for `-S`/save: `a.b.c.d/N`, or `a.b.c.d/m.m.m.m` for a
/// non-CIDR mask (always with a mask, `/32` included).
pub fn fmt_addr_mask_save(m: &Ipv4Mask) -> String {
    let mut s = String::with_capacity(31);
    push_addr_mask_save(&mut s, m);
    s
}

/// Appends [`fmt_addr_mask_save`]'s form of `m`.
pub fn push_addr_mask_save(out: &mut String, m: &Ipv4Mask) {
    push_ipv4(out, m.addr);
    out.push('/');
    match m.prefix_len() {
        Some(n) => push_u8(out, n),
        None => push_ipv4(out, m.mask),
    }
}

/// An address with its mask as `-L` prints it: `anywhere` for /0 without `-n`, else the
/// address (resolved with [`addr_to_anyname`] unless `numeric`) and [`fmt_mask_list`].
pub fn fmt_addr_mask_list(m: &Ipv4Mask, numeric: bool) -> String {
    if m.mask == 0 && !numeric {
        return "anywhere".to_string();
    }
    let addr = if numeric { fmt_ipv4(m.addr) } else { addr_to_anyname(m.addr) };
    addr + &fmt_mask_list(m.mask)
}

/// `xtables_ipaddr_to_anyname`: the host name from `getnameinfo` (which itself falls back to
/// the numeric form), else the network name, else the dotted quad.
pub fn addr_to_anyname(addr: u32) -> String {
    // SAFETY: getnameinfo reads the sockaddr we own and writes at most `host.len()` bytes.
    let host = unsafe {
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = addr.to_be();
        let mut host = [0 as libc::c_char; 1025];
        let rc = libc::getnameinfo(
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            host.as_mut_ptr(),
            (host.len() - 1) as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            0,
        );
        (rc == 0).then(|| CStr::from_ptr(host.as_ptr()).to_string_lossy().into_owned())
    };
    host.or_else(|| networks().iter().find(|(_, n)| *n == addr).map(|(name, _)| name.clone()))
        .unwrap_or_else(|| fmt_ipv4(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical dotted quad (with or without a prefix length) reads as the general path
    /// reads it; anything else is left to that path.
    #[test]
    fn plain_addresses_read_as_the_general_path_does() {
        let general = |item: &str| -> Vec<Ipv4Mask> {
            let (host, mask) = split_mask(item).expect("mask");
            parse_hostnetwork(host).expect("address").into_iter().map(|a| Ipv4Mask::new(a, mask)).collect()
        };
        let mut rng = crate::testutil::SplitMix64(7);
        let mut items: Vec<String> = ["1.2.3.4", "0.0.0.0/0", "10.1.2.3/0", "255.255.255.255/32", "192.168.1.77/24", "9.9.9.9/7"]
            .map(String::from)
            .to_vec();
        for _ in 0..2000 {
            let a = std::net::Ipv4Addr::from(rng.next() as u32);
            items.push(format!("{a}/{}", rng.next() % 33));
            items.push(a.to_string());
        }
        for item in &items {
            assert_eq!(plain_ipv4_mask(item.as_bytes()).map(|m| vec![m]), Some(general(item)), "{item}");
        }
        for item in [
            "01.2.3.4", "1.2.3", "1.2.3.4/032", "1.2.3.4/33", "1.2.3.4/255.0.0.0", "0x1.2.3.4", "1.2.3.4/", "localhost",
            "1.2.3.4.", "1.2.3.4/1/2", "1234.2.3.4", "1.2.3.256", "1..3.4", "", "1.2.3.4/-1", " 1.2.3.4",
        ] {
            assert_eq!(plain_ipv4_mask(item.as_bytes()), None, "{item}");
        }
    }

    #[test]
    fn strtoul_bases_and_bounds() {
        assert_eq!(strtoul("22", 0, 65535), Some(22));
        assert_eq!(strtoul("0x16", 0, 65535), Some(22));
        assert_eq!(strtoul("026", 0, 65535), Some(22));
        assert_eq!(strtoul("08", 0, 65535), None);
        assert_eq!(strtoul(" +7", 0, 10), Some(7));
        assert_eq!(strtoul("-1", 0, 0), None);
        assert_eq!(strtoul(" -1", 0, 0), None);
        assert_eq!(strtoul("", 0, 0), None);
        assert_eq!(strtoul("0x", 0, 0), None);
        assert_eq!(strtoul("65536", 0, 65535), None);
        assert_eq!(strtoul("99999999999999999999999", 0, 0), None);
        assert_eq!(strtoul("18446744073709551615", 0, 0), Some(u64::MAX));
        assert_eq!(strtoul("5", 6, 10), None);
        assert_eq!(strtoul("15a", 0, 0), None);
        assert_eq!(strtoul_prefix("15a", 0, 0), Some((15, "a")));
        assert_eq!(strtoul_base("0x10", 16, 0, 0), Some(16));
        assert_eq!(strtoul_base("10", 16, 0, 0), Some(16));
        assert_eq!(strtoul_base("010", 10, 0, 0), Some(10));
    }

    #[test]
    fn val_mask() {
        assert_eq!(parse_val_mask("1", "mark", "mark").ok(), Some((1, u32::MAX)));
        assert_eq!(parse_val_mask("0x1/0xff", "mark", "mark").ok(), Some((1, 0xff)));
        let e = parse_val_mask("1/", "mark", "mark").unwrap_err().to_string();
        assert_eq!(e, "mark: bad integer value for option \"--mark\", or out of range.\n");
        let e = parse_val_mask("1x", "mark", "mark").unwrap_err().to_string();
        assert_eq!(e, "mark: trailing garbage after value for option \"--mark\".\n");
        let e = parse_val_mask("1/2x", "mark", "mark").unwrap_err().to_string();
        assert_eq!(e, "mark: trailing garbage after value for option \"--mark\".\n");
        let e = parse_val_mask("0xfffffffff", "mark", "mark").unwrap_err().to_string();
        assert!(e.contains("bad integer value"));
        let mut s = String::new();
        fmt_val_mask(1, u32::MAX, &mut s);
        fmt_val_mask(1, 0xff, &mut s);
        assert_eq!(s, " 0x1 0x1/0xff");
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("22", "tcp").ok(), Some(22));
        assert_eq!(parse_port("ssh", "tcp").ok(), Some(22));
        assert_eq!(parse_port("domain", "udp").ok(), Some(53));
        assert_eq!(parse_port("0x50", "tcp").ok(), Some(80));
        assert_eq!(
            parse_port("foo", "tcp").unwrap_err().to_string(),
            "invalid port/service `foo' specified"
        );
        assert_eq!(
            parse_port("65536", "tcp").unwrap_err().to_string(),
            "invalid port/service `65536' specified"
        );
        assert_eq!(parse_port_range("1024:", "tcp").ok(), Some(PortRange { lo: 1024, hi: 65535 }));
        assert_eq!(parse_port_range(":1023", "tcp").ok(), Some(PortRange { lo: 0, hi: 1023 }));
        assert_eq!(parse_port_range(":", "tcp").ok(), Some(PortRange::ALL));
        assert_eq!(parse_port_range("ssh:http", "tcp").ok(), Some(PortRange { lo: 22, hi: 80 }));
        assert_eq!(
            parse_port_range("80:22", "tcp").unwrap_err().to_string(),
            "invalid portrange (min > max)"
        );
        assert_eq!(
            parse_port_range("1:2:3", "tcp").unwrap_err().to_string(),
            "invalid port/service `2:3' specified"
        );
        assert_eq!(port_to_service(22, "tcp"), Some("ssh"));
        assert_eq!(port_to_service(1023, "tcp"), None);
    }

    #[test]
    fn port_range_rc() {
        let p = |s| parse_port_range_rc(s, "conntrack", "ctorigsrcport");
        assert_eq!(p("80").ok(), Some(PortRange { lo: 80, hi: 80 }));
        assert_eq!(p("http:").ok(), Some(PortRange { lo: 80, hi: 65535 }));
        assert_eq!(p(":80").ok(), Some(PortRange { lo: 0, hi: 80 }));
        assert_eq!(p("bogus").unwrap_err().to_string(), "Port \"bogus\" does not resolve to anything.\n");
        assert_eq!(p("80:22").ok(), Some(PortRange { lo: 80, hi: 22 }));
        assert_eq!(
            p("1:2:3").unwrap_err().to_string(),
            "conntrack: Too many components for option \"--ctorigsrcport\" (max: 2)\n"
        );
    }

    #[test]
    fn protocols_by_name_and_number() {
        assert_eq!(parse_protocol("tcp").ok(), Some(6));
        assert_eq!(parse_protocol("6").ok(), Some(6));
        assert_eq!(parse_protocol("all").ok(), Some(0));
        assert_eq!(parse_protocol("ipv6-icmp").ok(), Some(58));
        assert_eq!(parse_protocol("gre").ok(), Some(47));
        assert_eq!(parse_protocol("GRE").ok(), Some(47));
        assert_eq!(parse_protocol("256").unwrap_err().to_string(), "unknown protocol \"256\" specified");
        assert_eq!(parse_protocol("TCP").ok(), Some(6));
        assert_eq!(parse_protocol("bogus").unwrap_err().to_string(), "unknown protocol \"bogus\" specified");
        assert_eq!(proto_to_name(6, true), Some("tcp"));
        assert_eq!(proto_to_name(47, true), None);
        assert_eq!(proto_to_name(47, false), Some("gre"));
        assert_eq!(proto_to_name(0, false), Some("all"));
    }

    #[test]
    fn addresses() {
        let one = |s: &str| parse_ipv4_any(s).map(|v| v[0]).map_err(|e| e.to_string());
        let m = |a: [u8; 4], mask: u32| Ok(Ipv4Mask::new(u32::from_be_bytes(a), mask));
        assert_eq!(one("1.2.3.4"), m([1, 2, 3, 4], u32::MAX));
        assert_eq!(one("1.2.3"), m([1, 2, 3, 0], u32::MAX));
        assert_eq!(one("10/8"), m([10, 0, 0, 0], 0xff00_0000));
        assert_eq!(one("10.1.2.3/8"), m([10, 0, 0, 0], 0xff00_0000));
        assert_eq!(one("0x7f.1"), m([127, 1, 0, 0], u32::MAX));
        assert_eq!(one("1.2.3.4/255.0.255.0"), m([1, 0, 3, 0], 0xff00_ff00));
        assert_eq!(one("0/0"), m([0, 0, 0, 0], 0));
        assert_eq!(one("nonexistent.invalid/0"), m([0, 0, 0, 0], 0));
        assert_eq!(one("localhost"), m([127, 0, 0, 1], u32::MAX));
        assert_eq!(one("loopback/8"), m([127, 0, 0, 0], 0xff00_0000));
        assert_eq!(one("1.2.3.4/33"), Err("invalid mask `33' specified".to_string()));
        assert_eq!(one("1.2.3.4/255.0"), Err("invalid mask `255.0' specified".to_string()));
        assert_eq!(one("1.2.3.256"), Err("host/network `1.2.3.256' not found".to_string()));
        assert_eq!(one("nonexistent.invalid/24"), Err("host/network `nonexistent.invalid' not found".to_string()));
        let multi = parse_ipv4_multiple("1.2.3.4, 5.6.7.0/24,1.2.3.4").unwrap();
        assert_eq!(multi.len(), 3);
        assert_eq!(multi[1], Ipv4Mask::new(0x0506_0700, 0xffff_ff00));
        assert_eq!(parse_ipv4_numeric("10.0.0.1"), Some(0x0a00_0001));
        assert_eq!(parse_ipv4_numeric("host"), None);
    }

    #[test]
    fn address_printing() {
        assert_eq!(fmt_mask_list(u32::MAX), "");
        assert_eq!(fmt_mask_list(0xffff_ff00), "/24");
        assert_eq!(fmt_mask_list(0), "/0");
        assert_eq!(fmt_mask_list(0xff00_ff00), "/255.0.255.0");
        assert_eq!(fmt_addr_mask_save(&Ipv4Mask::new(0x0102_0300, u32::MAX)), "1.2.3.0/32");
        assert_eq!(fmt_addr_mask_save(&Ipv4Mask::new(0x0100_0300, 0xff00_ff00)), "1.0.3.0/255.0.255.0");
        assert_eq!(fmt_addr_mask_save(&Ipv4Mask::ANY), "0.0.0.0/0");
        assert_eq!(fmt_addr_mask_list(&Ipv4Mask::ANY, false), "anywhere");
        assert_eq!(fmt_addr_mask_list(&Ipv4Mask::ANY, true), "0.0.0.0/0");
        assert_eq!(fmt_addr_mask_list(&Ipv4Mask::new(0x0a00_0000, 0xff00_0000), true), "10.0.0.0/8");
        assert_eq!(addr_to_anyname(0x7f00_0001), "localhost");
    }
}

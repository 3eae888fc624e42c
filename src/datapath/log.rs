//! LOG: the programs put one event per logged packet on the `bpfipt_log_events` ring buffer;
//! `follow` reads them and formats each exactly as the kernel's nf_log_ipv4 does
//! (`dump_ipv4_packet`: `PREFIX IN=eth0 OUT= MAC=... SRC=... DST=... LEN=... TOS=0x00 PREC=0x00
//! TTL=64 ID=... DF PROTO=TCP SPT=... DPT=... WINDOW=... RES=0x00 SYN URGP=0 `, trailing space
//! included), then writes it to /dev/kmsg with the rule's log level (`<N>` prefix; the kernel
//! records such lines under the user facility) or to stdout (`bpf-iptables --log-follow`).
//!
//! Differences from the kernel: `--log-uid` prints `UID=` only, and only at OUTPUT (the
//! kernel prints `UID= GID=` of the socket; TC programs can read the UID alone); devices
//! without an Ethernet header print an empty `MAC=`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use libbpf_rs::{MapHandle, RingBufferBuilder};

use super::netdev;
use super::skel::types::bpfipt_log_event;
use crate::model::log_flags;

/// Formats one event as the kernel's LOG line (without the trailing newline); `ifname` names
/// an ifindex.
pub fn format_event(e: &bpfipt_log_event, ifname: &dyn Fn(u32) -> String) -> String {
    let mut s = String::new();
    let plen = e.prefix.iter().position(|&b| b == 0).unwrap_or(e.prefix.len());
    s.push_str(&String::from_utf8_lossy(&e.prefix[..plen]));
    let name = |i: u32| if i == 0 { String::new() } else { ifname(i) };
    let _ = write!(s, "IN={} OUT={} ", name(e.in_ifindex), name(e.out_ifindex));
    if e.in_ifindex != 0 {
        let mac = &e.mac[..(e.mac_len as usize).min(e.mac.len())];
        if e.flags & log_flags::MACDECODE != 0 && mac.len() >= 14 {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":");
            let _ = write!(s, "MACSRC={} MACDST={} MACPROTO={:04x} ", hex(&mac[6..12]), hex(&mac[0..6]), u16::from_be_bytes([mac[12], mac[13]]));
        } else {
            s.push_str("MAC=");
            s.push_str(&mac.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":"));
            s.push(' ');
        }
    }
    let data = &e.data[..(e.data_len as usize).min(e.data.len())];
    dump_ipv4(&mut s, data, e.skb_len as usize, e.flags, false);
    if e.flags & log_flags::UID != 0 && e.has_uid != 0 {
        let _ = write!(s, "UID={} ", e.uid);
    }
    if e.mark != 0 {
        let _ = write!(s, "MARK=0x{:x} ", e.mark);
    }
    s
}

fn be16(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*d.get(o)?, *d.get(o + 1)?]))
}

fn be32(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*d.get(o)?, *d.get(o + 1)?, *d.get(o + 2)?, *d.get(o + 3)?]))
}

/// `dump_ipv4_packet`; `d` starts at an IP header, `len` is the bytes the packet has from
/// there (what the kernel compares with to print INCOMPLETE), `inner` for the quoted packet
/// of an ICMP error (printed once, not recursed further).
fn dump_ipv4(s: &mut String, d: &[u8], len: usize, flags: u8, inner: bool) {
    if d.len() < 20 {
        let _ = write!(s, "TRUNCATED ");
        return;
    }
    let ihl = (d[0] & 0x0f) as usize * 4;
    let tos = d[1];
    let tot = be16(d, 2).unwrap_or(0);
    let id = be16(d, 4).unwrap_or(0);
    let frag = be16(d, 6).unwrap_or(0);
    let proto = d[9];
    let src = Ipv4Addr::from(be32(d, 12).unwrap_or(0));
    let dst = Ipv4Addr::from(be32(d, 16).unwrap_or(0));
    let _ = write!(s, "SRC={src} DST={dst} ");
    let _ = write!(s, "LEN={tot} TOS=0x{:02X} PREC=0x{:02X} TTL={} ID={id} ", tos & 0x1e, tos & 0xe0, d[8]);
    if frag & 0x8000 != 0 {
        s.push_str("CE ");
    }
    if frag & 0x4000 != 0 {
        s.push_str("DF ");
    }
    if frag & 0x2000 != 0 {
        s.push_str("MF ");
    }
    let offset = frag & 0x1fff;
    if offset != 0 {
        let _ = write!(s, "FRAG:{offset} ");
    }
    if flags & log_flags::IPOPT != 0 && ihl > 20 {
        let opts = d.get(20..ihl.min(d.len())).unwrap_or(&[]);
        let _ = write!(s, "OPT ({}) ", opts.iter().map(|b| format!("{b:02X}")).collect::<String>());
    }
    let l4 = d.get(ihl..).unwrap_or(&[]);
    let l4len = len.saturating_sub(ihl);
    match proto {
        6 => {
            s.push_str("PROTO=TCP ");
            if offset != 0 {
                return;
            }
            if l4.len() < 20 || l4len < 20 {
                let _ = write!(s, "INCOMPLETE [{l4len} bytes] ");
                return;
            }
            let _ = write!(s, "SPT={} DPT={} ", be16(l4, 0).unwrap_or(0), be16(l4, 2).unwrap_or(0));
            if flags & log_flags::TCPSEQ != 0 {
                let _ = write!(s, "SEQ={} ACK={} ", be32(l4, 4).unwrap_or(0), be32(l4, 8).unwrap_or(0));
            }
            let _ = write!(s, "WINDOW={} ", be16(l4, 14).unwrap_or(0));
            let _ = write!(s, "RES=0x{:02x} ", ((be16(l4, 12).unwrap_or(0) & 0x0f00) >> 8) << 2);
            let f = l4[13];
            for (bit, name) in [(0x80, "CWR"), (0x40, "ECE"), (0x20, "URG"), (0x10, "ACK"), (0x08, "PSH"), (0x04, "RST"), (0x02, "SYN"), (0x01, "FIN")] {
                if f & bit != 0 {
                    s.push_str(name);
                    s.push(' ');
                }
            }
            let _ = write!(s, "URGP={} ", be16(l4, 18).unwrap_or(0));
            let doff = (l4[12] >> 4) as usize * 4;
            if flags & log_flags::TCPOPT != 0 && doff > 20 {
                let opts = l4.get(20..doff.min(l4.len())).unwrap_or(&[]);
                let _ = write!(s, "OPT ({}) ", opts.iter().map(|b| format!("{b:02X}")).collect::<String>());
            }
        }
        17 | 136 => {
            s.push_str(if proto == 17 { "PROTO=UDP " } else { "PROTO=UDPLITE " });
            if offset != 0 {
                return;
            }
            if l4.len() < 8 || l4len < 8 {
                let _ = write!(s, "INCOMPLETE [{l4len} bytes] ");
                return;
            }
            let _ = write!(s, "SPT={} DPT={} LEN={} ", be16(l4, 0).unwrap_or(0), be16(l4, 2).unwrap_or(0), be16(l4, 4).unwrap_or(0));
        }
        1 => {
            s.push_str("PROTO=ICMP ");
            if offset != 0 {
                return;
            }
            if l4.len() < 4 || l4len < 4 {
                let _ = write!(s, "INCOMPLETE [{l4len} bytes] ");
                return;
            }
            let (t, code) = (l4[0], l4[1]);
            let _ = write!(s, "TYPE={t} CODE={code} ");
            // required_len of nf_log_ipv4
            let required = match t {
                0 | 8 => 8,
                3 | 4 | 5 | 11 => 8 + 20,
                12 => 8 + 20,
                13 | 14 => 20,
                17 | 18 => 12,
                _ => 0,
            };
            if required != 0 && l4len < required {
                let _ = write!(s, "INCOMPLETE [{l4len} bytes] ");
                return;
            }
            match t {
                0 | 8 => {
                    let _ = write!(s, "ID={} SEQ={} ", be16(l4, 4).unwrap_or(0), be16(l4, 6).unwrap_or(0));
                }
                12 => {
                    let _ = write!(s, "PARAMETER={} ", be32(l4, 4).unwrap_or(0) >> 24);
                }
                3 | 4 | 5 | 11 => {
                    if t == 5 {
                        let _ = write!(s, "GATEWAY={} ", Ipv4Addr::from(be32(l4, 4).unwrap_or(0)));
                    }
                    if !inner {
                        s.push('[');
                        dump_ipv4(s, l4.get(8..).unwrap_or(&[]), l4len - 8, flags, true);
                        s.push_str("] ");
                    }
                    if t == 3 && code == 4 {
                        let _ = write!(s, "MTU={} ", be16(l4, 6).unwrap_or(0));
                    }
                }
                _ => {}
            }
        }
        _ => {
            let _ = write!(s, "PROTO={proto} ");
        }
    }
}

/// Follows the LOG events of the namespace whose pins are in `pin_dir` until an error: each
/// line to stdout when `to_stdout`, else to /dev/kmsg with its log level.
pub fn follow(pin_dir: &Path, to_stdout: bool) -> Result<()> {
    let map = MapHandle::from_pinned_path(pin_dir.join("bpfipt_log_events")).context("opening the LOG ring buffer")?;
    let mut kmsg = if to_stdout {
        None
    } else {
        Some(std::fs::OpenOptions::new().write(true).open("/dev/kmsg").context("opening /dev/kmsg")?)
    };
    let out_err: std::rc::Rc<std::cell::RefCell<Option<std::io::Error>>> = Default::default();
    let cb_err = out_err.clone();
    let mut builder = RingBufferBuilder::new();
    builder.add(&map, |data: &[u8]| {
        let Some(e) = event_from_bytes(data) else { return 0 };
        let line = format_event(&e, &|i| netdev::name_of(i).unwrap_or_default());
        let res = match kmsg.as_mut() {
            Some(k) => k.write_all(format!("<{}>{line}\n", e.level.min(7)).as_bytes()),
            None => {
                let mut o = std::io::stdout().lock();
                o.write_all(line.as_bytes()).and_then(|_| o.write_all(b"\n")).and_then(|_| o.flush())
            }
        };
        match res {
            Ok(()) => 0,
            Err(err) => {
                *cb_err.borrow_mut() = Some(err);
                -1
            }
        }
    })?;
    let rb = builder.build()?;
    loop {
        let r = rb.poll(Duration::from_millis(500));
        if let Some(e) = out_err.borrow_mut().take() {
            return Err(e).context("writing a LOG line");
        }
        r.context("polling the LOG ring buffer")?;
    }
}

/// The event in a ring buffer record (records are at least the struct's size).
pub fn event_from_bytes(data: &[u8]) -> Option<bpfipt_log_event> {
    if data.len() < std::mem::size_of::<bpfipt_log_event>() {
        return None;
    }
    // SAFETY: bpfipt_log_event is plain integer data valid for any bit pattern; the length was
    // checked and read_unaligned copes with the record's alignment.
    Some(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<bpfipt_log_event>()) })
}

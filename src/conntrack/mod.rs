//! Connection tracking, userspace side: decodes the pinned connection table that the datapath
//! keeps (`bpfipt_ct`, see `bpf/conntrack.h`), lists it the way `conntrack -L` does, flushes
//! it, and encodes `-m conntrack` matches for the programs' `bpfipt_ct_match()`. The tracking
//! itself happens in the BPF programs; nothing here runs per packet.
//!
//! Expired entries stay in the table until the LRU map reuses their slot (the programs treat
//! them as absent), so the listing skips them.

use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{anyhow, Context};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::datapath::skel::types::{
    bpfipt_ct_entry, bpfipt_ct_key, bpfipt_ct_match, bpfipt_ct_status, bpfipt_ct_tcp_state, bpfipt_ctm_flags,
};
use crate::error::{Error, Result};
use crate::model::{ConntrackMatch, Counters, CtDir, Inv, Ipv4Mask, PortRange};

/// Name of the connection table map (and of its pin in the namespace's pin directory).
pub const MAP_NAME: &str = "bpfipt_ct";

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_GRE: u8 = 47;
/// Protocols whose tuples carry ports.
const PORT_PROTOS: [u8; 5] = [6, 17, 33, 132, 136];

/// Names `conntrack -L` gives the TCP states (`enum tcp_conntrack` order).
const TCP_STATE_NAMES: [&str; bpfipt_ct_tcp_state::BPFIPT_TCP_MAX.0 as usize] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

/// One direction of a connection. For ICMP queries `sport` is the identifier and `dport` is
/// `type << 8 | code`; for protocols without ports both are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// A decoded, live connection table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub proto: u8,
    pub orig: Tuple,
    pub reply: Tuple,
    /// `IPS_*` bits (`model::ct_status` layout).
    pub status: u16,
    /// The TCP state (`enum tcp_conntrack` number); 0 for other protocols.
    pub tcp_state: u8,
    /// Seconds until the entry expires.
    pub expire: u32,
    /// Packets and bytes in the original and the reply direction.
    pub counters: [Counters; 2],
    /// The first packet was locally generated.
    pub from_local: bool,
    /// Interface the first packet was seen on.
    pub ifindex: u32,
}

impl Conn {
    /// Decodes a map entry; `None` when it has expired at `now_ns` (`monotonic_ns`).
    pub fn decode(value: &[u8], now_ns: u64) -> anyhow::Result<Option<Conn>> {
        let e: bpfipt_ct_entry = crate::store::pod::from_bytes(value).context("decoding a conntrack entry")?;
        if e.expires <= now_ns {
            return Ok(None);
        }
        let orig = Tuple {
            src: Ipv4Addr::from(e.orig.src),
            dst: Ipv4Addr::from(e.orig.dst),
            sport: e.orig.sport,
            dport: e.orig.dport,
        };
        Ok(Some(Conn {
            proto: e.proto,
            reply: reply_of(&orig, e.proto),
            orig,
            status: e.status,
            tcp_state: e.tcp_state,
            expire: ((e.expires - now_ns) / 1_000_000_000) as u32,
            counters: e.acct.map(|c| Counters { packets: c.packets, bytes: c.bytes }),
            from_local: e.from_local != 0,
            ifindex: e.ifindex,
        }))
    }

    pub fn has_status(&self, bit: bpfipt_ct_status) -> bool {
        u32::from(self.status) & bit.0 != 0
    }

    /// The TCP state's name, for TCP connections.
    pub fn tcp_state_name(&self) -> Option<&'static str> {
        (self.proto == 6).then(|| TCP_STATE_NAMES.get(self.tcp_state as usize).copied().unwrap_or("NONE"))
    }
}

/// The reply tuple of a connection whose original tuple is `o` (we do no NAT: the inverse;
/// an ICMP request's reply has the reply type).
fn reply_of(o: &Tuple, proto: u8) -> Tuple {
    let (sport, dport) = if proto == IPPROTO_ICMP {
        let req = (o.dport >> 8) as u8;
        let reply_type = if req == 8 { 0 } else { req.wrapping_add(1) };
        (o.sport, u16::from(reply_type) << 8 | (o.dport & 0xff))
    } else {
        (o.dport, o.sport)
    };
    Tuple { src: o.dst, dst: o.src, sport, dport }
}

/// The protocol name `conntrack -L` prints (libnetfilter_conntrack's table).
fn proto_name(proto: u8) -> &'static str {
    match proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        33 => "dccp",
        47 => "gre",
        132 => "sctp",
        136 => "udplite",
        _ => "unknown",
    }
}

impl fmt::Display for Conn {
    /// `conntrack -L` format (with accounting on), e.g.
    /// `tcp      6 431999 ESTABLISHED src=.. dst=.. sport=.. dport=.. packets=.. bytes=.. src=..
    /// dst=.. sport=.. dport=.. packets=.. bytes=.. [ASSURED] mark=0 use=1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<8} {} {} ", proto_name(self.proto), self.proto, self.expire)?;
        if let Some(state) = self.tcp_state_name() {
            write!(f, "{state} ")?;
        }
        let tuple = |f: &mut fmt::Formatter<'_>, t: &Tuple, c: &Counters| -> fmt::Result {
            write!(f, "src={} dst={} ", t.src, t.dst)?;
            if self.proto == IPPROTO_ICMP {
                write!(f, "type={} code={} id={} ", t.dport >> 8, t.dport & 0xff, t.sport)?;
            } else if PORT_PROTOS.contains(&self.proto) {
                write!(f, "sport={} dport={} ", t.sport, t.dport)?;
            } else if self.proto == IPPROTO_GRE {
                write!(f, "srckey=0x0 dstkey=0x0 ")?;
            }
            write!(f, "packets={} bytes={} ", c.packets, c.bytes)
        };
        tuple(f, &self.orig, &self.counters[0])?;
        if !self.has_status(bpfipt_ct_status::BPFIPT_CT_S_SEEN_REPLY) {
            write!(f, "[UNREPLIED] ")?;
        }
        tuple(f, &self.reply, &self.counters[1])?;
        if self.has_status(bpfipt_ct_status::BPFIPT_CT_S_ASSURED) {
            write!(f, "[ASSURED] ")?;
        }
        write!(f, "mark=0 use=1")
    }
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock the programs stamp entries with
/// (`bpf_ktime_get_coarse_ns`, the monotonic clock as of the last tick: a tenth of the cost of
/// reading the precise one, and as fine as netfilter's jiffies).
pub fn monotonic_ns() -> anyhow::Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is valid writable storage for clock_gettime.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime(CLOCK_MONOTONIC_COARSE)");
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Opens the connection table pinned in `pin_dir`.
fn open_table(pin_dir: &Path) -> Result<MapHandle> {
    let path = pin_dir.join(MAP_NAME);
    if !path.exists() {
        return Err(Error::Other(anyhow!(
            "no connection table in {} (the datapath creates it when it first attaches)",
            pin_dir.display()
        )));
    }
    Ok(MapHandle::from_pinned_path(&path).with_context(|| format!("opening {}", path.display()))?)
}

/// The live entries of a connection table map, sorted by protocol and original tuple.
pub fn read_table(map: &MapHandle) -> anyhow::Result<Vec<Conn>> {
    let key_size = std::mem::size_of::<bpfipt_ct_key>();
    if map.key_size() as usize != key_size || map.value_size() as usize != std::mem::size_of::<bpfipt_ct_entry>() {
        return Err(anyhow!("the connection table has an unexpected layout (built by another version?)"));
    }
    let now = monotonic_ns()?;
    let mut conns = Vec::new();
    for key in map.keys() {
        // An entry may vanish between listing its key and reading it (eviction, deletion).
        let Some(value) = map.lookup(&key, MapFlags::ANY).context("reading a conntrack entry")? else { continue };
        if let Some(c) = Conn::decode(&value, now)? {
            conns.push(c);
        }
    }
    conns.sort_by_key(|c| (c.proto, c.orig));
    Ok(conns)
}

/// Writes the connection table of the namespace pinned in `pin_dir` to `out`, one
/// `conntrack -L` line per live entry. Returns the number of entries shown (`conntrack` reports
/// it on stderr as "N flow entries have been shown.").
pub fn list(pin_dir: &Path, out: &mut dyn Write) -> Result<usize> {
    let map = open_table(pin_dir)?;
    let conns = read_table(&map)?;
    for c in &conns {
        writeln!(out, "{c}").context("writing the connection list")?;
    }
    Ok(conns.len())
}

/// Deletes every entry of the connection table pinned in `pin_dir` (`conntrack -F`). Returns
/// how many were deleted. Packets of existing connections are then tracked afresh (TCP ones
/// are picked up mid-stream as NEW, as after `conntrack -F`).
pub fn flush(pin_dir: &Path) -> Result<usize> {
    delete_where(&open_table(pin_dir)?, |_| Ok(true))
}

/// Deletes the expired entries of the connection table pinned in `pin_dir` (netfilter's
/// garbage collection); returns how many. The programs already treat an expired entry as
/// absent and LRU eviction reclaims it first, so this only gives the memory back sooner: a
/// packet refreshing an entry between our read and our delete makes its connection be picked
/// up afresh, as after `conntrack -D`.
pub fn sweep(pin_dir: &Path) -> Result<usize> {
    let map = open_table(pin_dir)?;
    let now = monotonic_ns()?;
    delete_where(&map, |key| {
        let Some(value) = map.lookup(key, MapFlags::ANY).context("reading a conntrack entry")? else { return Ok(false) };
        Ok(Conn::decode(&value, now)?.is_none())
    })
}

/// Deletes the entries of `map` whose key `doomed` says so; returns how many. An entry gone
/// meanwhile (evicted, or an RST deleted it) is as good as deleted but not counted.
fn delete_where(map: &MapHandle, mut doomed: impl FnMut(&[u8]) -> Result<bool>) -> Result<usize> {
    let keys: Vec<Vec<u8>> = map.keys().collect();
    let mut n = 0;
    for key in &keys {
        if doomed(key)? && map.delete(key).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// Encodes a `-m conntrack` match (`compile::Check::Conntrack`) as `struct bpfipt_ct_match`, the
/// form `bpfipt_ct_match()` in `bpf/conntrack.h` evaluates.
pub fn encode_match(m: &ConntrackMatch) -> bpfipt_ct_match {
    let mut e = bpfipt_ct_match::default();
    fn present(e: &mut bpfipt_ct_match, bit: bpfipt_ctm_flags, invert: bool) {
        e.flags |= bit.0 as u16;
        if invert {
            e.invert |= bit.0 as u16;
        }
    }
    if let Some(s) = m.state {
        present(&mut e, bpfipt_ctm_flags::BPFIPT_CTM_STATE, s.invert);
        e.state_mask = s.value;
    }
    if let Some(p) = m.proto {
        present(&mut e, bpfipt_ctm_flags::BPFIPT_CTM_PROTO, p.invert);
        e.proto = p.value;
    }
    let addrs: [(&Option<Inv<Ipv4Mask>>, bpfipt_ctm_flags); 4] = [
        (&m.orig_src, bpfipt_ctm_flags::BPFIPT_CTM_ORIGSRC),
        (&m.orig_dst, bpfipt_ctm_flags::BPFIPT_CTM_ORIGDST),
        (&m.repl_src, bpfipt_ctm_flags::BPFIPT_CTM_REPLSRC),
        (&m.repl_dst, bpfipt_ctm_flags::BPFIPT_CTM_REPLDST),
    ];
    for (i, (a, bit)) in addrs.into_iter().enumerate() {
        if let Some(a) = a {
            present(&mut e, bit, a.invert);
            e.addr[i] = a.value.addr & a.value.mask;
            e.mask[i] = a.value.mask;
        }
    }
    let ports: [(&Option<Inv<PortRange>>, bpfipt_ctm_flags); 4] = [
        (&m.orig_src_port, bpfipt_ctm_flags::BPFIPT_CTM_ORIGSRC_PORT),
        (&m.orig_dst_port, bpfipt_ctm_flags::BPFIPT_CTM_ORIGDST_PORT),
        (&m.repl_src_port, bpfipt_ctm_flags::BPFIPT_CTM_REPLSRC_PORT),
        (&m.repl_dst_port, bpfipt_ctm_flags::BPFIPT_CTM_REPLDST_PORT),
    ];
    for (i, (p, bit)) in ports.into_iter().enumerate() {
        if let Some(p) = p {
            present(&mut e, bit, p.invert);
            e.port_lo[i] = p.value.lo;
            e.port_hi[i] = p.value.hi;
        }
    }
    if let Some(s) = m.status {
        present(&mut e, bpfipt_ctm_flags::BPFIPT_CTM_STATUS, s.invert);
        e.status_mask = s.value;
    }
    if let Some(x) = m.expire {
        present(&mut e, bpfipt_ctm_flags::BPFIPT_CTM_EXPIRES, x.invert);
        (e.expire_lo, e.expire_hi) = x.value;
    }
    if let Some(d) = m.dir {
        present(&mut e, bpfipt_ctm_flags::BPFIPT_CTM_DIRECTION, false);
        e.dir_reply = (d == CtDir::Reply) as u8;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::skel::types::{bpfipt_counter, bpfipt_ct_tuple};
    use crate::model::ct_state;

    const NOW: u64 = 1_000 * 1_000_000_000;

    fn entry(proto: u8, orig: (u32, u32, u16, u16), status: u32, secs_left: u64) -> bpfipt_ct_entry {
        bpfipt_ct_entry {
            expires: NOW + secs_left * 1_000_000_000 + 500_000_000,
            proto,
            orig: bpfipt_ct_tuple { src: orig.0, dst: orig.1, sport: orig.2, dport: orig.3 },
            status: status as u16,
            acct: [bpfipt_counter { packets: 2, bytes: 168 }, bpfipt_counter { packets: 1, bytes: 84 }],
            ..Default::default()
        }
    }

    fn decode(e: &bpfipt_ct_entry) -> Option<Conn> {
        Conn::decode(crate::store::pod::bytes_of(e), NOW).expect("decodes")
    }

    const A: u32 = 0xc612_0001; // 198.18.0.1
    const B: u32 = 0xc612_0002;

    #[test]
    fn tcp_line() {
        let mut e = entry(6, (A, B, 40000, 22), bpfipt_ct_status::BPFIPT_CT_S_SEEN_REPLY.0 | bpfipt_ct_status::BPFIPT_CT_S_ASSURED.0, 431999);
        e.tcp_state = bpfipt_ct_tcp_state::BPFIPT_TCP_ESTABLISHED.0 as u8;
        assert_eq!(
            decode(&e).map(|c| c.to_string()).as_deref(),
            Some(
                "tcp      6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.0.2 sport=40000 dport=22 packets=2 bytes=168 \
                 src=198.18.0.2 dst=198.18.0.1 sport=22 dport=40000 packets=1 bytes=84 [ASSURED] mark=0 use=1"
            )
        );
    }

    #[test]
    fn icmp_gre_and_generic_lines() {
        let icmp = entry(1, (A, B, 77, 13 << 8), bpfipt_ct_status::BPFIPT_CT_S_SEEN_REPLY.0, 29);
        assert_eq!(
            decode(&icmp).map(|c| c.to_string()).as_deref(),
            Some(
                "icmp     1 29 src=198.18.0.1 dst=198.18.0.2 type=13 code=0 id=77 packets=2 bytes=168 \
                 src=198.18.0.2 dst=198.18.0.1 type=14 code=0 id=77 packets=1 bytes=84 mark=0 use=1"
            )
        );
        let gre = entry(47, (A, B, 0, 0), 0, 29);
        assert!(decode(&gre).map(|c| c.to_string()).is_some_and(|l| l.starts_with(
            "gre      47 29 src=198.18.0.1 dst=198.18.0.2 srckey=0x0 dstkey=0x0 packets=2 bytes=168 [UNREPLIED] "
        )));
        let esp = entry(50, (A, B, 0, 0), 0, 599);
        assert!(decode(&esp).map(|c| c.to_string()).is_some_and(|l| l
            .starts_with("unknown  50 599 src=198.18.0.1 dst=198.18.0.2 packets=2 bytes=168 [UNREPLIED] src=")));
    }

    #[test]
    fn expired_entries_decode_to_none() {
        let mut e = entry(17, (A, B, 1, 2), 0, 0);
        e.expires = NOW;
        assert_eq!(decode(&e), None);
        assert!(Conn::decode(&[0u8; 3], NOW).is_err());
    }

    #[test]
    fn match_encoding() {
        let m = ConntrackMatch {
            state: Some(Inv { value: ct_state::ESTABLISHED | ct_state::RELATED, invert: false }),
            orig_src: Some(Inv { value: Ipv4Mask::new(A, 0xffff_ff00), invert: true }),
            repl_dst_port: Some(Inv { value: PortRange { lo: 1024, hi: 65535 }, invert: false }),
            expire: Some(Inv { value: (10, 20), invert: true }),
            dir: Some(CtDir::Reply),
            ..Default::default()
        };
        let e = encode_match(&m);
        let f = |b: bpfipt_ctm_flags| b.0 as u16;
        assert_eq!(
            e.flags,
            f(bpfipt_ctm_flags::BPFIPT_CTM_STATE)
                | f(bpfipt_ctm_flags::BPFIPT_CTM_ORIGSRC)
                | f(bpfipt_ctm_flags::BPFIPT_CTM_REPLDST_PORT)
                | f(bpfipt_ctm_flags::BPFIPT_CTM_EXPIRES)
                | f(bpfipt_ctm_flags::BPFIPT_CTM_DIRECTION)
        );
        assert_eq!(e.invert, f(bpfipt_ctm_flags::BPFIPT_CTM_ORIGSRC) | f(bpfipt_ctm_flags::BPFIPT_CTM_EXPIRES));
        assert_eq!((e.state_mask, e.addr[0], e.mask[0]), (0b110, 0xc612_0000, 0xffff_ff00));
        assert_eq!((e.port_lo[3], e.port_hi[3], e.expire_lo, e.expire_hi, e.dir_reply), (1024, 65535, 10, 20, 1));
    }
}

//! The interfaces of the current network namespace and their IPv4 addresses, read with
//! getifaddrs(3) (netlink underneath, so it sees the namespace of the calling thread even where
//! /sys belongs to another one), and the shape of its IPv4 routes (rtnetlink).

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Netdev {
    pub ifindex: u32,
    pub name: String,
    pub loopback: bool,
    /// Frames start with an Ethernet header (Ethernet devices and loopback).
    pub l2: bool,
    /// A veth: frames sent with XDP_TX reach the peer only when the peer runs NAPI (an XDP
    /// program or GRO there), which we do not control.
    pub veth: bool,
    /// IPv4 addresses, the primary first.
    pub addrs: Vec<Ipv4Addr>,
    /// Broadcast addresses of those subnets: the configured `brd`, and the subnet's last
    /// address for prefixes shorter than /31 (the RTN_BROADCAST routes the kernel puts in the
    /// local table, which `-m addrtype` and local delivery go by).
    pub broadcasts: Vec<Ipv4Addr>,
}

/// Every interface of the namespace, by ifindex.
pub fn list() -> io::Result<Vec<Netdev>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut by_name: BTreeMap<String, Netdev> = BTreeMap::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        // Aliases (eth0:1) are addresses of eth0.
        let base = name.split(':').next().unwrap_or(&name).to_string();
        let dev = by_name.entry(base.clone()).or_insert_with(|| Netdev { name: base, ..Default::default() });
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it says.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        match family {
            libc::AF_PACKET => {
                // SAFETY: AF_PACKET entries carry a sockaddr_ll.
                let ll = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_ll) };
                dev.ifindex = ll.sll_ifindex as u32;
                dev.loopback = ll.sll_hatype == ARPHRD_LOOPBACK;
                dev.l2 = ll.sll_hatype == ARPHRD_ETHER || dev.loopback;
                dev.veth = dev.l2 && !dev.loopback && driver(&dev.name).as_deref() == Some("veth");
            }
            libc::AF_INET => {
                // SAFETY: AF_INET entries carry a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let addr = u32::from_be(sin.sin_addr.s_addr);
                dev.addrs.push(Ipv4Addr::from(addr));
                if !ifa.ifa_netmask.is_null() {
                    // SAFETY: the netmask of an AF_INET entry is a sockaddr_in.
                    let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
                    let mask = u32::from_be(m.sin_addr.s_addr);
                    if mask.count_ones() < 31 && addr >> 24 != 127 {
                        dev.broadcasts.push(Ipv4Addr::from(addr | !mask));
                    }
                }
                let bcast = ifa.ifa_ifu;
                if ifa.ifa_flags & libc::IFF_BROADCAST as u32 != 0 && !bcast.is_null() {
                    // SAFETY: with IFF_BROADCAST, ifa_ifu is the broadcast sockaddr_in.
                    let b = unsafe { &*(bcast as *const libc::sockaddr_in) };
                    if b.sin_family as i32 == libc::AF_INET {
                        dev.broadcasts.push(Ipv4Addr::from(u32::from_be(b.sin_addr.s_addr)));
                    }
                }
            }
            _ => {}
        }
    }
    // SAFETY: frees the list getifaddrs allocated; no reference into it survives.
    unsafe { libc::freeifaddrs(head) };
    let mut devs: Vec<Netdev> = by_name.into_values().filter(|d| d.ifindex != 0).collect();
    devs.sort_by_key(|d| d.ifindex);
    Ok(devs)
}

/// The name of an interface of the current namespace, if it exists.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// The driver name of an interface (`ethtool -i`), through SIOCETHTOOL, which answers for the
/// calling thread's network namespace.
fn driver(name: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 160] };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut info, _pad: [0; 16] };
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: plain socket; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: req points to a valid ifreq whose data points to a valid ethtool_drvinfo.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req as *mut IfReq) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// An rtnetlink socket of the current namespace, subscribed to multicast `groups` (RTMGRP_*).
pub fn rtnetlink(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_nl is valid; fields set below.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = groups;
    // SAFETY: sa is a properly sized sockaddr_nl.
    let rc = unsafe {
        libc::bind(sock.as_raw_fd(), (&sa as *const libc::sockaddr_nl).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

const NLMSG_HDRLEN: usize = 16;

/// One netlink message of a received datagram: its type, flags and payload.
pub struct NlMsg<'a> {
    pub kind: u16,
    pub flags: u16,
    pub payload: &'a [u8],
}

/// The netlink messages of datagram `buf`, up to the first malformed one.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = NlMsg<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let msg = NlMsg {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some(msg)
    })
}

/// More routes than a firewall's namespace holds: a full Internet table is not read through on
/// every change (its routes are then taken as possibly multipath).
const MAX_ROUTES: usize = 65536;

/// Whether every IPv4 route of the namespace, in every table, has a single next hop: none is
/// multipath (RTA_MULTIPATH) or goes by a nexthop object (RTA_NH_ID: maybe a group). Then the
/// FIB gives every source the same answer unless a policy rule looks at it. False too for a
/// listing interrupted by a change, or longer than MAX_ROUTES.
pub fn routes_single_path() -> io::Result<bool> {
    const RTA_NH_ID: u16 = 30;
    const NLA_TYPE_MASK: u16 = 0x3fff;
    const RTMSG_LEN: usize = 12;
    let sock = rtnetlink(0)?;
    let mut req = [0u8; NLMSG_HDRLEN + RTMSG_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + RTMSG_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[NLMSG_HDRLEN] = libc::AF_INET as u8;
    // SAFETY: req is a complete request of its length.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut routes = 0;
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for m in messages(&buf[..n as usize]) {
            if m.flags & libc::NLM_F_DUMP_INTR as u16 != 0 {
                return Ok(false);
            }
            match m.kind as i32 {
                libc::NLMSG_DONE => return Ok(true),
                libc::NLMSG_ERROR => {
                    let code = m.payload.get(0..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return Err(io::Error::from_raw_os_error(-code));
                }
                _ if m.kind != libc::RTM_NEWROUTE || m.payload.len() < RTMSG_LEN => continue,
                _ => {}
            }
            routes += 1;
            if routes > MAX_ROUTES {
                return Ok(false);
            }
            let mut attrs = &m.payload[RTMSG_LEN..];
            while attrs.len() >= 4 {
                let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
                if kind == libc::RTA_MULTIPATH || kind == RTA_NH_ID {
                    return Ok(false);
                }
                if len < 4 {
                    break;
                }
                attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
            }
        }
    }
}

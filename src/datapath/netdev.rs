//! The interfaces of the current network namespace and their IPv4 addresses, read with
//! getifaddrs(3) (netlink underneath, so it sees the namespace of the calling thread even where
//! /sys belongs to another one).

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;

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

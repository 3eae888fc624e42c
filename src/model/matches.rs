//! Match extensions as data: one variant per `-m` module, values normalised as iptables stores
//! them in its `xt_*_info` structs (that is what `-S`/save print back).

use serde::{Deserialize, Serialize};

use super::{Inv, Ipv4Mask};

/// An inclusive port range; a single port is `lo == hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { lo: 0, hi: 65535 };

    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

/// TCP flag bits as in the TCP header (FIN=0x01 ... CWR=0x80).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// `-m tcp` (`struct xt_tcp`). iptables always stores both port ranges (0:65535 when absent);
/// `None` here means the option was not given (and is not printed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpMatch {
    pub sport: Option<Inv<PortRange>>,
    pub dport: Option<Inv<PortRange>>,
    /// `--tcp-flags mask comp`: matches when `flags & mask == comp`.
    pub flags: Option<Inv<TcpFlags>>,
    /// `--tcp-option N`: matches when option kind N is present.
    pub option: Option<Inv<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpFlags {
    pub mask: u8,
    pub comp: u8,
}

/// `-m udp` (`struct xt_udp`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UdpMatch {
    pub sport: Option<Inv<PortRange>>,
    pub dport: Option<Inv<PortRange>>,
}

/// `-m icmp --icmp-type` (`struct ipt_icmp`): type and code range; `any` is type 0xFF, codes
/// 0..=0xFF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IcmpMatch {
    pub icmp_type: u8,
    pub code_lo: u8,
    pub code_hi: u8,
    pub invert: bool,
}

impl IcmpMatch {
    pub const ANY_TYPE: u8 = 0xFF;
}

/// Which ports `-m multiport` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MultiportDir {
    Source,
    Destination,
    /// `--ports`: source or destination.
    Either,
}

/// `-m multiport` (`struct xt_multiport_v1`): up to 15 ports, a range taking two slots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MultiportMatch {
    pub dir: MultiportDir,
    pub ports: Vec<PortRange>,
    pub invert: bool,
}

/// `-m iprange` (`struct xt_iprange_mtinfo`), inclusive ranges in host byte order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IprangeMatch {
    pub src: Option<Inv<(u32, u32)>>,
    pub dst: Option<Inv<(u32, u32)>>,
}

/// Conntrack states as bits (`XT_CONNTRACK_STATE_*` / `XT_STATE_*` layout).
pub mod ct_state {
    pub const INVALID: u16 = 1 << 0;
    pub const ESTABLISHED: u16 = 1 << 1;
    pub const RELATED: u16 = 1 << 2;
    pub const NEW: u16 = 1 << 3;
    pub const UNTRACKED: u16 = 1 << 6;
    pub const SNAT: u16 = 1 << 8;
    pub const DNAT: u16 = 1 << 9;
}

/// Conntrack status bits (`IPS_*`) that `--ctstatus` names.
pub mod ct_status {
    pub const NONE: u16 = 0;
    pub const EXPECTED: u16 = 1 << 0;
    pub const SEEN_REPLY: u16 = 1 << 1;
    pub const ASSURED: u16 = 1 << 2;
    pub const CONFIRMED: u16 = 1 << 3;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CtDir {
    Original,
    Reply,
}

/// `-m conntrack` (`struct xt_conntrack_mtinfo3`). Every option is optional and invertible.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConntrackMatch {
    pub state: Option<Inv<u16>>,
    pub proto: Option<Inv<u8>>,
    pub orig_src: Option<Inv<Ipv4Mask>>,
    pub orig_dst: Option<Inv<Ipv4Mask>>,
    pub repl_src: Option<Inv<Ipv4Mask>>,
    pub repl_dst: Option<Inv<Ipv4Mask>>,
    pub orig_src_port: Option<Inv<PortRange>>,
    pub orig_dst_port: Option<Inv<PortRange>>,
    pub repl_src_port: Option<Inv<PortRange>>,
    pub repl_dst_port: Option<Inv<PortRange>>,
    pub status: Option<Inv<u16>>,
    /// `--ctexpire lo[:hi]` in seconds.
    pub expire: Option<Inv<(u32, u32)>>,
    pub dir: Option<CtDir>,
}

/// `-m state --state` (`struct xt_state_info`), same bits as `ct_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateMatch {
    pub state: u16,
    pub invert: bool,
}

/// `-m mark --mark value[/mask]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MarkMatch {
    pub mark: u32,
    pub mask: u32,
    pub invert: bool,
}

/// Address types (`XT_ADDRTYPE_*` bits).
pub mod addr_type {
    pub const UNSPEC: u16 = 1 << 0;
    pub const UNICAST: u16 = 1 << 1;
    pub const LOCAL: u16 = 1 << 2;
    pub const BROADCAST: u16 = 1 << 3;
    pub const ANYCAST: u16 = 1 << 4;
    pub const MULTICAST: u16 = 1 << 5;
    pub const BLACKHOLE: u16 = 1 << 6;
    pub const UNREACHABLE: u16 = 1 << 7;
    pub const PROHIBIT: u16 = 1 << 8;
    pub const THROW: u16 = 1 << 9;
    pub const NAT: u16 = 1 << 10;
    pub const XRESOLVE: u16 = 1 << 11;
}

/// `-m addrtype` (revision 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AddrtypeMatch {
    pub src_type: Option<Inv<u16>>,
    pub dst_type: Option<Inv<u16>>,
    pub limit_iface_in: bool,
    pub limit_iface_out: bool,
}

/// `-m length --length lo[:hi]` (IP total length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LengthMatch {
    pub lo: u16,
    pub hi: u16,
    pub invert: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TtlOp {
    Eq,
    Ne,
    Lt,
    Gt,
}

/// `-m ttl` (`--ttl-eq`, `! --ttl-eq` is stored as `Ne`, `--ttl-lt`, `--ttl-gt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TtlMatch {
    pub op: TtlOp,
    pub value: u8,
}

/// `-m mac --mac-source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MacMatch {
    pub addr: [u8; 6],
    pub invert: bool,
}

/// `-m pkttype --pkt-type`: PACKET_HOST (0, "unicast"), PACKET_BROADCAST (1),
/// PACKET_MULTICAST (2), as in `linux/if_packet.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PkttypeMatch {
    pub pkttype: u8,
    pub invert: bool,
}

/// `-m limit` (`struct xt_rateinfo`): `avg` in units of 1/`LIMIT_SCALE` seconds per packet,
/// as iptables stores it; `burst` packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LimitMatch {
    pub avg: u32,
    pub burst: u32,
}

impl LimitMatch {
    /// `XT_LIMIT_SCALE`.
    pub const SCALE: u32 = 10000;
}

/// `-m tos --tos value[/mask]` (revision 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TosMatch {
    pub value: u8,
    pub mask: u8,
    pub invert: bool,
}

/// `-m dscp --dscp N` / `--dscp-class` (stored as the 6-bit value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DscpMatch {
    pub dscp: u8,
    pub invert: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatisticMode {
    /// `--probability p`, stored as iptables does: `p * 2^31` rounded (`0x80000000` = 1.0).
    Random { probability: u32 },
    /// `--every n --packet p`, stored as `every - 1` and `packet` like `xt_statistic_info`.
    Nth { every: u32, packet: u32 },
}

/// `-m statistic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatisticMatch {
    pub mode: StatisticMode,
    pub invert: bool,
}

/// One `-m` match of a rule. Implicit matches (`-p tcp --dport 22`) are stored as the explicit
/// match they become (`-m tcp`), in the position iptables puts them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Match {
    Tcp(TcpMatch),
    Udp(UdpMatch),
    Icmp(IcmpMatch),
    Multiport(MultiportMatch),
    Iprange(IprangeMatch),
    Conntrack(ConntrackMatch),
    State(StateMatch),
    Comment(String),
    Mark(MarkMatch),
    Addrtype(AddrtypeMatch),
    Length(LengthMatch),
    Ttl(TtlMatch),
    Mac(MacMatch),
    Pkttype(PkttypeMatch),
    Limit(LimitMatch),
    Tos(TosMatch),
    Dscp(DscpMatch),
    Statistic(StatisticMatch),
}

impl Match {
    /// The module name as written after `-m`.
    pub fn name(&self) -> &'static str {
        match self {
            Match::Tcp(_) => "tcp",
            Match::Udp(_) => "udp",
            Match::Icmp(_) => "icmp",
            Match::Multiport(_) => "multiport",
            Match::Iprange(_) => "iprange",
            Match::Conntrack(_) => "conntrack",
            Match::State(_) => "state",
            Match::Comment(_) => "comment",
            Match::Mark(_) => "mark",
            Match::Addrtype(_) => "addrtype",
            Match::Length(_) => "length",
            Match::Ttl(_) => "ttl",
            Match::Mac(_) => "mac",
            Match::Pkttype(_) => "pkttype",
            Match::Limit(_) => "limit",
            Match::Tos(_) => "tos",
            Match::Dscp(_) => "dscp",
            Match::Statistic(_) => "statistic",
        }
    }
}

//! Targets as data: the standard verdicts, jumps to user chains, and the target extensions.

use serde::{Deserialize, Serialize};

/// `--reject-with` types for IPv4 (`enum ipt_reject_with`), in iptables' order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectWith {
    IcmpNetUnreachable,
    IcmpHostUnreachable,
    IcmpProtUnreachable,
    IcmpPortUnreachable,
    /// Accepted by iptables for compatibility; the kernel treats it as port unreachable.
    IcmpEchoReply,
    IcmpNetProhibited,
    IcmpHostProhibited,
    TcpReset,
    IcmpAdminProhibited,
}

impl RejectWith {
    /// The name `-S`/save print.
    pub fn name(self) -> &'static str {
        match self {
            RejectWith::IcmpNetUnreachable => "icmp-net-unreachable",
            RejectWith::IcmpHostUnreachable => "icmp-host-unreachable",
            RejectWith::IcmpProtUnreachable => "icmp-proto-unreachable",
            RejectWith::IcmpPortUnreachable => "icmp-port-unreachable",
            RejectWith::IcmpEchoReply => "icmp-echo-reply",
            RejectWith::IcmpNetProhibited => "icmp-net-prohibited",
            RejectWith::IcmpHostProhibited => "icmp-host-prohibited",
            RejectWith::TcpReset => "tcp-reset",
            RejectWith::IcmpAdminProhibited => "icmp-admin-prohibited",
        }
    }

    /// ICMP destination-unreachable code sent for this type (`None` for a TCP reset).
    pub fn icmp_code(self) -> Option<u8> {
        Some(match self {
            RejectWith::IcmpNetUnreachable => 0,
            RejectWith::IcmpHostUnreachable => 1,
            RejectWith::IcmpProtUnreachable => 2,
            RejectWith::IcmpPortUnreachable | RejectWith::IcmpEchoReply => 3,
            RejectWith::IcmpNetProhibited => 9,
            RejectWith::IcmpHostProhibited => 10,
            RejectWith::IcmpAdminProhibited => 13,
            RejectWith::TcpReset => return None,
        })
    }
}

/// LOG flags (`IPT_LOG_*`).
pub mod log_flags {
    pub const TCPSEQ: u8 = 0x01;
    pub const TCPOPT: u8 = 0x02;
    pub const IPOPT: u8 = 0x04;
    pub const UID: u8 = 0x08;
    pub const MACDECODE: u8 = 0x20;
}

/// `-j LOG` (`struct ipt_log_info`): syslog level 0..=7 (default 4, not printed), prefix up to
/// 29 characters, flags from `log_flags`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogTarget {
    pub level: u8,
    pub prefix: String,
    pub flags: u8,
}

impl Default for LogTarget {
    fn default() -> Self {
        LogTarget { level: 4, prefix: String::new(), flags: 0 }
    }
}

/// `-j MARK`, normalised to `--set-xmark value/mask` (revision 2): the new mark is
/// `(mark & !mask) ^ value`. `--set-mark v/m` is `v/(m|v)`... see the ext module for each form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MarkTarget {
    pub value: u32,
    pub mask: u32,
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// No `-j`: the rule only counts.
    None,
    Accept,
    Drop,
    Return,
    /// `-j CHAIN`.
    Jump(String),
    /// `-g CHAIN`.
    Goto(String),
    Reject(RejectWith),
    Log(LogTarget),
    Mark(MarkTarget),
}

impl Target {
    /// Whether a matching packet continues with the next rule (LOG, MARK, no target).
    pub fn is_non_terminating(&self) -> bool {
        matches!(self, Target::None | Target::Log(_) | Target::Mark(_))
    }
}

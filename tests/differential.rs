//! Differential verification against the kernel's netfilter (root only): random INPUT,
//! FORWARD and OUTPUT rulesets, loaded with our `iptables-restore` into one firewall and with
//! iptables-legacy into an identical twin (see `common::topo`), and the same crafted packets
//! sent through both, from either side and to the firewall itself. Per packet the outcome
//! (delivered to the other side, and any reply the sender got: a REJECT's, or for INPUT the
//! firewall stack's own answer) must be the same, and at the end so must every rule's packet
//! and byte counters (`iptables-save -c`). A mismatch is shrunk (rules removed while it
//! persists) and printed as the seed, the rules and the packets. OUTPUT is covered by packets
//! the firewall sends from a raw socket.
//!
//! Rulesets: addresses and prefixes (nested, overlapping, negated), iprange, protocols, port
//! ranges and multiport, TCP flags, ICMP types, interfaces with wildcards, user chains with
//! -j/-g/RETURN, policies, rules without target, REJECT (in OUTPUT too). Packets aim at the
//! edges of the pools the rules draw from (prefix ends, range ends +-1, each flag
//! combination); one in ten stateless packets has a wrong transport checksum. One ruleset in
//! four pads FORWARD so that the datapath patches changes in: two random FORWARD rules are
//! deleted with `iptables -D` after the restore, the first added with `iptables -I FORWARD 1`
//! (before the padding), one further down with `iptables -I FORWARD n` where it belongs, one
//! restored as a placeholder and then put in its place with `iptables -R FORWARD n`, and the
//! last two with `iptables -A`, on both firewalls.
//!
//! `BPFIPT_DIFF_SEED` (default fixed), `BPFIPT_DIFF_RULESETS` (default 12) and
//! `BPFIPT_DIFF_PACKETS` (per ruleset, default 40) set the budget; `scripts/differential.sh`
//! runs it for as long as asked with a fresh seed.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::topo::{sh, Topo};
use common::{ScratchDir, Tools};

use bpf_iptables::testutil::{inet_checksum as csum, SplitMix64 as Rng};

const SRC_NETS: &[&str] = &["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "10.1.2.128/25", "192.168.0.0/16", "172.16.0.0/12", "198.18.1.0/24", "10.0.0.0/255.0.255.0"];
const DST_NETS: &[&str] = &["198.18.1.1/32", "198.18.0.0/16", "198.18.2.0/24", "198.18.2.0/25", "198.18.2.128/25", "198.18.2.2/32", "198.18.2.3/32", "198.18.2.254/31"];
const SRC_ADDRS: &[&str] = &["10.0.0.0", "10.0.0.1", "10.1.1.255", "10.1.2.0", "10.1.2.3", "10.1.2.4", "10.1.2.127", "10.1.2.128", "10.1.2.255", "10.1.3.0", "10.255.255.255", "11.0.0.0", "192.168.0.1", "192.168.255.255", "172.16.0.0", "172.31.255.255", "172.32.0.0", "198.18.1.2", "198.18.1.77", "9.255.255.255"];
const DST_ADDRS: &[&str] = &["198.18.2.2", "198.18.2.3", "198.18.2.127", "198.18.2.128", "198.18.2.254"];
const PORTS: &[u16] = &[1, 21, 22, 23, 53, 79, 80, 81, 443, 1023, 1024, 8080, 65534, 65535];
const RANGES: &[&str] = &["22", "80", "1:1023", "1024:65535", "79:81", "22:23", "53", "65535", "443:8080"];
const TCP_FLAGS: &[(u8, &str)] = &[(0x02, "SYN"), (0x12, "SYN,ACK"), (0x10, "ACK"), (0x04, "RST"), (0x11, "FIN,ACK"), (0x00, "none"), (0x29, "FIN,PSH,URG")];
const ICMP: &[(u8, u8)] = &[(8, 0), (0, 0), (3, 3), (11, 0), (3, 1)];

fn neg(r: &mut Rng) -> &'static str {
    if r.pct(25) {
        "! "
    } else {
        ""
    }
}

/// One rule spec (after `-A CHAIN`), `chains` being the user chains it may jump to;
/// `stateful`: conntrack/state matches too, and no tcp-reset (a reset answering a segment of
/// a stateful round could not be told from the round's own).
fn gen_rule(r: &mut Rng, chains: &[&str], in_user: bool, stateful: bool, hook: &str) -> String {
    let mut s = String::new();
    if stateful && r.pct(60) {
        let m = r.pick(&[
            "-m conntrack --ctstate ESTABLISHED,RELATED",
            "-m conntrack --ctstate NEW",
            "-m conntrack --ctstate INVALID",
            "-m conntrack ! --ctstate NEW",
            "-m conntrack --ctstate RELATED",
            "-m state --state ESTABLISHED",
            "-m state --state NEW,INVALID",
            "-m conntrack --ctstate ESTABLISHED --ctdir REPLY",
            "-m conntrack --ctstate ESTABLISHED --ctdir ORIGINAL",
            "-m conntrack --ctstatus SEEN_REPLY",
            "-m conntrack --ctproto udp --ctstate NEW",
        ]);
        let _ = write!(s, "{m} ");
    }
    if r.pct(40) {
        let _ = write!(s, "{}-s {} ", neg(r), r.pick(SRC_NETS));
    }
    if r.pct(30) {
        let _ = write!(s, "{}-d {} ", neg(r), r.pick(DST_NETS));
    }
    if hook != "OUTPUT" && r.pct(20) {
        let _ = write!(s, "{}-i {} ", neg(r), r.pick(&["f0", "f1", "f+", "x+"]));
    }
    if hook != "INPUT" && r.pct(15) {
        let _ = write!(s, "{}-o {} ", neg(r), r.pick(&["f1", "f0", "f+"]));
    }
    if r.pct(10) {
        let (lo, hi) = r.pick(&[("10.1.2.0", "10.1.2.3"), ("10.0.0.1", "10.1.2.127"), ("192.168.0.0", "198.18.1.2")]);
        let _ = write!(s, "-m iprange {}--src-range {lo}-{hi} ", neg(r));
    }
    match r.below(4) {
        0 => {
            s.push_str("-p tcp ");
            if r.pct(50) {
                let _ = write!(s, "{}--dport {} ", neg(r), r.pick(RANGES));
            }
            if r.pct(30) {
                let _ = write!(s, "{}--sport {} ", neg(r), r.pick(RANGES));
            }
            match r.below(4) {
                0 => {
                    let _ = write!(s, "{}--syn ", neg(r));
                }
                1 => {
                    let (mask, comp) = r.pick(&[("SYN,ACK", "SYN"), ("ALL", "ACK"), ("SYN,RST,ACK,FIN", "RST"), ("FIN,ACK", "FIN,ACK"), ("ALL", "NONE")]);
                    let _ = write!(s, "{}--tcp-flags {mask} {comp} ", neg(r));
                }
                _ => {}
            }
            if r.pct(15) {
                let _ = write!(s, "-m multiport {}--dports 22,80,1000:1100 ", neg(r));
            }
        }
        1 => {
            s.push_str("-p udp ");
            if r.pct(60) {
                let _ = write!(s, "{}--dport {} ", neg(r), r.pick(RANGES));
            }
            if r.pct(20) {
                let _ = write!(s, "-m multiport {}--ports 53,80,65535 ", neg(r));
            }
        }
        2 => {
            s.push_str("-p icmp ");
            if r.pct(60) {
                let _ = write!(s, "{}--icmp-type {} ", neg(r), r.pick(&["echo-request", "echo-reply", "3/3", "destination-unreachable", "time-exceeded", "any"]));
            }
        }
        _ => {
            if r.pct(15) {
                let _ = write!(s, "{}-p {} ", neg(r), r.pick(&["tcp", "udp", "icmp"]));
            }
        }
    }
    let tcp = s.contains("-p tcp ") && !s.contains("! -p");
    let mut targets = vec!["-j ACCEPT", "-j DROP", "-j REJECT", "", "-j REJECT --reject-with icmp-host-prohibited"];
    if tcp && !stateful {
        targets.push("-j REJECT --reject-with tcp-reset");
    }
    if in_user {
        targets.push("-j RETURN");
    }
    let mut t = r.pick(&targets).to_string();
    if !in_user && !chains.is_empty() && r.pct(30) {
        t = format!("{} {}", r.pick(&["-j", "-g"]), r.pick(chains));
    }
    s.push_str(&t);
    s.trim_end().to_string()
}

/// A FORWARD ruleset as `(chain, spec)` lines plus the policy.
struct Ruleset {
    policy: &'static str,
    input_policy: &'static str,
    output_policy: &'static str,
    rules: Vec<(String, String)>,
    /// FORWARD starts with this many rules no packet matches: big enough a hook for rules
    /// appended with `-A` to go in place (after the classifier's rules, see README).
    padding: u32,
    /// The last this many FORWARD rules are added with `iptables -A` after the restore.
    appended: usize,
    /// FORWARD rules restored after the padding, then deleted by spec with `iptables -D` (so
    /// deletions in place are compared too).
    decoys: Vec<String>,
    /// The first this many FORWARD rules are added with `iptables -I FORWARD 1` after the
    /// restore (before the padding, which no packet matches).
    inserted: usize,
    /// Of the FORWARD rules left after those (and before the appended ones), the second is
    /// added with `iptables -I FORWARD n` and the fourth restored as a placeholder that
    /// `iptables -R FORWARD n` replaces with it, when `in_place` (and there are so many).
    in_place: bool,
}

/// What `-R` replaces: a rule no packet matches, whose place a patch can take.
const PLACEHOLDER: &str = "-s 192.0.2.99/32 -p udp -j DROP";

impl Ruleset {
    /// The restore input, then the commands that complete the ruleset after it (`iptables`
    /// arguments, in order).
    fn restore_input(&self) -> (String, Vec<String>) {
        let mut s = format!(
            "*filter\n:INPUT {} [0:0]\n:FORWARD {} [0:0]\n:OUTPUT {} [0:0]\n:u1 - [0:0]\n:u2 - [0:0]\n",
            self.input_policy, self.policy, self.output_policy
        );
        for i in 0..self.padding {
            let _ = writeln!(s, "-A FORWARD -s 100.64.{}.{}/32 -p udp -m udp --dport {} -j DROP", i >> 8, i & 255, 1 + i);
        }
        for spec in &self.decoys {
            let _ = writeln!(s, "-A FORWARD {spec}");
        }
        let forward: Vec<usize> = (0..self.rules.len()).filter(|&i| self.rules[i].0 == "FORWARD").collect();
        let held: Vec<usize> = forward[forward.len() - self.appended.min(forward.len())..].to_vec();
        let head: Vec<usize> = forward.iter().copied().filter(|i| !held.contains(i)).take(self.inserted).collect();
        let rest: Vec<usize> = forward.iter().copied().filter(|i| !held.contains(i) && !head.contains(i)).collect();
        let (middle, replaced) = match self.in_place {
            true => (rest.get(1).copied(), rest.get(3).copied()),
            false => (None, None),
        };
        for (i, (c, spec)) in self.rules.iter().enumerate() {
            if Some(i) == replaced {
                let _ = writeln!(s, "-A {c} {PLACEHOLDER}");
            } else if !held.contains(&i) && !head.contains(&i) && Some(i) != middle {
                let _ = writeln!(s, "-A {c} {spec}");
            }
        }
        s.push_str("COMMIT\n");
        let mut cmds: Vec<String> = self.decoys.iter().map(|spec| format!("-D FORWARD {spec}")).collect();
        cmds.extend(head.iter().rev().map(|&i| format!("-I FORWARD 1 {}", self.rules[i].1)));
        // rule numbers once everything is in: the head, the padding, the rest in order
        let number = |i: usize| head.len() + self.padding as usize + rest.iter().position(|&r| r == i).expect("in the rest") + 1;
        cmds.extend(middle.map(|i| format!("-I FORWARD {} {}", number(i), self.rules[i].1)));
        cmds.extend(replaced.map(|i| format!("-R FORWARD {} {}", number(i), self.rules[i].1)));
        cmds.extend(held.iter().map(|&i| format!("-A FORWARD {}", self.rules[i].1)));
        (s, cmds)
    }
}

fn gen_ruleset(r: &mut Rng, stateful: bool) -> Ruleset {
    let mut rules = Vec::new();
    for c in ["u1", "u2"] {
        for _ in 0..r.below(4) {
            rules.push((c.to_string(), gen_rule(r, &[], true, stateful, "FORWARD")));
        }
    }
    for _ in 1..=1 + r.below(12) {
        rules.push(("FORWARD".to_string(), gen_rule(r, &["u1", "u2"], false, stateful, "FORWARD")));
    }
    for _ in 0..r.below(6) {
        rules.push(("INPUT".to_string(), gen_rule(r, &[], false, stateful, "INPUT")));
    }
    for _ in 0..r.below(5) {
        rules.push(("OUTPUT".to_string(), gen_rule(r, &[], false, stateful, "OUTPUT")));
    }
    // Not compared: a reset we send being rejected again in OUTPUT with an ICMP error
    // (netfilter then sends an error about its own reset, toward the reset's source; we drop
    // the reset and send nothing). See README, Limitations.
    if rules.iter().any(|(_, spec)| spec.contains("tcp-reset")) {
        for (c, spec) in rules.iter_mut() {
            if c == "OUTPUT" && spec.contains("-j REJECT") && !spec.contains("tcp-reset") {
                *spec = spec[..spec.find("-j REJECT").expect("target")].to_string() + "-j DROP";
            }
        }
    }
    // One ruleset in four ends its FORWARD chain with rules appended in place, and has two
    // more that are deleted (in place unless they jump or end the chain).
    let per = bpf_iptables::datapath::skel::types::bpfipt_const::BPFIPT_IMG_TAIL_PER.0;
    let (padding, appended) = if r.pct(25) { (2 * per, 2) } else { (0, 0) };
    let decoys = if padding > 0 { (0..2).map(|_| gen_rule(r, &["u1", "u2"], false, stateful, "FORWARD")).collect() } else { Vec::new() };
    let inserted = if padding > 0 { 1 } else { 0 };
    let in_place = padding > 0;
    Ruleset {
        policy: r.pick(&["ACCEPT", "DROP"]),
        input_policy: r.pick(&["ACCEPT", "DROP"]),
        output_policy: r.pick(&["ACCEPT", "ACCEPT", "DROP"]),
        rules,
        padding,
        appended,
        decoys,
        inserted,
        in_place,
    }
}

/// Which side sends a packet: the sender `s` (through f0 -> f1 to the receiver) or the
/// receiver `r` (the other way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    S2R,
    R2S,
    /// Sent by the firewall itself (OUTPUT), with TTL 65 to tell it from its replies.
    Out,
}

#[derive(Clone, Debug)]
struct Packet {
    dir: Dir,
    src: &'static str,
    dst: &'static str,
    proto: u8,
    sport: u16,
    dport: u16,
    flags: (u8, &'static str),
    icmp: (u8, u8),
    /// TCP sequence and acknowledgement numbers (stateful rounds); else derived from the id.
    seq_ack: Option<(u32, u32)>,
    payload: u16,
    /// ICMP echo identifier.
    echo_id: u16,
    /// An ICMP error's quoted packet: the header of packet `quote` as it was sent.
    quote: Option<Box<(Packet, u16)>>,
    /// A wrong transport checksum (stateless rounds only: netfilter's tracker would call the
    /// packet INVALID, ours does not check).
    bad_csum: bool,
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.dir {
            Dir::R2S => write!(f, "from r: ")?,
            Dir::Out => write!(f, "from the firewall: ")?,
            Dir::S2R => {}
        }
        if let Some((s, a)) = self.seq_ack {
            write!(f, "seq {s} ack {a} len {} ", self.payload)?;
        }
        if let Some(q) = &self.quote {
            write!(f, "quoting packet {} ", q.1)?;
        }
        if self.bad_csum {
            write!(f, "bad checksum ")?;
        }
        match self.proto {
            6 => write!(f, "tcp {}:{} -> {}:{} [{}]", self.src, self.sport, self.dst, self.dport, self.flags.1),
            17 => write!(f, "udp {}:{} -> {}:{}", self.src, self.sport, self.dst, self.dport),
            _ => write!(f, "icmp {} -> {} type {}/{}", self.src, self.dst, self.icmp.0, self.icmp.1),
        }
    }
}

fn gen_packet(r: &mut Rng) -> Packet {
    let dir = if r.pct(25) { Dir::R2S } else { Dir::S2R };
    let (a, b) = (r.pick(SRC_ADDRS), r.pick(DST_ADDRS));
    let (src, mut dst) = if dir == Dir::S2R { (a, b) } else { (b, a) };
    // INPUT: to the firewall's own address on that side (its stack answers what it accepts:
    // port unreachable, reset, echo reply).
    if r.pct(20) {
        dst = if dir == Dir::S2R { "198.18.1.1" } else { "198.18.2.1" };
    }
    // OUTPUT: from the firewall's address on the side it leaves by.
    let (dir, src) = if r.pct(15) {
        (Dir::Out, if dst.starts_with("198.18.2.") { "198.18.2.1" } else { "198.18.1.1" })
    } else {
        (dir, src)
    };
    let dst = if dir == Dir::Out && (dst == "198.18.1.1" || dst == "198.18.2.1") { r.pick(DST_ADDRS) } else { dst };
    Packet {
        dir,
        src,
        dst,
        proto: r.pick(&[6, 6, 17, 17, 1]),
        sport: r.pick(PORTS),
        dport: r.pick(PORTS),
        flags: r.pick(TCP_FLAGS),
        icmp: r.pick(ICMP),
        seq_ack: None,
        payload: 0,
        echo_id: 0x1234,
        quote: None,
        bad_csum: r.pct(10),
    }
}

/// A stateful round: `count` short connections between the sender's and the receiver's pools,
/// each a script of packets both ways (TCP handshakes, data, closes, resets, out-of-state
/// segments; UDP requests and replies; ICMP echo, and errors quoting a flow or nothing).
/// Every connection gets its own client port, so state left by earlier rounds never meets it.
fn gen_sessions(r: &mut Rng, count: usize, port_base: &mut u16) -> Vec<Packet> {
    let mut out: Vec<Packet> = Vec::new();
    for _ in 0..count {
        *port_base = port_base.wrapping_add(1).max(20000);
        let (c, v, cp, vp) = (r.pick(SRC_ADDRS), r.pick(DST_ADDRS), *port_base, r.pick(PORTS));
        let pkt = |dir: Dir, proto: u8| {
            let (src, dst, sport, dport) = if dir == Dir::S2R { (c, v, cp, vp) } else { (v, c, vp, cp) };
            Packet { dir, src, dst, proto, sport, dport, flags: (0, ""), icmp: (0, 0), seq_ack: None, payload: 0, echo_id: cp, quote: None, bad_csum: false }
        };
        let tcp = |dir: Dir, flags: (u8, &'static str), seq: u32, ack: u32, len: u16| Packet { flags, seq_ack: Some((seq, ack)), payload: len, ..pkt(dir, 6) };
        let (x, y) = (1_000_000u32.wrapping_mul(cp as u32), 7_000_000u32.wrapping_mul(cp as u32));
        let (syn, synack, ack, pshack, finack, rst) = ((0x02, "SYN"), (0x12, "SYN,ACK"), (0x10, "ACK"), (0x18, "PSH,ACK"), (0x11, "FIN,ACK"), (0x04, "RST"));
        let (s2r, r2s) = (Dir::S2R, Dir::R2S);
        match r.below(7) {
            0 | 1 => {
                // A whole connection from the sender, maybe reset half-way.
                out.push(tcp(s2r, syn, x, 0, 0));
                out.push(tcp(r2s, synack, y, x + 1, 0));
                out.push(tcp(s2r, ack, x + 1, y + 1, 0));
                out.push(tcp(s2r, pshack, x + 1, y + 1, 10));
                out.push(tcp(r2s, ack, y + 1, x + 11, 0));
                if r.pct(30) {
                    out.push(tcp(r2s, rst, y + 1, 0, 0));
                    out.push(tcp(s2r, pshack, x + 11, y + 1, 5));
                } else {
                    out.push(tcp(s2r, finack, x + 11, y + 1, 0));
                    out.push(tcp(r2s, finack, y + 1, x + 12, 0));
                    out.push(tcp(s2r, ack, x + 12, y + 2, 0));
                }
            }
            2 => {
                // Opened from the receiver's side.
                out.push(tcp(r2s, syn, y, 0, 0));
                out.push(tcp(s2r, synack, x, y + 1, 0));
                out.push(tcp(r2s, ack, y + 1, x + 1, 0));
            }
            3 => {
                // Out of state: segments of no connection, an unanswered SYN's stray SYN-ACK.
                out.push(tcp(s2r, ack, x, y, 0));
                out.push(tcp(r2s, synack, y, x + 1, 0));
                out.push(tcp(s2r, rst, x, 0, 0));
                out.push(tcp(s2r, (0x03, "SYN,FIN"), x, 0, 0));
            }
            4 => {
                // UDP request, reply, request.
                out.push(pkt(s2r, 17));
                out.push(pkt(r2s, 17));
                out.push(pkt(s2r, 17));
            }
            5 => {
                // ICMP echo and reply, then a reply nobody asked for.
                out.push(Packet { icmp: (8, 0), ..pkt(s2r, 1) });
                out.push(Packet { icmp: (0, 0), ..pkt(r2s, 1) });
                out.push(Packet { icmp: (0, 0), echo_id: cp ^ 0x5555, ..pkt(r2s, 1) });
            }
            _ => {
                // A UDP request answered by a port unreachable (RELATED), and an error
                // quoting a flow that never was (INVALID).
                let req = pkt(s2r, 17);
                let id = out.len() as u16;
                out.push(req.clone());
                out.push(Packet { icmp: (3, 3), quote: Some(Box::new((req.clone(), id))), ..pkt(r2s, 1) });
                let never = Packet { sport: cp ^ 0x4000, ..req };
                out.push(Packet { icmp: (3, 3), quote: Some(Box::new((never, 0xfff0))), ..pkt(r2s, 1) });
            }
        }
    }
    out
}

fn ip4(a: &str) -> [u8; 4] {
    a.parse::<std::net::Ipv4Addr>().expect("address").octets()
}


/// The Ethernet frame of packet `p`, IP id `id` (which identifies it), TCP seq and ack
/// `id << 16` (so a reset names it too).
fn frame(p: &Packet, id: u16, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let l4: Vec<u8> = match p.proto {
        6 => {
            let mut t = vec![0u8; 20 + p.payload as usize];
            let (seq, ack) = p.seq_ack.unwrap_or(((id as u32) << 16, (id as u32) << 16));
            t[0..2].copy_from_slice(&p.sport.to_be_bytes());
            t[2..4].copy_from_slice(&p.dport.to_be_bytes());
            t[4..8].copy_from_slice(&seq.to_be_bytes());
            t[8..12].copy_from_slice(&ack.to_be_bytes());
            t[12] = 5 << 4;
            t[13] = p.flags.0;
            t[14..16].copy_from_slice(&8192u16.to_be_bytes());
            t
        }
        17 => {
            let mut u = vec![0u8; 16];
            u[0..2].copy_from_slice(&p.sport.to_be_bytes());
            u[2..4].copy_from_slice(&p.dport.to_be_bytes());
            u[4..6].copy_from_slice(&16u16.to_be_bytes());
            u
        }
        _ => {
            let mut e = vec![p.icmp.0, p.icmp.1, 0, 0, 0, 0, 0, 1];
            e[4..6].copy_from_slice(&p.echo_id.to_be_bytes());
            e[6..8].copy_from_slice(&id.to_be_bytes()); // echo sequence: names the packet
            if p.icmp.0 == 3 || p.icmp.0 == 11 {
                match &p.quote {
                    // The quoted packet's IP header and first 8 bytes, as it was sent.
                    Some(q) => {
                        let f = frame(&q.0, q.1, [0; 6], [0; 6]);
                        e[4..8].fill(0);
                        e.extend_from_slice(&f[14..14 + 28]);
                    }
                    // A quoted header (of a packet this sender never sent).
                    None => {
                        e.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
                        e.extend_from_slice(&ip4(p.dst));
                        e.extend_from_slice(&ip4(p.src));
                        e.extend_from_slice(&[0, 53, 0x30, 0x39, 0, 8, 0, 0]);
                    }
                }
            }
            let ck = csum(&e);
            e[2..4].copy_from_slice(&ck.to_be_bytes());
            e
        }
    };
    // Transport checksums: netfilter's REJECT does not answer a packet whose checksum it
    // verifies and finds wrong (nf_send_unreach, nf_send_reset); these raw frames are
    // verified (CHECKSUM_NONE), a stack-generated packet on a veth never is
    // (CHECKSUM_PARTIAL).
    let mut l4 = l4;
    if p.proto == 6 || p.proto == 17 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip4(p.src));
        pseudo.extend_from_slice(&ip4(p.dst));
        pseudo.extend_from_slice(&[0, p.proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let ck = csum(&pseudo);
        let at = if p.proto == 6 { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&ck.to_be_bytes());
    }
    if p.bad_csum {
        let at = match p.proto {
            6 => 16,
            17 => 6,
            _ => 2,
        };
        l4[at] ^= 0x55;
    }
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let tot = 20 + l4.len() as u16;
    let ttl = if p.dir == Dir::Out { 65 } else { 64 };
    let mut iph = vec![0x45, 0, 0, 0, 0, 0, 0, 0, ttl, p.proto, 0, 0];
    iph[2..4].copy_from_slice(&tot.to_be_bytes());
    iph[4..6].copy_from_slice(&id.to_be_bytes());
    iph.extend_from_slice(&ip4(p.src));
    iph.extend_from_slice(&ip4(p.dst));
    let ck = csum(&iph);
    iph[10..12].copy_from_slice(&ck.to_be_bytes());
    f.extend(iph);
    f.extend(l4);
    f
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let file = fs::File::open(&path).expect("netns");
            // SAFETY: moves only this short-lived thread.
            assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

/// A packet socket bound to interface `dev` of the calling thread's namespace.
fn packet_socket(dev: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(dev).expect("name");
    // SAFETY: NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex > 0, "no {dev}");
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll of the given size.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32) };
    assert_eq!(rc, 0, "bind {dev}: {}", std::io::Error::last_os_error());
    fd
}

/// A raw IPv4 socket that sends whole IP packets (IP_HDRINCL) from the calling thread's
/// namespace, through its OUTPUT hook.
fn raw_ip_socket() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Sends IP packet `ip` to `dst`; an error (the OUTPUT chain dropped it) is an outcome too,
/// and seen as "not delivered".
fn send_raw_ip(fd: &std::os::fd::OwnedFd, ip: &[u8], dst: &str) {
    // SAFETY: sockaddr_in is plain data.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as u16;
    to.sin_addr.s_addr = u32::from_ne_bytes(ip4(dst));
    // SAFETY: ip and to are valid for their lengths.
    unsafe {
        libc::sendto(fd.as_raw_fd(), ip.as_ptr().cast(), ip.len(), 0, (&to as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32)
    };
}

/// Every frame received on `fd` so far (non-blocking drain; the socket's own transmissions,
/// PACKET_OUTGOING, left out).
fn drain(fd: &std::os::fd::OwnedFd) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    loop {
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf and from are valid for their lengths.
        let n = unsafe {
            libc::recvfrom(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT, (&mut from as *mut libc::sockaddr_ll).cast(), &mut len)
        };
        if n <= 0 {
            return out;
        }
        if from.sll_pkttype != libc::PACKET_OUTGOING as u8 {
            out.push(buf[..n as usize].to_vec());
        }
    }
}

fn mac_of(t: &Topo, ns: &str, dev: &str) -> [u8; 6] {
    let o = t.exec(ns, &["cat", &format!("/sys/class/net/{dev}/address")]);
    let text = String::from_utf8_lossy(&o.stdout);
    let mut m = [0u8; 6];
    for (i, p) in text.trim().split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).expect("mac");
    }
    m
}

/// What became of one packet: delivered to the receiver, and the reply the sender got.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    delivered: bool,
    reply: Option<String>,
}

/// The outcome of each packet from the frames captured at the sender and the receiver.
/// Our packets leave with TTL 64, so a forwarded one arrives with 63; what the firewall itself
/// sends (REJECT replies) arrives with 64.
fn outcomes(packets: &[Packet], at_s: &[Vec<u8>], at_r: &[Vec<u8>]) -> Vec<Outcome> {
    let n = packets.len();
    let mut out = vec![Outcome { delivered: false, reply: None }; n];
    let ipv4 = |f: &&Vec<u8>| f.len() >= 34 && f[12] == 8 && f[13] == 0;
    for (side, frames) in [(Dir::S2R, at_r), (Dir::R2S, at_s)] {
        // `side`: the direction of the packets delivered here; replies here answer the others.
        for f in frames.iter().filter(ipv4) {
            let (ttl, proto) = (f[22], f[23]);
            let ihl = (f[14] & 15) as usize * 4;
            let l4 = 14 + ihl;
            if ttl == 63 || ttl == 65 {
                let id = u16::from_be_bytes([f[18], f[19]]) as usize;
                if id < n && packets[id].dir == if ttl == 65 { Dir::Out } else { side } {
                    out[id].delivered = true;
                }
                continue;
            }
            let mut reply = |id: usize, what: String| {
                if id < n && packets[id].dir != side && packets[id].dir != Dir::Out {
                    out[id].reply = Some(what);
                }
            };
            match proto {
                1 if f.len() >= l4 + 8 && f[l4] == 0 => {
                    // The firewall's own echo reply: its sequence is our id.
                    reply(u16::from_be_bytes([f[l4 + 6], f[l4 + 7]]) as usize, "echo-reply".into());
                }
                1 if f.len() >= l4 + 8 + 20 && f[l4] != 8 && f[l4] != 0 => {
                    // An ICMP error quoting our packet: its IP id.
                    reply(u16::from_be_bytes([f[l4 + 12], f[l4 + 13]]) as usize, format!("icmp {}/{}", f[l4], f[l4 + 1]));
                }
                6 if f.len() >= l4 + 20 && f[l4 + 13] & 0x04 != 0 => {
                    // A reset: it acknowledges our seq (id << 16) + 1 (SYN) or the segment.
                    let ack = u32::from_be_bytes([f[l4 + 8], f[l4 + 9], f[l4 + 10], f[l4 + 11]]);
                    let seq = u32::from_be_bytes([f[l4 + 4], f[l4 + 5], f[l4 + 6], f[l4 + 7]]);
                    reply(if ack != 0 { (ack >> 16) as usize } else { (seq >> 16) as usize }, "tcp-reset".into());
                }
                _ => {}
            }
        }
    }
    out
}

/// One implementation's firewall: topology, receiver MACs, a loaded ruleset.
struct Twin {
    t: Topo,
    tools: Tools,
    f0_mac: [u8; 6],
    s0_mac: [u8; 6],
    f1_mac: [u8; 6],
    r0_mac: [u8; 6],
}

impl Twin {
    fn new(tools: Tools, purpose: &str) -> Twin {
        let mut t = Topo::new(purpose);
        if tools.is_ours() {
            t.on_drop_in_fw(&[env!("CARGO_BIN_EXE_bpf-iptables"), "--reset"]);
        }
        for k in ["all", "default", "f0", "f1"] {
            sh(&["ip", "netns", "exec", &t.f, "sysctl", "-qw", &format!("net.ipv4.conf.{k}.rp_filter=0")]);
        }
        // netfilter's REJECT goes through icmp_send's rate limits; ours does not.
        let _ = t.exec(&t.f, &["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv4.icmp_msgs_burst=100000", "net.ipv4.icmp_msgs_per_sec=100000"]);
        // The end hosts' own stacks stay silent (their answers would cross the firewall too).
        for ns in [&t.s, &t.r] {
            sh(&["ip", "netns", "exec", ns, "iptables-legacy", "-A", "INPUT", "-j", "DROP"]);
        }
        // The receiver answers ARP for every destination we use.
        let r0 = mac_of(&t, &t.r, "r0");
        let mac = r0.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        for d in DST_ADDRS {
            sh(&["ip", "-n", &t.f, "neigh", "replace", d, "lladdr", &mac, "dev", "f1", "nud", "permanent"]);
        }
        // Replies to the sender's pool addresses go back out of f0 to the sender.
        let s0_mac = mac_of(&t, &t.s, "s0");
        let smac = s0_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        for a in SRC_ADDRS {
            sh(&["ip", "-n", &t.f, "route", "replace", &format!("{a}/32"), "dev", "f0"]);
            sh(&["ip", "-n", &t.f, "neigh", "replace", a, "lladdr", &smac, "dev", "f0", "nud", "permanent"]);
        }
        let f0_mac = mac_of(&t, &t.f, "f0");
        let f1_mac = mac_of(&t, &t.f, "f1");
        Twin { t, tools, f0_mac, s0_mac, f1_mac, r0_mac: r0 }
    }

    fn load(&self, rs: &Ruleset, dir: &ScratchDir) -> Result<(), String> {
        let file = dir.path().join(format!("rules-{}", self.tools.label()));
        let (input, cmds) = rs.restore_input();
        fs::write(&file, input).expect("write rules");
        let restore = self.tools.bin("iptables-restore");
        let o = self.t.exec(&self.t.f, &[restore.to_str().expect("path"), file.to_str().expect("path")]);
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        let iptables = self.tools.bin("iptables");
        for args in cmds {
            let o = self.t.exec(&self.t.f, &["sh", "-c", &format!("{} {args}", iptables.to_str().expect("path"))]);
            if !o.status.success() {
                return Err(format!("{args}: {}", String::from_utf8_lossy(&o.stderr)));
            }
        }
        Ok(())
    }

    /// Sends the packets (IP ids 0..), returns their outcomes and the counters.
    fn run(&self, packets: &[Packet]) -> (Vec<Outcome>, String) {
        // Packet sockets stay in the namespace they were made in, whichever thread uses them.
        let s_sock = in_ns(&self.t.s, || packet_socket("s0"));
        let r_sock = in_ns(&self.t.r, || packet_socket("r0"));
        let f_sock = in_ns(&self.t.f, raw_ip_socket);
        drain(&s_sock);
        drain(&r_sock);
        for (i, p) in packets.iter().enumerate() {
            let (sock, f) = match p.dir {
                Dir::S2R => (&s_sock, frame(p, i as u16, self.f0_mac, self.s0_mac)),
                Dir::R2S => (&r_sock, frame(p, i as u16, self.f1_mac, self.r0_mac)),
                Dir::Out => {
                    // IP id 0 would be replaced by the kernel's: packet 0 is never OUTPUT's.
                    if i > 0 {
                        send_raw_ip(&f_sock, &frame(p, i as u16, [0; 6], [0; 6])[14..], p.dst);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
            };
            // SAFETY: f is valid for its length; the socket is bound to its interface.
            let n = unsafe { libc::send(sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            assert_eq!(n as usize, f.len(), "send: {}", std::io::Error::last_os_error());
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(300));
        let (at_s, at_r) = (drain(&s_sock), drain(&r_sock));
        let save = self.tools.bin("iptables-save");
        let o = self.t.exec(&self.t.f, &[save.to_str().expect("path"), "-c"]);
        let counters = common::strip_save_comments(&String::from_utf8_lossy(&o.stdout))
            .lines()
            .filter(|l| l.starts_with(':') || l.contains("-A "))
            .collect::<Vec<_>>()
            .join("\n");
        (outcomes(packets, &at_s, &at_r), counters)
    }
}

/// Outcomes seen (delivered, rejected, dropped) across a run: a run where every packet met the
/// same fate tested nothing.
#[derive(Default)]
struct Tally {
    delivered: usize,
    rejected: usize,
    dropped: usize,
}

/// The first difference between the twins for `rs` and `packets`, if any.
fn difference(ours: &Twin, legacy: &Twin, rs: &Ruleset, packets: &[Packet], dir: &ScratchDir) -> Option<String> {
    difference_tallied(ours, legacy, rs, packets, dir, &mut Tally::default())
}

fn difference_tallied(ours: &Twin, legacy: &Twin, rs: &Ruleset, packets: &[Packet], dir: &ScratchDir, tally: &mut Tally) -> Option<String> {
    let (a, b) = (ours.load(rs, dir), legacy.load(rs, dir));
    match (&a, &b) {
        (Ok(()), Ok(())) => {}
        (Err(_), Err(_)) => return None,
        _ => return Some(format!("load: ours {a:?}, iptables-legacy {b:?}")),
    }
    let ((oa, ca), (ob, cb)) = std::thread::scope(|sc| {
        let x = sc.spawn(|| ours.run(packets));
        let y = sc.spawn(|| legacy.run(packets));
        (x.join().expect("ours"), y.join().expect("legacy"))
    });
    for o in &ob {
        match (o.delivered, &o.reply) {
            (true, _) => tally.delivered += 1,
            (false, Some(_)) => tally.rejected += 1,
            (false, None) => tally.dropped += 1,
        }
    }
    for (i, (x, y)) in oa.iter().zip(&ob).enumerate() {
        if x != y {
            // The packets up to this one, with what netfilter did to each (a stateful
            // mismatch depends on them).
            let before: Vec<String> = packets[..i].iter().zip(&ob).enumerate().map(|(k, (p, o))| format!("    {k}: {p} => {o:?}")).collect();
            return Some(format!("packet {i} ({}): ours {x:?}, iptables-legacy {y:?}\n  after:\n{}", packets[i], before.join("\n")));
        }
    }
    if ca != cb {
        let sent: Vec<String> = packets.iter().zip(&ob).enumerate().map(|(k, (p, o))| format!("    {k}: {p} => {o:?}")).collect();
        return Some(format!("counters differ:\nours:\n{ca}\niptables-legacy:\n{cb}\n  packets:\n{}", sent.join("\n")));
    }
    None
}

/// Removes rules while the difference persists.
fn shrink(ours: &Twin, legacy: &Twin, mut rs: Ruleset, packets: &[Packet], dir: &ScratchDir) -> (Ruleset, String) {
    let mut why = difference(ours, legacy, &rs, packets, dir).unwrap_or_default();
    let mut i = 0;
    while i < rs.rules.len() {
        let removed = rs.rules.remove(i);
        match difference(ours, legacy, &rs, packets, dir) {
            Some(w) => why = w,
            None => {
                rs.rules.insert(i, removed);
                i += 1;
            }
        }
    }
    (rs, why)
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn random_rulesets_give_netfilters_verdicts_and_counters() {
    if !common::root_or_skip("random_rulesets_give_netfilters_verdicts_and_counters") {
        return;
    }
    let seed = env_num("BPFIPT_DIFF_SEED", 0x5eed_0001);
    let rulesets = env_num("BPFIPT_DIFF_RULESETS", 12);
    let per = env_num("BPFIPT_DIFF_PACKETS", 40) as usize;
    let (ours, legacy) = std::thread::scope(|sc| {
        let a = sc.spawn(|| Twin::new(Tools::ours(), "diffours"));
        let b = sc.spawn(|| Twin::new(Tools::legacy(), "difflegacy"));
        (a.join().expect("ours"), b.join().expect("legacy"))
    });
    let dir = ScratchDir::new("differential");
    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    let mut sent = 0;
    let mut tally = Tally::default();
    let mut port_base = 20000u16;
    for n in 0..rulesets {
        // Every other round is stateful: conntrack rules and whole connections.
        let stateful = n % 2 == 1;
        let rs = gen_ruleset(&mut rng, stateful);
        let packets: Vec<Packet> = if stateful {
            gen_sessions(&mut rng, per.div_ceil(5), &mut port_base)
        } else {
            (0..per).map(|_| gen_packet(&mut rng)).collect()
        };
        sent += packets.len();
        if difference_tallied(&ours, &legacy, &rs, &packets, &dir, &mut tally).is_some() {
            let (small, why) = shrink(&ours, &legacy, rs, &packets, &dir);
            let rules: Vec<String> = small.rules.iter().map(|(c, s)| format!("  iptables -A {c} {s}")).collect();
            failures.push(format!(
                "seed {seed:#x}, ruleset {n} ({}): INPUT policy {}, FORWARD policy {}, OUTPUT policy {}, FORWARD padded with {} rules, then {:?} deleted with -D, its first {} added with -I FORWARD 1, {} its last {} with -A\n{}\n  {why}",
                if stateful { "stateful" } else { "stateless" },
                small.input_policy,
                small.policy,
                small.output_policy,
                small.padding,
                small.decoys,
                small.inserted,
                if small.in_place { "its 2nd after those with -I FORWARD n, its 4th put in place of a placeholder with -R," } else { "" },
                small.appended,
                rules.join("\n")
            ));
        }
    }
    println!(
        "differential: {rulesets} rulesets, {sent} packets ({} delivered, {} rejected, {} dropped under netfilter), {} mismatches (seed {seed:#x})",
        tally.delivered,
        tally.rejected,
        tally.dropped,
        failures.len()
    );
    assert!(tally.delivered > 0 && tally.rejected > 0 && tally.dropped > 0, "a run that exercises every outcome");
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n\n"));
}

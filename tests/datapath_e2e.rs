//! End-to-end tests of the datapath with real traffic (root; skipped otherwise): three network
//! namespaces, sender (198.18.1.2) -- firewall (198.18.1.1 on f0, 198.18.2.1 on f1,
//! forwarding) -- receiver (198.18.2.2), over veth pairs. The rules are installed in the
//! firewall with `datapath::apply` (programs stay attached through pinned links after the
//! call returns, as after the CLI exits); TCP and UDP probes from the sender and the firewall
//! must be passed, dropped or rejected as iptables would, with matching counters.

mod common;

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use bpf_iptables::compile::compile;
use bpf_iptables::compile::tables::Compiled;
use bpf_iptables::datapath;
use bpf_iptables::model::*;
use common::topo::{sh, Topo};

/// The topology and the firewall's pin directory (removed on drop).
struct Fw {
    t: Topo,
    pins: PathBuf,
}

impl Fw {
    fn new(purpose: &str) -> Fw {
        let pins = bpf_iptables::store::pin_root()
            .expect("bpffs")
            .join(format!("bpfipt-e2e-{purpose}-{}", std::process::id()));
        fs::create_dir_all(&pins).expect("pin dir");
        Fw { t: Topo::new(purpose), pins }
    }

    /// Runs `f` on a thread inside the firewall's namespace.
    fn in_fw<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.t.f);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let ns = fs::File::open(&path).expect("netns");
                // SAFETY: moves only this short-lived thread.
                assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
                f()
            })
            .join()
            .expect("firewall thread")
        })
    }

    fn apply(&self, rs: &Ruleset) {
        let c: Compiled = compile(rs).expect("compiles");
        self.in_fw(|| datapath::apply(&self.pins, &c, rs.is_pass_all())).expect("apply");
    }
}

impl std::ops::Deref for Fw {
    type Target = Topo;
    fn deref(&self) -> &Topo {
        &self.t
    }
}

impl Drop for Fw {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.pins);
    }
}

fn rule(ip: IpHeader, matches: Vec<Match>, target: Target) -> Rule {
    Rule { id: Rule::UNASSIGNED, ip, matches, target, counters: Counters::default() }
}

fn ruleset(policies: &[(&str, Policy)], rules: Vec<(&str, Rule)>) -> Ruleset {
    let mut rs = Ruleset::default();
    let t = rs.table_mut(TableKind::Filter);
    for (c, p) in policies {
        t.chain_mut(c).expect("builtin").policy = Some(*p);
    }
    for (id, (c, mut r)) in rules.into_iter().enumerate() {
        r.id = id as u32;
        t.chain_mut(c).expect("chain").rules.push(r);
    }
    rs
}

fn tcp_dport(p: u16) -> (IpHeader, Vec<Match>) {
    (
        IpHeader { proto: Some(Inv::new(6, false)), ..Default::default() },
        vec![Match::Tcp(TcpMatch { dport: Some(Inv::new(PortRange { lo: p, hi: p }, false)), ..Default::default() })],
    )
}

fn udp_dport(p: u16) -> (IpHeader, Vec<Match>) {
    (
        IpHeader { proto: Some(Inv::new(17, false)), ..Default::default() },
        vec![Match::Udp(UdpMatch { dport: Some(Inv::new(PortRange { lo: p, hi: p }, false)), ..Default::default() })],
    )
}

fn iface(name: &str) -> Option<Inv<Iface>> {
    Some(Inv::new(Iface { name: name.into(), wildcard: false }, false))
}

fn rule_packets(pins: &Path, id: u32) -> u64 {
    packets(pins, "bpfipt_rule_counters", id)
}

/// Packets counted under `key` in the per-CPU counter map `map`.
fn packets(pins: &Path, map: &str, key: u32) -> u64 {
    let m = libbpf_rs::MapHandle::from_pinned_path(pins.join(map)).expect("counters");
    use libbpf_rs::MapCore;
    m.lookup_percpu(&key.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
        .expect("lookup")
        .expect("entry")
        .iter()
        .map(|v| u64::from_ne_bytes(v[0..8].try_into().expect("8")))
        .sum()
}

#[test]
fn input_forward_output_with_real_traffic() {
    if !common::root_or_skip("input_forward_output_with_real_traffic") {
        return;
    }
    let t = Fw::new("e2e");
    t.serve(&t.r);
    t.serve(&t.f);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "open", "no rules: forwarded");
    assert_eq!(t.probe(&t.s, "udp", "198.18.1.1", 80), "open");

    let (tip, tm) = tcp_dport(80);
    let (uip, um) = udp_dport(80);
    let rs = ruleset(
        &[],
        vec![
            // 0: INPUT UDP to the firewall dropped
            ("INPUT", rule(uip.clone(), um.clone(), Target::Drop)),
            // 1: FORWARD f0 -> f1 TCP 80 reset
            ("FORWARD", rule(IpHeader { in_iface: iface("f0"), out_iface: iface("f1"), ..tip.clone() }, tm.clone(), Target::Reject(RejectWith::TcpReset))),
            // 2: FORWARD UDP 80 port unreachable
            ("FORWARD", rule(uip.clone(), um.clone(), Target::Reject(RejectWith::IcmpPortUnreachable))),
            // 3: OUTPUT TCP to the receiver dropped
            ("OUTPUT", rule(IpHeader { out_iface: iface("f1"), ..tip.clone() }, tm.clone(), Target::Drop)),
        ],
    );
    // Veths get TC ingress by default; XDP on request (what physical NICs get by default).
    std::env::set_var(datapath::INGRESS_ENV, "xdp");
    t.apply(&ruleset(&[], vec![("INPUT", rule(uip.clone(), um.clone(), Target::Drop))]));
    let links = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(t.pins.join("links"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    assert!(links().iter().any(|l| l.starts_with("xdp-")), "XDP attached: {:?}", links());
    assert_eq!(t.probe(&t.s, "udp", "198.18.1.1", 80), "timeout", "INPUT DROP at XDP");
    assert_eq!(rule_packets(&t.pins, 0), 1);
    // Back to the default: the same links move to TC in place (never a moment unfiltered).
    std::env::remove_var(datapath::INGRESS_ENV);
    t.apply(&rs);
    assert!(!links().iter().any(|l| l.starts_with("xdp-")), "TC on veths: {:?}", links());
    assert_eq!(t.probe(&t.s, "udp", "198.18.1.1", 80), "timeout", "INPUT DROP at TC");
    assert_eq!(rule_packets(&t.pins, 0), 2);
    let got = t.probe(&t.s, "tcp", "198.18.2.2", 80);
    assert_eq!(got, "refused", "FORWARD REJECT tcp-reset");
    assert_eq!(rule_packets(&t.pins, 1), 1);
    assert_eq!(t.probe(&t.s, "udp", "198.18.2.2", 80), "refused", "FORWARD REJECT port unreachable");
    assert_eq!(rule_packets(&t.pins, 2), 1);
    assert_eq!(t.probe(&t.f, "tcp", "198.18.2.2", 80), "timeout", "OUTPUT DROP");
    assert!(rule_packets(&t.pins, 3) >= 1, "SYN (and retransmissions) counted");
    assert_eq!(t.probe(&t.f, "tcp", "198.18.1.2", 22), "refused", "other traffic still flows (sender has no server: RST)");

    // Replace the ruleset: only the OUTPUT rule, now a REJECT (reply into the local stack).
    let rs2 = ruleset(&[], vec![("OUTPUT", rule(IpHeader { out_iface: iface("f1"), ..tip.clone() }, tm.clone(), Target::Reject(RejectWith::TcpReset)))]);
    t.apply(&rs2);
    assert_eq!(t.probe(&t.f, "tcp", "198.18.2.2", 80), "refused", "OUTPUT REJECT tcp-reset");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "open", "forwarded traffic is not judged at OUTPUT");

    // OUTPUT REJECT with an ICMP error: the local sender learns it (ECONNREFUSED); the error,
    // from the sender's own address through lo, passes OUTPUT and INPUT once each, as in
    // netfilter. An echo reply the kernel sends is rejected without any error sent
    // (icmp_send cannot answer the ICMP code's own packets).
    let icmp_reply = IpHeader { proto: Some(Inv::new(1, false)), out_iface: iface("f0"), ..Default::default() };
    let echo_reply = Match::Icmp(IcmpMatch { icmp_type: 0, code_lo: 0, code_hi: 0xff, invert: false });
    let rs4 = ruleset(
        &[],
        vec![
            ("OUTPUT", rule(IpHeader { out_iface: iface("f1"), ..uip.clone() }, um.clone(), Target::Reject(RejectWith::IcmpPortUnreachable))),
            ("OUTPUT", rule(icmp_reply, vec![echo_reply], Target::Reject(RejectWith::IcmpHostProhibited))),
        ],
    );
    t.apply(&rs4);
    let policy = |hook: u32| packets(&t.pins, "bpfipt_policy_counters", hook);
    // (rule ids restart at 0 for each ruleset here, and their counters carry on)
    let (input0, output0, r0, r1) = (policy(0), policy(2), rule_packets(&t.pins, 0), rule_packets(&t.pins, 1));
    assert_eq!(t.probe(&t.f, "udp", "198.18.2.2", 80), "refused", "OUTPUT REJECT port unreachable");
    assert_eq!(rule_packets(&t.pins, 0) - r0, 1);
    assert_eq!((policy(0) - input0, policy(2) - output0), (1, 1), "the error passed OUTPUT and INPUT once");
    let input1 = policy(0);
    let ping = t.exec(&t.s, &["ping", "-c", "1", "-W", "1", "198.18.1.1"]);
    assert!(!ping.status.success(), "the echo reply is rejected");
    assert_eq!(rule_packets(&t.pins, 1) - r1, 1);
    assert_eq!(policy(0) - input1, 1, "only the echo request came in: no error about the reply");

    // A veth created later is filtered once attach_new_interfaces ran (what --watch does).
    let rs3 = ruleset(&[], vec![("INPUT", rule(IpHeader { in_iface: iface("f2"), ..uip.clone() }, um.clone(), Target::Drop))]);
    t.apply(&rs3);
    sh(&["ip", "link", "add", "s2", "netns", &t.s, "type", "veth", "peer", "name", "f2", "netns", &t.f]);
    sh(&["ip", "-n", &t.s, "addr", "add", "198.18.3.2/24", "dev", "s2"]);
    sh(&["ip", "-n", &t.f, "addr", "add", "198.18.3.1/24", "dev", "f2"]);
    sh(&["ip", "-n", &t.s, "link", "set", "s2", "up"]);
    sh(&["ip", "-n", &t.f, "link", "set", "f2", "up"]);
    let c = compile(&rs3).expect("compiles");
    t.in_fw(|| datapath::attach_new_interfaces(&t.pins, &c)).expect("attach new");
    assert_eq!(t.probe(&t.s, "udp", "198.18.3.1", 80), "timeout", "new interface filtered");
    assert_eq!(t.probe(&t.s, "udp", "198.18.1.1", 80), "open", "-i f2 only");

    // Pass-all keeps the programs attached, passing everything, and the next ruleset is
    // enforced through the same links; detaching removes them.
    let links = || fs::read_dir(t.pins.join("links")).map(|d| d.count()).unwrap_or(0);
    let attached = links();
    t.apply(&Ruleset::default());
    assert_eq!(t.probe(&t.s, "udp", "198.18.3.1", 80), "open", "passes all");
    assert_eq!(t.probe(&t.s, "udp", "198.18.1.1", 80), "open");
    assert_eq!(links(), attached, "still attached");
    t.apply(&rs3);
    assert_eq!(t.probe(&t.s, "udp", "198.18.3.1", 80), "timeout", "filtered again");
    t.apply(&Ruleset::default());
    t.in_fw(|| datapath::detach(&t.pins)).expect("detach");
    assert_eq!(links(), 0, "detached");
    assert_eq!(t.probe(&t.s, "udp", "198.18.3.1", 80), "open");
}

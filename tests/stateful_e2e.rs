//! The classic stateful firewall script with real TCP and UDP traffic, run twice on identical
//! topologies (see `common::topo`): once loaded with our `iptables-restore`, once with
//! iptables-legacy (kernel netfilter and nf_conntrack, the oracle). Every probe must give the
//! same outcome on both, and the outcome the script is meant to give. Root only.

mod common;

use common::topo::Topo;
use common::Tools;

const SCRIPT: &str = "*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m conntrack --ctstate NEW -m tcp --dport 22 -j ACCEPT
-A FORWARD -m state --state RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i f0 -o f1 -p tcp -m tcp --dport 80 -m state --state NEW -j ACCEPT
-A FORWARD -i f0 -o f1 -p udp -m udp --dport 53 -j ACCEPT
-A FORWARD -i f0 -o f1 -p udp -m udp --dport 80 -j ACCEPT
COMMIT
";

/// (from namespace: s, f or r; protocol; destination; port; the outcome the script gives)
const PROBES: &[(&str, &str, &str, u16, &str)] = &[
    ("s", "tcp", "198.18.1.1", 22, "open"),     // NEW tcp/22, replies ESTABLISHED
    ("s", "tcp", "198.18.1.1", 80, "timeout"),  // policy DROP
    ("s", "udp", "198.18.1.1", 80, "timeout"),
    ("s", "tcp", "198.18.2.2", 80, "open"),     // forwarded NEW, replies ESTABLISHED
    ("r", "tcp", "198.18.1.2", 80, "timeout"),  // unsolicited the other way
    ("s", "udp", "198.18.2.2", 80, "open"),     // the reply datagram is ESTABLISHED
    ("s", "udp", "198.18.2.2", 53, "refused"),  // port unreachable back: RELATED
    ("r", "udp", "198.18.1.2", 80, "timeout"),
    ("f", "tcp", "198.18.2.2", 80, "open"),     // outbound from the firewall host
    ("f", "udp", "198.18.1.2", 80, "open"),
    ("f", "tcp", "198.18.2.2", 81, "refused"),  // its RST is ESTABLISHED
    ("f", "udp", "198.18.2.2", 53, "refused"),  // RELATED at INPUT
    ("f", "tcp", "198.18.1.1", 22, "open"),     // loopback, NEW tcp/22
    ("f", "tcp", "127.0.0.1", 80, "timeout"),   // loopback, NEW dropped
];

/// Loads the script with `tools` on a fresh topology and runs every probe.
fn outcomes(tools: &Tools, purpose: &str) -> Vec<String> {
    let mut t = Topo::new(purpose);
    if tools.is_ours() {
        t.on_drop_in_fw(&[env!("CARGO_BIN_EXE_bpf-iptables"), "--reset"]);
    }
    t.serve_ports(&t.f, &[22, 80], &[80]);
    t.serve_ports(&t.r, &[80], &[80]);
    t.serve_ports(&t.s, &[80], &[80]);
    let file = common::ScratchDir::new("stateful");
    let rules = file.path().join("rules");
    std::fs::write(&rules, SCRIPT).expect("write rules");
    let restore = tools.bin("iptables-restore");
    let o = t.exec(&t.f, &[restore.to_str().expect("utf-8 path"), rules.to_str().expect("utf-8 path")]);
    assert!(o.status.success(), "{}: {}", tools.label(), String::from_utf8_lossy(&o.stderr));
    PROBES
        .iter()
        .map(|&(from, proto, dst, port, _)| {
            let ns = match from {
                "s" => &t.s,
                "f" => &t.f,
                _ => &t.r,
            };
            t.probe(ns, proto, dst, port)
        })
        .collect()
}

#[test]
fn stateful_script_matches_iptables_legacy() {
    if !common::root_or_skip("stateful_script_matches_iptables_legacy") {
        return;
    }
    let (ours, legacy) = std::thread::scope(|sc| {
        let a = sc.spawn(|| outcomes(&Tools::ours(), "ctours"));
        let b = sc.spawn(|| outcomes(&Tools::legacy(), "ctlegacy"));
        (a.join().expect("ours"), b.join().expect("legacy"))
    });
    let mut bad = Vec::new();
    for (i, &(from, proto, dst, port, want)) in PROBES.iter().enumerate() {
        if ours[i] != legacy[i] || ours[i] != want {
            bad.push(format!("{from} -> {dst} {proto}/{port}: ours {}, iptables-legacy {}, expected {want}", ours[i], legacy[i]));
        }
    }
    assert!(bad.is_empty(), "stateful outcomes differ:\n{}", bad.join("\n"));
}

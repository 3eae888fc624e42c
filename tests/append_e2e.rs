//! `-A` through the command line with real traffic (root only): rules appended to a built-in
//! chain of a loaded ruleset take effect at once and are listed and counted like any other,
//! whether they are patched into the datapath's image (a plain rule), make the datapath
//! rebuild it (REJECT in FORWARD, `-i`) or go the general way (a jump to a user chain); a
//! RETURN of the built-in chain keeps skipping what is appended after it.

mod common;

use std::fmt::Write as _;

use common::topo::Topo;
use common::{ScratchDir, Tools};

const FILLER: u32 = 3000;

#[test]
fn appended_rules_are_enforced_listed_and_counted() {
    if !common::root_or_skip("appended_rules_are_enforced_listed_and_counted") {
        return;
    }
    let tools = Tools::ours();
    let ipt = tools.bin("iptables");
    let ipt = ipt.to_str().expect("utf-8 path");
    let mut t = Topo::new("append");
    t.on_drop_in_fw(&[env!("CARGO_BIN_EXE_bpf-iptables"), "--reset"]);
    t.serve_ports(&t.r, &[80, 81, 82, 83, 84, 85], &[]);

    let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:U - [0:0]\n");
    // 3 000 rules: big enough for FORWARD to take two appended rules in place.
    for i in 0..FILLER {
        let _ = writeln!(rules, "-A FORWARD -s 10.0.{}.{}/32 -p tcp -m tcp --dport {} -j DROP", i / 250, i % 250 + 1, 1000 + i);
    }
    rules.push_str("-A FORWARD -p tcp -m tcp --dport 82 -j RETURN\nCOMMIT\n");
    let files = ScratchDir::new("append");
    let file = files.path().join("rules");
    std::fs::write(&file, rules).expect("write rules");
    let run = |args: &[&str]| {
        let mut all = vec![ipt];
        all.extend_from_slice(args);
        let o = t.exec(&t.f, &all);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty() || args.contains(&"-S") || args.contains(&"-L"), "{args:?} printed");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let restore = tools.bin("iptables-restore");
    let o = t.exec(&t.f, &[restore.to_str().expect("utf-8 path"), file.to_str().expect("utf-8 path")]);
    assert!(o.status.success(), "restore: {}", String::from_utf8_lossy(&o.stderr));
    for port in [80, 81, 82, 83, 84] {
        assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", port), "open", "port {port} before the appends");
    }

    let appended: [&[&str]; 6] = [
        &["-A", "FORWARD", "-p", "tcp", "--dport", "81", "-j", "DROP"],
        &["-A", "FORWARD", "-p", "tcp", "--dport", "82", "-j", "DROP"],
        &["-A", "FORWARD", "-p", "tcp", "--dport", "80", "-j", "REJECT", "--reject-with", "tcp-reset"],
        &["-A", "U", "-p", "tcp", "--dport", "83", "-j", "DROP"],
        &["-A", "FORWARD", "-j", "U"],
        &["-A", "FORWARD", "-i", "f0", "-p", "tcp", "--dport", "84", "-j", "DROP"],
    ];
    for a in appended {
        run(a);
    }
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "refused", "appended REJECT");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 81), "timeout", "appended DROP");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 82), "open", "RETURN skips the appended DROP");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 83), "timeout", "appended jump to U");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 84), "timeout", "appended -i rule");

    let listed = run(&["-S"]);
    let tail: Vec<&str> = listed.lines().filter(|l| !l.contains("-s 10.0.")).collect();
    assert_eq!(
        tail,
        [
            "-P INPUT ACCEPT",
            "-P FORWARD ACCEPT",
            "-P OUTPUT ACCEPT",
            "-N U",
            "-A FORWARD -p tcp -m tcp --dport 82 -j RETURN",
            "-A FORWARD -p tcp -m tcp --dport 81 -j DROP",
            "-A FORWARD -p tcp -m tcp --dport 82 -j DROP",
            "-A FORWARD -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset",
            "-A FORWARD -j U",
            "-A FORWARD -i f0 -p tcp -m tcp --dport 84 -j DROP",
            "-A U -p tcp -m tcp --dport 83 -j DROP",
        ]
    );
    assert_eq!(listed.lines().count(), FILLER as usize + tail.len());
    // Packets per rule, in `-L FORWARD` order after the fillers.
    let counts: Vec<u64> = run(&["-L", "FORWARD", "-v", "-x", "-n"])
        .lines()
        .skip(2 + FILLER as usize)
        .map(|l| l.split_whitespace().next().and_then(|n| n.parse().ok()).expect("packet count"))
        .collect();
    assert_eq!(counts.len(), 6, "{counts:?}");
    assert!(counts[0] >= 2, "RETURN counted port 82's SYN and more: {counts:?}");
    assert!(counts[1] >= 1 && counts[2] == 0 && counts[3] >= 1 && counts[4] >= 1 && counts[5] >= 1, "{counts:?}");

    // After `--detach` the next change attaches the programs again, an append too.
    let o = t.exec(&t.f, &[env!("CARGO_BIN_EXE_bpf-iptables"), "--detach"]);
    assert!(o.status.success(), "--detach: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 81), "open", "detached: nothing filters");
    run(&["-A", "FORWARD", "-p", "tcp", "--dport", "85", "-j", "DROP"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 85), "timeout", "appended after --detach");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 81), "timeout", "attached again");
}

//! `-A` through the command line with real traffic (root only): rules appended to a built-in
//! chain of a loaded ruleset take effect at once and are listed and counted like any other,
//! whether they are patched into the datapath's image (a plain rule, a jump to a user chain
//! with that chain's rules after it) or make the datapath rebuild it (REJECT in FORWARD,
//! `-i`); a
//! RETURN of the built-in chain keeps skipping what is appended after it.

mod common;

use bpf_iptables::datapath::skel::types::bpfipt_const;
use common::topo::PaddedFirewall;

/// Big enough for FORWARD to take two appended rules in place (one per TAIL_PER rules).
const FILLER: u32 = 2 * bpfipt_const::BPFIPT_IMG_TAIL_PER.0 + 8;

#[test]
fn appended_rules_are_enforced_listed_and_counted() {
    if !common::root_or_skip("appended_rules_are_enforced_listed_and_counted") {
        return;
    }
    let fw = PaddedFirewall::new("append", FILLER, "-A FORWARD -p tcp -m tcp --dport 82 -j RETURN\nCOMMIT\n", &[80, 81, 82, 83, 84, 85, 86]);
    let (t, run) = (&fw.t, |args: &[&str]| fw.ok(args));
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

    assert_eq!(
        fw.listed_past_filler(),
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

    // A rule appended and deleted again, over and over, in place: each deletion gives back
    // the room its append took (FORWARD has room for two), so the image is never rebuilt
    // (which would compile the last one into the vectors, to stay there as a no-op).
    let compiled = || fw.compiled_forward();
    let before = compiled();
    let rule = ["FORWARD", "-p", "tcp", "--dport", "86", "-j", "DROP"];
    for round in 0..3 {
        run(&[&["-A"], &rule[..]].concat());
        assert_eq!(compiled(), before + 1, "round {round}: appended in place");
        assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 86), "timeout", "round {round}: appended DROP");
        run(&[&["-D"], &rule[..]].concat());
        assert_eq!(compiled(), before, "round {round}: its room back");
        assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 86), "open", "round {round}: deleted");
    }
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 81), "timeout", "the rules before stay");
}

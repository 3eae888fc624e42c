//! Atomicity of rule updates under real traffic (root only). A sender pushes a steady UDP
//! stream through the firewall while the firewall's FORWARD chain is replaced again and again
//! by `iptables-restore` with two 10 001-rule rulesets that both accept the stream, laid out so
//! that any mix of the two would drop it:
//!
//! * A: 10 000 TCP rules that never match, then `-p udp --dport 5000 -j ACCEPT` (rule 10 000);
//! * B: `-p udp --dport 5000 -j ACCEPT` first, then 10 000 `-p udp --dport 5000 -s X -j DROP`
//!   with sources the stream never uses.
//!
//! A packet classified with A's tables and B's actions lands on B's rule 10 000 (DROP); with
//! B's tables and A's actions, on A's rule 0 (DROP); anything unmatched meets the DROP policy.
//! So every packet the sender sent must reach the receiver, counted there by an
//! iptables-legacy rule in the receiver's own namespace. Then a restore killed half-way must
//! leave the last ruleset in place, listed and enforced.

mod common;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::topo::Topo;
use common::{ScratchDir, Tools};

const FILLER: u32 = 10_000;

fn ruleset_a() -> String {
    let mut s = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..FILLER {
        let _ = writeln!(s, "-A FORWARD -p tcp -m tcp --dport {} -j DROP", 1 + i % 60000);
    }
    s.push_str("-A FORWARD -p udp -m udp --dport 5000 -j ACCEPT\nCOMMIT\n");
    s
}

fn ruleset_b() -> String {
    let mut s = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    s.push_str("-A FORWARD -p udp -m udp --dport 5000 -j ACCEPT\n");
    for i in 0..FILLER {
        let _ = writeln!(s, "-A FORWARD -s 10.{}.{}.{}/32 -p udp -m udp --dport 5000 -j DROP", i >> 16, (i >> 8) & 255, i & 255);
    }
    s.push_str("COMMIT\n");
    s
}

/// Packets counted by the receiver's iptables-legacy rule.
fn received(t: &Topo) -> u64 {
    let o = t.exec(&t.r, &["iptables-legacy", "-L", "INPUT", "-v", "-x", "-n"]);
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines().find(|l| l.contains("dpt:5000")).and_then(|l| l.split_whitespace().next()).and_then(|n| n.parse().ok()).expect("receiver counter")
}

/// Receive-side drops of the firewall's input veth (overload would make the test meaningless).
fn f0_rx_dropped(t: &Topo) -> String {
    let o = t.exec(&t.f, &["ip", "-s", "link", "show", "f0"]);
    String::from_utf8_lossy(&o.stdout).lines().skip_while(|l| !l.trim_start().starts_with("RX:")).nth(1).unwrap_or("").trim().to_string()
}

#[test]
fn restores_under_traffic_are_atomic_and_a_killed_one_changes_nothing() {
    if !common::root_or_skip("restores_under_traffic_are_atomic_and_a_killed_one_changes_nothing") {
        return;
    }
    let tools = Tools::ours();
    let mut t = Topo::new("atomic");
    t.on_drop_in_fw(&[env!("CARGO_BIN_EXE_bpf-iptables"), "--reset"]);
    let files = ScratchDir::new("atomic");
    let (a, b) = (files.path().join("a"), files.path().join("b"));
    std::fs::write(&a, ruleset_a()).expect("write a");
    std::fs::write(&b, ruleset_b()).expect("write b");
    let restore = tools.bin("iptables-restore");
    let restore = restore.to_str().expect("utf-8 path");
    let load = |file: &std::path::Path| {
        let o = t.exec(&t.f, &[restore, file.to_str().expect("utf-8 path")]);
        assert!(o.status.success(), "restore: {}", String::from_utf8_lossy(&o.stderr));
    };
    load(&a);
    let o = t.exec(&t.r, &["iptables-legacy", "-A", "INPUT", "-p", "udp", "--dport", "5000"]);
    assert!(o.status.success());
    assert_eq!(t.probe(&t.s, "udp", "198.18.2.2", 5000), "timeout", "nothing answers, but the datagram got through");
    let warmup = received(&t);
    assert_eq!(warmup, 1, "the stream passes ruleset A");

    // 5 000 datagrams a second until its stdin closes; says "go" once the stream runs and
    // prints how many were sent at the end. The restores are counted, not timed: a slow
    // (debug, loaded) machine takes longer but proves the same.
    let sender = r#"
import select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, start = 0, time.monotonic()
while True:
    for _ in range(50):
        try:
            s.sendto(b"x" * 32, ("198.18.2.2", 5000)); sent += 1
        except OSError:
            pass
    if sent == 50:
        print("go", flush=True)
    if select.select([sys.stdin], [], [], 0)[0]:
        break
    lag = start + sent / 5000 - time.monotonic()
    if lag > 0: time.sleep(lag)
print(sent)
"#;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &t.s, "python3", "-c", sender])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sender");
    let mut lines = BufReader::new(child.stdout.take().expect("sender stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("go"), "the sender starts");
    let mut flips = 0;
    while flips < 12 {
        load(if flips % 2 == 0 { &b } else { &a });
        flips += 1;
    }
    // Traffic keeps flowing a little after the last restore, then the sender stops.
    std::thread::sleep(Duration::from_millis(200));
    drop(child.stdin.take());
    let sent: u64 = lines.next().and_then(Result::ok).and_then(|l| l.trim().parse().ok()).expect("sent count");
    assert!(child.wait().expect("sender exit").success());
    let got = received(&t) - warmup;
    assert_eq!(
        got, sent,
        "{sent} sent, {got} received across {flips} restores of {} rules (f0 RX bytes/packets/errors/dropped: {})",
        FILLER + 1,
        f0_rx_dropped(&t)
    );

    // A restore killed half-way (a 100 000-rule input, killed while it parses and compiles)
    // leaves the last ruleset listed and enforced.
    // -S: the rules and policies, without the counters the stream keeps moving.
    let save = |t: &Topo| {
        let o = t.exec(&t.f, &[tools.bin("iptables").to_str().expect("utf-8 path"), "-S"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let before = save(&t);
    let big = files.path().join("big");
    let mut text = String::from("*filter\n:FORWARD DROP [0:0]\n");
    for i in 0..100_000u32 {
        let _ = writeln!(text, "-A FORWARD -s 10.{}.{}.{}/32 -j DROP", i >> 16, (i >> 8) & 255, i & 255);
    }
    text.push_str("COMMIT\n");
    std::fs::write(&big, text).expect("write big");
    for delay_ms in [20, 80, 160] {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &t.f, restore, big.to_str().expect("utf-8 path")])
            .spawn()
            .expect("big restore");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = Command::new("pkill").args(["-KILL", "-f", big.to_str().expect("utf-8 path")]).status();
        let status = child.wait().expect("wait");
        if status.success() {
            eprintln!("note: the big restore finished within {delay_ms} ms; not a kill test");
            load(if flips % 2 == 0 { &a } else { &b });
            continue;
        }
        let after = save(&t);
        assert!(after == before, "a killed restore changed the stored ruleset: {} lines before, {} after", before.lines().count(), after.lines().count());
        let n = received(&t);
        assert_eq!(t.probe(&t.s, "udp", "198.18.2.2", 5000), "timeout");
        assert_eq!(received(&t), n + 1, "the old ruleset still forwards the stream");
    }
}

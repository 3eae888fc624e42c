//! Route changes with real traffic (root only): the ingress programs remember the route
//! lookups of arriving packets (`bpfipt_routes`), and a change of the firewall's routes,
//! interfaces or forwarding switch must apply from the next packet on, as it does for
//! netfilter: the output interface a FORWARD rule's `-o` sees, whether a packet is forwarded
//! at all (no route: netfilter never judges it), and whether it goes to INPUT instead
//! (forwarding off). The programs remember a lookup per addresses, for every flow between
//! them, unless a policy rule looks at ports (then per flow). Through XDP and TC ingress alike.
//! And `--watch` keeps what the programs know of the routes' shape (`bpfipt_routing`) current.

mod common;

use std::thread::sleep;
use std::time::Duration;

use common::topo::Topo;
use common::Tools;

const RULES: &str = "*filter\n\
    :INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
    -A INPUT -d 198.18.9.9/32 -j ACCEPT\n\
    -A FORWARD -d 198.18.9.9/32 -o f1 -j ACCEPT\n\
    -A FORWARD -d 198.18.9.9/32 -o f2 -j ACCEPT\n\
    -A FORWARD -d 198.18.9.9/32 -j ACCEPT\n\
    COMMIT\n";

/// The firewall with RULES loaded (`ingress`: INGRESS_ENV), and a second way out (`f2`, a veth
/// to the receiver's `r1`).
fn firewall(purpose: &str, ingress: &str, tools: &Tools) -> Topo {
    let ours = env!("CARGO_BIN_EXE_bpf-iptables");
    let mut t = Topo::new(purpose);
    t.on_drop_in_fw(&[ours, "--reset"]);
    common::topo::sh(&["ip", "link", "add", "f2", "netns", &t.f, "type", "veth", "peer", "name", "r1", "netns", &t.r]);
    common::topo::sh(&["ip", "-n", &t.r, "link", "set", "r1", "up"]);
    common::topo::sh(&["ip", "-n", &t.f, "link", "set", "f2", "up"]);
    let restore = format!("BPF_IPTABLES_INGRESS={ingress} {} <<'EOF'\n{RULES}EOF\n", tools.bin("iptables-restore").display());
    let o = t.exec(&t.f, &["sh", "-c", &restore]);
    assert!(o.status.success(), "restore: {}", String::from_utf8_lossy(&o.stderr));
    t
}

/// Sends `n` UDP datagrams of one flow (the same ports every time: one entry of the programs'
/// route memory) from the sender to 198.18.9.9 port `dport` (nobody answers) and waits for
/// them to be through the firewall. From CPU 0: the firewall receives them there too, so
/// every packet meets what the ones before it left in the programs' per-CPU memory.
fn send_to(t: &Topo, n: u32, dport: u16) {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 40000))\nfor i in range({n}): s.sendto(b'x', ('198.18.9.9', {dport}))\n"
    );
    assert!(t.exec(&t.s, &["taskset", "-c", "0", "python3", "-c", &script]).status.success(), "sending");
    sleep(Duration::from_millis(200));
}

/// Packets counted so far by the INPUT rule, the FORWARD rules (-o f1, -o f2, any) and the
/// FORWARD policy, as `iptables-save -c` shows them.
fn counts(t: &Topo, tools: &Tools) -> [u64; 5] {
    let save = tools.bin("iptables-save");
    let o = t.exec(&t.f, &[save.to_str().expect("utf-8 path"), "-c"]);
    assert!(o.status.success(), "save: {}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let packets = |needle: &str| -> u64 {
        let line = text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} in\n{text}"));
        let counters = &line[line.find('[').expect("[") + 1..];
        counters[..counters.find(':').expect(":")].parse().expect("packet count")
    };
    [
        packets("-A INPUT -d 198.18.9.9"),
        packets("-o f1 -j ACCEPT"),
        packets("-o f2 -j ACCEPT"),
        packets("-A FORWARD -d 198.18.9.9/32 -j ACCEPT"),
        packets(":FORWARD ACCEPT"),
    ]
}

fn in_fw(t: &Topo, args: &[&str]) {
    let o = t.exec(&t.f, args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn route_changes_apply_from_the_next_packet(ingress: &str) {
    let tools = Tools::ours();
    let t = firewall(&format!("route-{ingress}"), ingress, &tools);
    let step_to = |what: &str, dport: u16, expect: [u64; 5]| {
        let before = counts(&t, &tools);
        send_to(&t, 3, dport);
        let after = counts(&t, &tools);
        let grew: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        assert_eq!(grew, expect, "{ingress}: {what}, to port {dport} (INPUT, -o f1, -o f2, FORWARD, FORWARD policy)");
    };
    let step = |what: &str, expect: [u64; 5]| step_to(what, 9, expect);
    // No route to 198.18.9.0/24 (the firewall has no default route): never judged.
    step("no route", [0, 0, 0, 0, 0]);
    in_fw(&t, &["ip", "route", "add", "198.18.9.0/24", "via", "198.18.2.2", "dev", "f1"]);
    step("routed out of f1", [0, 3, 0, 0, 0]);
    in_fw(&t, &["ip", "route", "replace", "198.18.9.0/24", "dev", "f2"]);
    step("the route replaced: out of f2", [0, 0, 3, 0, 0]);
    in_fw(&t, &["ip", "link", "set", "f2", "down"]);
    step("its interface down: no route", [0, 0, 0, 0, 0]);
    in_fw(&t, &["ip", "link", "set", "f2", "up"]);
    in_fw(&t, &["ip", "route", "add", "198.18.9.0/24", "dev", "f2"]);
    step("up again, routed out of f2", [0, 0, 3, 0, 0]);
    in_fw(&t, &["ip", "route", "add", "198.18.9.9/32", "via", "198.18.2.2", "dev", "f1"]);
    step("a more specific route added: out of f1", [0, 3, 0, 0, 0]);
    in_fw(&t, &["ip", "route", "del", "198.18.9.9/32"]);
    step("and removed: out of f2", [0, 0, 3, 0, 0]);
    // The programs remember a route per addresses while the FIB cannot see ports, and per
    // flow while a policy rule looks at them.
    step_to("another flow between the same addresses", 10, [0, 0, 3, 0, 0]);
    in_fw(&t, &["ip", "route", "add", "198.18.9.0/24", "via", "198.18.2.2", "dev", "f1", "table", "100"]);
    in_fw(&t, &["ip", "rule", "add", "ipproto", "udp", "dport", "9", "table", "100"]);
    step("a policy rule for port 9: out of f1", [0, 3, 0, 0, 0]);
    step_to("but not for port 10", 10, [0, 0, 3, 0, 0]);
    in_fw(&t, &["ip", "rule", "del", "ipproto", "udp", "dport", "9", "table", "100"]);
    step("the policy rule removed: out of f2", [0, 0, 3, 0, 0]);
    step_to("port 10 as well", 10, [0, 0, 3, 0, 0]);
    in_fw(&t, &["sysctl", "-qw", "net.ipv4.conf.f0.forwarding=0"]);
    step("forwarding off on the way in: INPUT", [3, 0, 0, 0, 0]);
    in_fw(&t, &["sysctl", "-qw", "net.ipv4.conf.f0.forwarding=1"]);
    step("forwarding on again", [0, 0, 3, 0, 0]);
    in_fw(&t, &["ip", "route", "del", "198.18.9.0/24"]);
    step("the route removed: never judged", [0, 0, 0, 0, 0]);
}

#[test]
fn route_changes_apply_from_the_next_packet_through_tc() {
    if common::root_or_skip("route_changes_apply_from_the_next_packet_through_tc") {
        route_changes_apply_from_the_next_packet("tc");
    }
}

#[test]
fn route_changes_apply_from_the_next_packet_through_xdp() {
    if common::root_or_skip("route_changes_apply_from_the_next_packet_through_xdp") {
        route_changes_apply_from_the_next_packet("xdp");
    }
}

/// A field of entry 0 of the firewall's pinned map `map`, as `bpftool map dump` shows it.
fn pinned_field(t: &Topo, map: &str, field: &str) -> u64 {
    let o = t.exec(&t.f, &[env!("CARGO_BIN_EXE_bpf-iptables"), "--pin-dir"]);
    assert!(o.status.success(), "--pin-dir: {}", String::from_utf8_lossy(&o.stderr));
    let path = format!("{}/{map}", String::from_utf8_lossy(&o.stdout).trim());
    let o = common::topo::run(&["bpftool", "-j", "map", "dump", "pinned", &path]);
    assert!(o.status.success(), "bpftool map dump {path}: {}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let key = format!("\"{field}\":");
    let at = text.find(&key).unwrap_or_else(|| panic!("{field} in {text}")) + key.len();
    let digits: String = text[at..].chars().skip_while(|c| c.is_whitespace()).take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("{field} in {text}"))
}

/// Waits up to 5 s for `cond`.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..50 {
        if cond() {
            return;
        }
        sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within 5 s");
}

/// `bpf-iptables --watch` keeps `bpfipt_routing` (whether the programs may remember one route
/// lookup for every source) following route changes, without rebuilding the image for them.
#[test]
fn the_watcher_follows_route_changes_without_rebuilding() {
    if !common::root_or_skip("the_watcher_follows_route_changes_without_rebuilding") {
        return;
    }
    let tools = Tools::ours();
    let t = firewall("route-watch", "xdp", &tools);
    let single_path = || pinned_field(&t, "bpfipt_routing", "single_path");
    let generation = || pinned_field(&t, "bpfipt_active", "gen");
    assert_eq!(single_path(), 1, "the restore listed the routes: one next hop each");
    let restored = generation();
    t.spawn_in(&t.f, &[env!("CARGO_BIN_EXE_bpf-iptables"), "--watch"]);
    eventually("the watcher's first update", || generation() != restored);
    let watched = generation();
    in_fw(&t, &["ip", "route", "add", "198.18.8.0/24", "nexthop", "via", "198.18.2.2", "dev", "f1", "nexthop", "dev", "f2"]);
    eventually("a multipath route seen", || single_path() == 0);
    in_fw(&t, &["ip", "route", "del", "198.18.8.0/24"]);
    eventually("its removal seen", || single_path() == 1);
    assert_eq!(generation(), watched, "route events refresh bpfipt_routing alone");
}

//! A three-namespace topology for tests with real traffic: sender `s` (198.18.1.2 on s0) --
//! firewall `f` (198.18.1.1 on f0, 198.18.2.1 on f1, forwarding) -- receiver `r` (198.18.2.2 on
//! r0), over veth pairs, default routes through the firewall. Servers and probes are small
//! python3 scripts run with `ip netns exec`. Everything is removed on drop, also when the test
//! fails.

use std::process::{Child, Command, Output};
use std::sync::Mutex;

pub fn run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().expect("spawn")
}

pub fn sh(args: &[&str]) {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

pub struct Topo {
    pub s: String,
    pub f: String,
    pub r: String,
    /// Processes started in the namespaces (servers, a watcher), killed on drop.
    servers: Mutex<Vec<Child>>,
    /// Run in the firewall namespace before it is deleted (e.g. removing our pinned state).
    cleanup: Vec<Vec<String>>,
}

impl Topo {
    pub fn new(purpose: &str) -> Topo {
        let id = std::process::id();
        let t = Topo {
            s: format!("bpfipt-{purpose}-{id}-s"),
            f: format!("bpfipt-{purpose}-{id}-f"),
            r: format!("bpfipt-{purpose}-{id}-r"),
            servers: Mutex::new(Vec::new()),
            cleanup: Vec::new(),
        };
        for ns in [&t.s, &t.f, &t.r] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "link", "add", "s0", "netns", &t.s, "type", "veth", "peer", "name", "f0", "netns", &t.f]);
        sh(&["ip", "link", "add", "r0", "netns", &t.r, "type", "veth", "peer", "name", "f1", "netns", &t.f]);
        for (ns, dev, addr) in [(&t.s, "s0", "198.18.1.2/24"), (&t.f, "f0", "198.18.1.1/24"), (&t.f, "f1", "198.18.2.1/24"), (&t.r, "r0", "198.18.2.2/24")] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        sh(&["ip", "-n", &t.s, "route", "add", "default", "via", "198.18.1.1"]);
        sh(&["ip", "-n", &t.r, "route", "add", "default", "via", "198.18.2.1"]);
        sh(&["ip", "netns", "exec", &t.f, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        t
    }

    /// `args` run in the firewall namespace when the topology goes.
    pub fn on_drop_in_fw(&mut self, args: &[&str]) {
        self.cleanup.push(args.iter().map(|s| s.to_string()).collect());
    }

    /// `args` run in namespace `ns`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// A probe from namespace `ns`: "open" (TCP connected; UDP echoed), "refused" (RST or port
    /// unreachable), "unreachable" or "timeout".
    pub fn probe(&self, ns: &str, proto: &str, dst: &str, port: u16) -> String {
        let script = format!(
            r#"
import socket, errno
kind = socket.SOCK_STREAM if "{proto}" == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.settimeout(1.5)
try:
    s.connect(("{dst}", {port}))
    if kind == socket.SOCK_DGRAM:
        s.send(b"ping")
        s.recv(100)
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print("timeout" if isinstance(e, socket.timeout) else "unreachable" if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else "error " + str(e))
"#
        );
        let o = self.exec(ns, &["python3", "-c", &script]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// TCP accept-and-close and UDP echo servers on `tcp` and `udp` ports in namespace `ns`,
    /// until the topology goes.
    pub fn serve_ports(&self, ns: &str, tcp: &[u16], udp: &[u16]) {
        let script = format!(
            r#"
import socket, threading
def tcp(p):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", p)); s.listen(64)
    while True:
        c, _ = s.accept(); c.close()
def udp(p):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", p))
    while True:
        d, a = u.recvfrom(100); u.sendto(d, a)
ts = [threading.Thread(target=tcp, args=(p,)) for p in {tcp:?}] + [threading.Thread(target=udp, args=(p,)) for p in {udp:?}]
for t in ts: t.daemon = True; t.start()
for t in ts: t.join()
"#
        );
        self.spawn_in(ns, &["python3", "-c", &script]);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    /// `args` started in namespace `ns`, killed when the topology goes.
    pub fn spawn_in(&self, ns: &str, args: &[&str]) {
        let child = Command::new("ip").args(["netns", "exec", ns]).args(args).spawn().expect("spawn in namespace");
        self.servers.lock().expect("servers").push(child);
    }

    /// TCP and UDP echo servers on port 80.
    pub fn serve(&self, ns: &str) {
        self.serve_ports(ns, &[80], &[80]);
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for mut c in self.servers.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for args in &self.cleanup {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = self.exec(&self.f, &args);
        }
        for ns in [&self.s, &self.f, &self.r] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// A topology whose firewall runs our iptables with a FORWARD chain padded by `filler` rules
/// no test packet matches (a hook big enough to take changes in place), then `rules` (lines
/// of a filter table, COMMIT included), restored; the receiver serves TCP `ports`. Our pinned
/// state of the firewall goes with it.
pub struct PaddedFirewall {
    pub t: Topo,
    filler: u32,
    tools: super::Tools,
    _files: super::ScratchDir,
}

impl PaddedFirewall {
    pub fn new(purpose: &str, filler: u32, rules: &str, ports: &[u16]) -> PaddedFirewall {
        let tools = super::Tools::ours();
        let mut t = Topo::new(purpose);
        t.on_drop_in_fw(&[env!("CARGO_BIN_EXE_bpf-iptables"), "--reset"]);
        t.serve_ports(&t.r, ports, &[]);
        let mut text = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:U - [0:0]\n");
        for i in 0..filler {
            text += &format!("-A FORWARD -s 10.0.{}.{}/32 -p tcp -m tcp --dport {} -j DROP\n", i / 250, i % 250 + 1, 1000 + i);
        }
        text += rules;
        let files = super::ScratchDir::new(purpose);
        let file = files.path().join("rules");
        std::fs::write(&file, text).expect("write rules");
        let restore = tools.bin("iptables-restore");
        let o = t.exec(&t.f, &[restore.to_str().expect("utf-8 path"), file.to_str().expect("utf-8 path")]);
        assert!(o.status.success(), "restore: {}", String::from_utf8_lossy(&o.stderr));
        PaddedFirewall { t, filler, tools, _files: files }
    }

    /// Our `iptables args` in the firewall.
    pub fn run(&self, args: &[&str]) -> Output {
        let ipt = self.tools.bin("iptables");
        let mut all = vec![ipt.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        self.t.exec(&self.t.f, &all)
    }

    /// As `run`, which must succeed, printing nothing unless it lists; its output.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty() || args.contains(&"-S") || args.contains(&"-L"), "{args:?} printed");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// How many compiled rules FORWARD has in the installed image (deleted ones included):
    /// unchanged by a change patched in place, changed by a rebuild.
    pub fn compiled_forward(&self) -> u32 {
        let out = self.t.exec(&self.t.f, &[env!("CARGO_BIN_EXE_bpf-iptables"), "--pin-dir"]);
        let pin_dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let hook = bpf_iptables::compile::tables::Hook::Forward;
        bpf_iptables::datapath::installed_rules(&pin_dir, hook).expect("image").expect("installed")
    }

    /// The packets each rule of `chain` counted, in order (`-L -v -x`).
    pub fn packet_counts(&self, chain: &str) -> Vec<u64> {
        let listed = self.ok(&["-L", chain, "-v", "-x", "-n"]);
        listed.lines().skip(2).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect()
    }

    /// `-S`, the filler rules (all there) left out.
    pub fn listed_past_filler(&self) -> Vec<String> {
        let listed = self.ok(&["-S"]);
        let rest: Vec<String> = listed.lines().filter(|l| !l.contains("-s 10.0.")).map(String::from).collect();
        assert_eq!(listed.lines().count(), self.filler as usize + rest.len(), "the filler rules");
        rest
    }
}

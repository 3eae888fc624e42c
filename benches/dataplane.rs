//! Per-packet cost on a real topology, side by side: bpf-iptables, iptables-legacy, iptables-nft
//! and native nft, each holding the same N rules, against a bare XDP_DROP program.
//!
//!   cargo bench --bench dataplane        (as root)
//!   env: BPFIPT_BENCH_N="0 100 1000 10000 100000"  BPFIPT_BENCH_IMPLS="bpf legacy nft-compat nft"
//!        BPFIPT_BENCH_VARIANTS="forward input deep established stream flows sources" (or appended)
//!        BPFIPT_BENCH_REPS=5
//!        BPFIPT_BENCH_SECONDS=0.5 (CPU time per repetition)
//!
//! Topology: generator `g` (g0 198.18.1.2) -> firewall `f` (f0 198.18.1.1, f1 198.18.2.1,
//! forwarding) -> sink `k` (k0 198.18.2.2), veth pairs. The generator is an XDP program run
//! with BPF_PROG_TEST_RUN in live-frames mode: it returns XDP_TX on g0, so every run transmits
//! one real frame into f0 (UDP 198.18.1.2:40000 -> port 9). The veth peer's NAPI receives it on
//! the CPU that sent it, so the whole path of a packet, generator included, runs on the one
//! CPU this process is pinned to, and its busy time (/proc/stat: all but idle, iowait and
//! steal) over a repetition is the CPU time of those packets. The generator's own cost is
//! measured the same way (the generator returning XDP_DROP, nothing sent) and subtracted.
//!
//! Rulesets: N rules that do not match (distinct source/destination /32s and ports), then a last
//! rule that matches and drops (the worst case of a linear search; dropping keeps the
//! forwarding path out of the figure). Variants: `forward` (packet through the firewall,
//! FORWARD rules), `input` (packet to the firewall, INPUT rules), `deep` (FORWARD, only the
//! destination port of the non-matching rules differs from the packet), `established` (FORWARD,
//! `-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT` first; the packets are NEW, as each is
//! dropped before its connection is confirmed, so every packet pays the tracker's lookup),
//! `stream` (the same rules but the last accepts: an established UDP flow, opened by one
//! packet and a reply from the sink, then every packet accepted by the first rule and
//! forwarded to the sink, which drops it with an XDP program; counted at the first rule).
//! `flows` (`forward`'s rules, but each packet from a random UDP source port: a new flow
//! almost every packet; no rule looks at the source port, so bpf-iptables' flow cache keys
//! them all as one), `sources` (`forward`'s rules, but each packet from a random source
//! address of 198.18.128.0/17, which the last rule matches: a new flow almost every packet
//! that no cache entry can answer, so every packet is classified and routed: the first packet
//! of a flow), `appended` (`sources`, but bpf-iptables gets its last rules by `-A`, one
//! command each, as many as its image of N rules takes in place, the matching one last: a
//! packet walks them in order after the classifier; not in the default list). Every other
//! variant sends one flow, whose packets after the first take the cached verdict.
//!
//! bpf-iptables runs as XDP on f0 (BPF_IPTABLES_INGRESS=xdp). The others get a bare XDP_PASS
//! program on f0: a veth only takes frames sent by XDP when its peer runs NAPI, which XDP
//! enables; that program's cost (a few ns) is part of their figure. bpf-iptables' ratio to a
//! bare XDP_DROP program (the target) comes from pairs: a second topology holds the
//! bare program, each of our repetitions follows one of its, and the ratio is the median of
//! the pairs' ratios (the VM's speed drifts by half within minutes).
//!
//! Every point runs in fresh namespaces (a netfilter table, once it exists in a namespace, keeps
//! its hooks registered even flushed, which would tax whatever is measured after it), and
//! checks itself: the counter of the rule the traffic must hit (the last rule; the first for
//! `stream`) grew by exactly the packets sent (the bare program: none may be missing from
//! f0's XDP statistics), else the run aborts; a repetition whose packets cost nothing, or
//! that did not stay on the measured CPU, is redone.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use bpf_iptables::compile::tables::Hook;
use libbpf_rs::libbpf_sys;

const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;
const GEN_CPU: usize = 1;
const BIN: &str = env!("CARGO_BIN_EXE_bpf-iptables");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn sh(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `args` in namespace `ns` with `input` on stdin.
fn sh_in(ns: &str, args: &[&str], input: &str, env: &[(&str, &str)]) -> String {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args).envs(env.iter().copied());
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "{args:?} in {ns}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> libbpf_sys::bpf_insn {
    libbpf_sys::bpf_insn { code, _bitfield_align_1: [], _bitfield_1: libbpf_sys::bpf_insn::new_bitfield_1(dst, src), off, imm }
}

fn load_xdp(insns: &[libbpf_sys::bpf_insn]) -> i32 {
    let license = CString::new("GPL").expect("license");
    // SAFETY: valid instructions and license; no options.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(libbpf_sys::BPF_PROG_TYPE_XDP, std::ptr::null(), license.as_ptr(), insns.as_ptr(), insns.len() as u64, std::ptr::null_mut())
    };
    assert!(fd >= 0, "loading an XDP program: {}", io::Error::from_raw_os_error(-fd));
    fd
}

/// `return ret`.
fn const_prog(ret: i32) -> i32 {
    load_xdp(&[insn(0xb7, 0, 0, 0, ret), insn(0x95, 0, 0, 0, 0)])
}

/// A floor for a packet no cache can answer: parses nothing but the IPv4 header's fields a
/// route depends on, asks the FIB (bpf_fib_lookup, as bpf-iptables' programs do to tell
/// FORWARD from INPUT and the output interface), then drops. No firewall that must know a
/// packet's route costs less.
fn fib_drop_prog() -> i32 {
    const FIB_LOOKUP: i32 = 69; // bpf_fib_lookup
    const SKIP_NEIGH: i32 = 1 << 2; // BPF_FIB_LOOKUP_SKIP_NEIGH
    // struct bpf_fib_lookup (64 bytes) at r10 - 64: family @0, l4_protocol @1, ifindex @8,
    // tos @12, ipv4_src @16, ipv4_dst @32.
    let mut ask = Vec::new();
    for off in (-64..0).step_by(8) {
        ask.push(insn(0x7a, 10, 0, off, 0)); // *(u64 *)(r10 + off) = 0
    }
    ask.extend([
        insn(0x72, 10, 0, -64, 2),      // family = AF_INET
        insn(0x71, 5, 2, 23, 0),        // r5 = IP protocol
        insn(0x73, 10, 5, -63, 0),      // l4_protocol = r5
        insn(0x71, 5, 2, 15, 0),        // r5 = TOS
        insn(0x73, 10, 5, -52, 0),      // tos = r5
        insn(0x61, 5, 2, 26, 0),        // r5 = source address
        insn(0x63, 10, 5, -48, 0),      // ipv4_src = r5
        insn(0x61, 5, 2, 30, 0),        // r5 = destination address
        insn(0x63, 10, 5, -32, 0),      // ipv4_dst = r5
        insn(0x61, 5, 6, 12, 0),        // r5 = ctx->ingress_ifindex
        insn(0x63, 10, 5, -56, 0),      // ifindex = r5
        insn(0xbf, 1, 6, 0, 0),         // r1 = ctx
        insn(0xbf, 2, 10, 0, 0),        // r2 = r10
        insn(0x07, 2, 0, 0, -64),       // r2 -= 64
        insn(0xb7, 3, 0, 0, 64),        // r3 = sizeof(struct bpf_fib_lookup)
        insn(0xb7, 4, 0, 0, SKIP_NEIGH), // r4 = flags
        insn(0x85, 0, 0, 0, FIB_LOOKUP), // bpf_fib_lookup(ctx, r2, 64, flags)
    ]);
    let mut prog = vec![
        insn(0xbf, 6, 1, 0, 0),         // r6 = ctx
        insn(0x61, 2, 6, 0, 0),         // r2 = ctx->data
        insn(0x61, 3, 6, 4, 0),         // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),         // r4 = r2
        insn(0x07, 4, 0, 0, 34),        // r4 += 34 (Ethernet + IPv4 header)
        insn(0x2d, 4, 3, ask.len() as i16, 0), // if r4 > r3 skip the question
    ];
    prog.extend(ask);
    prog.extend([insn(0xb7, 0, 0, 0, XDP_DROP), insn(0x95, 0, 0, 0, 0)]);
    load_xdp(&prog)
}

/// The generator: restores the link-layer addresses, IPv4 TTL and checksum of `frame` (live
/// frames keep their pages between runs, and forwarding rewrites those in place), writes
/// what `random` draws, then returns `ret`.
fn gen_prog(frame: &[u8], ret: i32, random: Random) -> i32 {
    let le16 = |o: usize| u16::from_le_bytes([frame[o], frame[o + 1]]) as i32;
    let le32 = |o: usize| i32::from_le_bytes([frame[o], frame[o + 1], frame[o + 2], frame[o + 3]]);
    let mut prog = vec![
        insn(0xbf, 6, 1, 0, 0),         // r6 = ctx
        insn(0xb7, 0, 0, 0, 0),         // r0 = 0
    ];
    if random != Random::Nothing {
        prog.push(insn(0x85, 0, 0, 0, 7)); // r0 = bpf_get_prandom_u32()
    }
    if random == Random::Source {
        // 198.18.128-255.x: no address or broadcast of the topology's subnets (martians)
        prog.push(insn(0x47, 0, 0, 0, 0x80)); // r0 |= 0x80 (the third byte's top bit)
    }
    // The UDP source port (the frame's UDP checksum is 0: none), or the low half of the IPv4
    // source address with the IP ID making up for it in the header checksum: ID' = ID +
    // address - r0 in ones' complement (byte order does not matter to that sum).
    let (port_at, id_at, addr_at) = (34, 18, 28);
    let fold = |x: i32| (x & 0xffff) + (x >> 16);
    let k = fold(le16(id_at) + le16(addr_at));
    let (store_at, fix) = match random {
        Random::Source => (addr_at, vec![
            insn(0xbf, 5, 0, 0, 0),         // r5 = r0
            insn(0x57, 5, 0, 0, 0xffff),    // r5 &= 0xffff
            insn(0xa7, 5, 0, 0, 0xffff),    // r5 ^= 0xffff (0xffff - r5)
            insn(0x07, 5, 0, 0, k),         // r5 += k
            insn(0xbf, 7, 5, 0, 0),         // r7 = r5
            insn(0x77, 7, 0, 0, 16),        // r7 >>= 16
            insn(0x57, 5, 0, 0, 0xffff),    // r5 &= 0xffff
            insn(0x0f, 5, 7, 0, 0),         // r5 += r7
            insn(0x6b, 2, 5, id_at as i16, 0), // IP ID = r5
        ]),
        _ => (port_at, vec![]),
    };
    prog.extend([
        insn(0x61, 2, 6, 0, 0),         // r2 = ctx->data
        insn(0x61, 3, 6, 4, 0),         // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0),         // r4 = r2
        insn(0x07, 4, 0, 0, 36),        // r4 += 36
        insn(0x2d, 4, 3, 7 + 2 + fix.len() as i16, 0), // if r4 > r3 skip the stores
        insn(0x62, 2, 0, 0, le32(0)),   // destination and source MAC
        insn(0x62, 2, 0, 4, le32(4)),
        insn(0x62, 2, 0, 8, le32(8)),
        insn(0x6a, 2, 0, 22, le16(22)), // TTL and protocol
        insn(0x6a, 2, 0, 24, le16(24)), // header checksum
        insn(0x6a, 2, 0, id_at as i16, le16(id_at)), // IP ID
        insn(0x6a, 2, 0, addr_at as i16, le16(addr_at)), // the source address's low half
        insn(0x15, 0, 0, 1 + fix.len() as i16, 0), // if r0 == 0 skip what it draws
        insn(0x6b, 2, 0, store_at as i16, 0), // source port or address = r0
    ]);
    prog.extend(fix);
    prog.extend([insn(0xb7, 0, 0, 0, ret), insn(0x95, 0, 0, 0, 0)]);
    load_xdp(&prog)
}

/// What the generator draws at random for each packet.
#[derive(Clone, Copy, PartialEq)]
enum Random {
    Nothing,
    /// the UDP source port
    Sport,
    /// the low half of the source address (198.18.128-255.y)
    Source,
}

/// The three namespaces; removed (with our pinned state) on drop.
struct Topo {
    g: String,
    f: String,
    k: String,
}

impl Topo {
    fn new() -> Topo {
        // two live at once: a point's and its bare program's
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!("{}-{}", std::process::id(), SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let t = Topo { g: format!("bpfipt-dp-{id}-g"), f: format!("bpfipt-dp-{id}-f"), k: format!("bpfipt-dp-{id}-k") };
        for ns in [&t.g, &t.f, &t.k] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            // No IPv6 chatter (router and neighbour solicitations) on the links: the bare
            // program's count of dropped frames must be the generator's alone.
            // No reverse-path filter (a namespace may inherit one): the `sources` variant's
            // sources have no route back, and bpf-iptables filters before the stack's check.
            for k in ["all", "default"] {
                sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", &format!("net.ipv6.conf.{k}.disable_ipv6=1")]);
                sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", &format!("net.ipv4.conf.{k}.rp_filter=0")]);
            }
        }
        sh(&["ip", "link", "add", "g0", "netns", &t.g, "type", "veth", "peer", "name", "f0", "netns", &t.f]);
        sh(&["ip", "link", "add", "k0", "netns", &t.k, "type", "veth", "peer", "name", "f1", "netns", &t.f]);
        for (ns, dev, addr) in [(&t.g, "g0", "198.18.1.2/24"), (&t.f, "f0", "198.18.1.1/24"), (&t.f, "f1", "198.18.2.1/24"), (&t.k, "k0", "198.18.2.2/24")] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        sh(&["ip", "-n", &t.g, "route", "add", "default", "via", "198.18.1.1"]);
        sh(&["ip", "-n", &t.k, "route", "add", "default", "via", "198.18.2.1"]);
        sh(&["ip", "netns", "exec", &t.f, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // No ARP on the way: the firewall knows the sink, the sink the firewall (it drops all
        // it receives in the stream variant).
        let k_mac = mac(&t.k, "k0");
        sh(&["ip", "-n", &t.f, "neigh", "replace", "198.18.2.2", "lladdr", &k_mac, "dev", "f1", "nud", "permanent"]);
        let f1_mac = mac(&t.f, "f1");
        sh(&["ip", "-n", &t.k, "neigh", "replace", "198.18.2.1", "lladdr", &f1_mac, "dev", "k0", "nud", "permanent"]);
        t
    }
}

impl Drop for Topo {
    /// Our pinned state outlives the namespace: removed first. Deleting the namespaces takes
    /// every program, table and tracked connection with them.
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "exec", &self.f, BIN, "--reset"]);
        for ns in [&self.g, &self.f, &self.k] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

fn mac(ns: &str, dev: &str) -> String {
    let out = sh(&["ip", "-n", ns, "-o", "link", "show", dev]);
    let i = out.find("link/ether ").expect("ether address") + "link/ether ".len();
    out[i..i + 17].to_string()
}

fn mac_bytes(s: &str) -> Vec<u8> {
    s.split(':').map(|h| u8::from_str_radix(h, 16).expect("hex")).collect()
}

fn ifindex(ns: &str, dev: &str) -> u32 {
    let out = sh(&["ip", "-n", ns, "-o", "link", "show", dev]);
    out.split(':').next().and_then(|s| s.trim().parse().ok()).expect("ifindex")
}

/// Moves this thread into namespace `ns`.
fn enter(ns: &str) {
    let f = fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
    // SAFETY: a valid namespace fd.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {ns}");
}

/// Ethernet + IPv4 + UDP 198.18.1.2:40000 -> `dst`:9, 18 bytes of payload.
fn frame(dmac: &[u8], smac: &[u8], dst: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(dmac);
    f.extend_from_slice(smac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut iph = vec![0x45, 0, 0, 46, 0, 1, 0x40, 0, 64, 17, 0, 0, 198, 18, 1, 2];
    iph.extend_from_slice(&dst);
    let ck = bpf_iptables::testutil::inet_checksum(&iph);
    iph[10..12].copy_from_slice(&ck.to_be_bytes());
    f.extend(iph);
    f.extend_from_slice(&[0x9c, 0x40, 0, 9, 0, 26, 0, 0]);
    f.extend_from_slice(&[0u8; 18]);
    f
}

/// Busy time of `cpu` so far, in ns (/proc/stat: user nice system idle iowait irq softirq
/// steal ..., in USER_HZ ticks).
fn cpu_busy_ns(cpu: usize) -> u64 {
    let stat = fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = stat.lines().find(|l| l.starts_with(&format!("cpu{cpu} "))).expect("cpu line");
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // SAFETY: plain getter.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    busy * 1_000_000_000 / hz
}

struct Generator {
    tx: i32,
    ifindex: u32,
    frame: Vec<u8>,
    /// CPU ns per packet of the generator alone (it drops its frames instead of sending them).
    own: f64,
}

impl Drop for Generator {
    fn drop(&mut self) {
        // SAFETY: closing our own program fd.
        unsafe { libc::close(self.tx) };
    }
}

impl Generator {
    /// The generator of `v`'s frame on `topo`, its own cost measured (this thread must be in
    /// the generator's namespace).
    fn new(topo: &Topo, v: Variant, reps: usize, secs: f64) -> Generator {
        let mut g = Generator::with_own(topo, v, 0.0);
        let drop = gen_prog(&g.frame, XDP_DROP, v.random());
        let n = g.calibrate(drop, secs);
        g.own = median((0..reps).map(|_| g.measure(drop, n)).collect());
        // SAFETY: closing our own program fd.
        unsafe { libc::close(drop) };
        g
    }

    fn with_own(topo: &Topo, v: Variant, own: f64) -> Generator {
        let frame = frame(&mac_bytes(&mac(&topo.f, "f0")), &mac_bytes(&mac(&topo.g, "g0")), v.dst());
        Generator { tx: gen_prog(&frame, XDP_TX, v.random()), ifindex: ifindex(&topo.g, "g0"), frame, own }
    }

    /// Runs program `fd` `repeat` times in live-frames mode on g0.
    fn run(&self, fd: i32, repeat: u32) {
        let md: [u32; 6] = [0, self.frame.len() as u32, 0, self.ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|x| x.to_ne_bytes()).collect();
        let mut opts = libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
            data_in: self.frame.as_ptr().cast(),
            data_size_in: self.frame.len() as u32,
            ctx_in: ctx.as_ptr().cast(),
            ctx_size_in: ctx.len() as u32,
            repeat: repeat as i32,
            flags: libbpf_sys::BPF_F_TEST_XDP_LIVE_FRAMES,
            ..Default::default()
        };
        // SAFETY: buffers outlive the call and their sizes are given.
        let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(fd, &mut opts) };
        assert_eq!(rc, 0, "live-frames test run: {}", io::Error::from_raw_os_error(-rc));
    }

    /// CPU ns per packet of `repeat` packets sent with program `fd`. The figure is the busy
    /// time of GEN_CPU: a repetition this thread did not spend entirely there (its affinity
    /// reset from outside, once seen to make a point read -20 ns) is pinned again and redone.
    fn measure(&self, fd: i32, repeat: u32) -> f64 {
        // SAFETY: plain getter.
        let on_gen_cpu = || unsafe { libc::sched_getcpu() } == GEN_CPU as i32;
        for _ in 0..5 {
            if !on_gen_cpu() {
                pin_to(GEN_CPU);
                continue;
            }
            let b0 = cpu_busy_ns(GEN_CPU);
            self.run(fd, repeat);
            // Let anything deferred to ksoftirqd on this CPU finish inside the window.
            std::thread::sleep(std::time::Duration::from_millis(30));
            if on_gen_cpu() {
                return (cpu_busy_ns(GEN_CPU) - b0) as f64 / repeat as f64;
            }
        }
        panic!("could not keep the generator on CPU {GEN_CPU}");
    }

    /// Packets per repetition so that one with program `fd` takes about `secs` of CPU.
    fn calibrate(&self, fd: i32, secs: f64) -> u32 {
        let mut n = 1000u32;
        loop {
            let t = Instant::now();
            self.run(fd, n);
            let el = t.elapsed().as_secs_f64();
            if el > 0.05 || n >= 50_000_000 {
                return ((n as f64 * secs / el) as u32).clamp(200, 50_000_000);
            }
            n = n.saturating_mul(8);
        }
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid arguments.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "pinning");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Forward,
    Input,
    Deep,
    Established,
    Stream,
    Flows,
    Sources,
    Appended,
}

impl Variant {
    const ALL: [Variant; 8] = [
        Variant::Forward,
        Variant::Input,
        Variant::Deep,
        Variant::Established,
        Variant::Stream,
        Variant::Flows,
        Variant::Sources,
        Variant::Appended,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Forward => "forward",
            Variant::Input => "input",
            Variant::Deep => "deep",
            Variant::Established => "established",
            Variant::Stream => "stream",
            Variant::Flows => "flows",
            Variant::Sources => "sources",
            Variant::Appended => "appended",
        }
    }
    /// Every packet from a random source port, or address: a new flow (almost) each time.
    fn random(self) -> Random {
        match self {
            Variant::Flows => Random::Sport,
            Variant::Sources | Variant::Appended => Random::Source,
            _ => Random::Nothing,
        }
    }
    /// The last rule's source: every source the generator draws.
    fn sources(self) -> &'static str {
        if self.random() == Random::Source {
            "198.18.0.0/16"
        } else {
            "198.18.1.2/32"
        }
    }
    fn chain(self) -> &'static str {
        if self == Variant::Input {
            "INPUT"
        } else {
            "FORWARD"
        }
    }
    fn dst(self) -> [u8; 4] {
        if self == Variant::Input {
            [198, 18, 1, 1]
        } else {
            [198, 18, 2, 2]
        }
    }
}

/// The i-th non-matching rule as (iptables match text, nft match text).
fn filler(v: Variant, i: u32) -> (String, String) {
    let port = 10 + i % 60000;
    if v == Variant::Deep {
        let d = "198.18.2.2";
        (format!("-s 198.18.1.2/32 -d {d}/32 -p udp -m udp --dport {port}"), format!("ip saddr 198.18.1.2 ip daddr {d} udp dport {port}"))
    } else {
        let (a, b) = (i / 250, i % 250 + 1);
        let (s, d) = (format!("10.{}.{}.{b}", a / 250, a % 250), format!("172.16.{}.{b}", a % 250));
        (format!("-s {s}/32 -d {d}/32 -p udp -m udp --dport {port}"), format!("ip saddr {s} ip daddr {d} udp dport {port}"))
    }
}

/// Whether the ruleset starts with the ESTABLISHED,RELATED accept rule.
fn leads_with_established(v: Variant) -> bool {
    v == Variant::Established || v == Variant::Stream
}

/// The last rule's target: the stream's first packet opens its connection there.
fn last_target(v: Variant) -> (&'static str, &'static str) {
    if v == Variant::Stream {
        ("ACCEPT", "accept")
    } else {
        ("DROP", "drop")
    }
}

/// For `appended`: how many rules bpf-iptables gets by `-A`, one command each, after the
/// others are restored, the matching one last: as many as an image of N rules takes in place.
fn appended(v: Variant, n: u32) -> u32 {
    if v == Variant::Appended {
        bpf_iptables::datapath::image::tail_room(n as usize) as u32
    } else {
        0
    }
}

/// Non-matching rules before the last: N, and the appended ones but the last.
fn fillers(v: Variant, n: u32) -> u32 {
    n + appended(v, n).saturating_sub(1)
}

fn iptables_rules(v: Variant, n: u32) -> String {
    let ch = v.chain();
    let mut s = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    if leads_with_established(v) {
        s += &format!("-A {ch} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    }
    for i in 0..fillers(v, n) {
        s += &format!("-A {ch} {} -j DROP\n", filler(v, i).0);
    }
    s += &format!("-A {ch} -s {} -p udp -m udp --dport 9 -j {}\nCOMMIT\n", v.sources(), last_target(v).0);
    s
}

fn nft_rules(v: Variant, n: u32) -> String {
    let mut s = String::from("flush ruleset\ntable ip filter {\n");
    for ch in ["INPUT", "FORWARD"] {
        s += &format!(" chain {ch} {{ type filter hook {} priority 0; policy accept;\n", ch.to_lowercase());
        if ch == v.chain() {
            if leads_with_established(v) {
                s += "  ct state established,related counter accept\n";
            }
            for i in 0..fillers(v, n) {
                s += &format!("  {} drop\n", filler(v, i).1);
            }
            s += &format!("  ip saddr {} udp dport 9 counter {}\n", v.sources(), last_target(v).1);
        }
        s += " }\n";
    }
    s + "}\n"
}

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Bare,
    /// bare, but asking the FIB first: the floor of a first packet (fib_drop_prog)
    FibDrop,
    Bpf,
    Legacy,
    NftCompat,
    Nft,
}

impl Impl {
    const MEASURED: [Impl; 4] = [Impl::Bpf, Impl::Legacy, Impl::NftCompat, Impl::Nft];

    /// Its name in BPFIPT_BENCH_IMPLS.
    fn key(self) -> &'static str {
        match self {
            Impl::Bare => "bare",
            Impl::FibDrop => "fib",
            Impl::Bpf => "bpf",
            Impl::Legacy => "legacy",
            Impl::NftCompat => "nft-compat",
            Impl::Nft => "nft",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Impl::Bare => "bare XDP_DROP",
            Impl::FibDrop => "XDP_DROP after a FIB lookup",
            Impl::Bpf => "bpf-iptables",
            Impl::Legacy => "iptables-legacy",
            Impl::NftCompat => "iptables-nft",
            Impl::Nft => "nft",
        }
    }
    fn restore(self) -> &'static str {
        match self {
            Impl::Legacy => "iptables-legacy-restore",
            Impl::NftCompat => "iptables-nft-restore",
            _ => "iptables-restore",
        }
    }
    fn save(self) -> &'static str {
        match self {
            Impl::Legacy => "iptables-legacy-save",
            Impl::NftCompat => "iptables-nft-save",
            _ => "iptables-save",
        }
    }
}

/// Our binary under the names iptables, iptables-restore and iptables-save, in a temporary
/// directory.
struct Links(PathBuf);
impl Links {
    fn new() -> Links {
        let d = std::env::temp_dir().join(format!("bpfipt-dp-{}", std::process::id()));
        fs::create_dir_all(&d).expect("tmp dir");
        for n in ["iptables", "iptables-restore", "iptables-save"] {
            let _ = fs::remove_file(d.join(n));
            std::os::unix::fs::symlink(BIN, d.join(n)).expect("symlink");
        }
        Links(d)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}
impl Drop for Links {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Bench {
    links: Links,
    pass: i32,
    drop: i32,
    fib_drop: i32,
}

impl Bench {
    /// Installs `imp` with `v`'s ruleset of N rules in the firewall namespace.
    fn install(&self, topo: &Topo, imp: Impl, v: Variant, n: u32) {
        let f = &topo.f;
        let f0 = ifindex(f, "f0");
        let attach_in = |ns: &str, ifindex: u32, fd: i32| {
            enter(ns);
            // SAFETY: valid ifindex and program fd; no options.
            let rc = unsafe { libbpf_sys::bpf_xdp_attach(ifindex as i32, fd, libbpf_sys::XDP_FLAGS_DRV_MODE, std::ptr::null()) };
            assert_eq!(rc, 0, "attaching XDP in {ns}: {}", io::Error::from_raw_os_error(-rc));
        };
        let attach = |fd: i32| attach_in(f, f0, fd);
        if v == Variant::Stream {
            // The sink drops what is forwarded to it as cheaply as it can.
            attach_in(&topo.k, ifindex(&topo.k, "k0"), self.drop);
        }
        match imp {
            Impl::Bare => attach(self.drop),
            Impl::FibDrop => attach(self.fib_drop),
            Impl::Bpf => {
                let env = [("BPF_IPTABLES_INGRESS", "xdp")];
                let rules = iptables_rules(v, n);
                let lines: Vec<&str> = rules.lines().collect();
                let (k, commit) = (appended(v, n) as usize, lines.len() - 1);
                let restored = [&lines[..commit - k], &lines[commit..]].concat().join("\n") + "\n";
                sh_in(f, &[&self.links.path("iptables-restore")], &restored, &env);
                for rule in &lines[commit - k..commit] {
                    let mut args = vec![self.links.path("iptables")];
                    args.extend(rule.split_whitespace().map(String::from));
                    sh_in(f, &args.iter().map(String::as_str).collect::<Vec<_>>(), "", &env);
                }
                if k > 0 {
                    // each appended in place, none folded into the classifier by a rebuild
                    let pins = PathBuf::from(sh(&["ip", "netns", "exec", f, BIN, "--pin-dir"]).trim());
                    let walked = bpf_iptables::datapath::appended_rules(&pins, Hook::Forward).expect("image");
                    assert_eq!(walked, Some(k as u32), "appended in place");
                }
            }
            Impl::Legacy | Impl::NftCompat => {
                sh_in(f, &[imp.restore()], &iptables_rules(v, n), &[]);
                attach(self.pass);
            }
            Impl::Nft => {
                sh_in(f, &["nft", "-f", "-"], &nft_rules(v, n), &[]);
                attach(self.pass);
            }
        }
        enter(&topo.g);
    }

    /// Packets counted so far by the rule the traffic must hit (bare: f0's XDP drops).
    fn counted(&self, topo: &Topo, imp: Impl, v: Variant) -> u64 {
        let f = &topo.f;
        match imp {
            Impl::Bare | Impl::FibDrop => {
                // veth counts its XDP program's drops per queue (`ethtool -S`).
                let out = sh(&["ip", "netns", "exec", f, "ethtool", "-S", "f0"]);
                out.lines()
                    .filter(|l| l.trim_start().starts_with("rx_queue_0_xdp_drops:") || l.trim_start().starts_with("rx_xdp_drops:"))
                    .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                    .max()
                    .unwrap_or(0)
            }
            Impl::Nft => {
                let out = sh(&["ip", "netns", "exec", f, "nft", "list", "chain", "ip", "filter", v.chain()]);
                let l = if v == Variant::Stream {
                    out.lines().find(|l| l.contains("ct state established,related counter"))
                } else {
                    out.lines().find(|l| l.contains("udp dport 9 counter"))
                }
                .expect("counter rule");
                let w: Vec<&str> = l.split_whitespace().collect();
                let i = w.iter().position(|x| *x == "packets").expect("packets");
                w[i + 1].parse().expect("count")
            }
            _ => {
                let save = if imp == Impl::Bpf { self.links.path("iptables-save") } else { imp.save().to_string() };
                let out = sh(&["ip", "netns", "exec", f, &save, "-c"]);
                let mut rules = out.lines().filter(|l| l.contains(&format!("-A {}", v.chain())));
                // the stream's packets are counted by the ESTABLISHED rule, the others by the last
                let l = if v == Variant::Stream { rules.next() } else { rules.last() }.expect("rule");
                l[1..l.find(':').expect(":")].parse().expect("count")
            }
        }
    }
}

/// One implementation holding one ruleset on its own topology, its generator ready: what a
/// point measures, a repetition at a time.
struct Measured {
    topo: Topo,
    imp: Impl,
    v: Variant,
    n: u32,
    g: Generator,
    per_rep: u32,
    before: u64,
    /// repetitions run, redone ones included: what the counters must show sent
    runs: u32,
}

impl Measured {
    fn new(bench: &Bench, imp: Impl, v: Variant, n: u32, own: f64, secs: f64) -> Measured {
        let topo = Topo::new();
        bench.install(&topo, imp, v, n);
        let g = Generator::with_own(&topo, v, own);
        if v == Variant::Stream && imp != Impl::Bare {
            // Open the connection: the first packet (NEW, accepted by the last rule), then a
            // reply from the sink, so that what follows is ESTABLISHED.
            g.run(g.tx, 1);
            let reply = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
                         s.bind(('198.18.2.2', 9)); s.sendto(b'reply', ('198.18.1.2', 40000))";
            sh(&["ip", "netns", "exec", &topo.k, "python3", "-c", reply]);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        g.run(g.tx, 1000); // warm-up (first-packet work: neighbours, routes, map pages)
        let per_rep = g.calibrate(g.tx, secs);
        let before = bench.counted(&topo, imp, v);
        Measured { topo, imp, v, n, g, per_rep, before, runs: 0 }
    }

    /// CPU ns per packet of one repetition. No packet costs nothing: a repetition that says so
    /// was measured wrong (the accounting missed the work), not fast; it is redone, a few
    /// times at most.
    fn repetition(&mut self, reps: usize) -> f64 {
        enter(&self.topo.g);
        loop {
            self.runs += 1;
            let c = self.g.measure(self.g.tx, self.per_rep) - self.g.own;
            if c > 0.0 {
                return c;
            }
            let (name, v, n) = (self.imp.name(), self.v.name(), self.n);
            eprintln!("{name} {v} N={n}: a repetition measured {c:.0} ns per packet, redone");
            assert!((self.runs as usize) < 2 * reps, "{name} {v} N={n}: repetitions keep measuring nothing");
        }
    }

    /// The matching rule (the bare program: f0's drops) counted exactly the packets sent.
    fn check(&self, bench: &Bench) {
        let sent = self.per_rep as u64 * self.runs as u64;
        let counted = bench.counted(&self.topo, self.imp, self.v) - self.before;
        let (name, v, n) = (self.imp.name(), self.v.name(), self.n);
        assert_eq!(counted, sent, "{name} {v} N={n}: the matching rule counted {counted} of {sent} packets sent");
    }
}

/// A point's figures: median, min and max of its repetitions, and for bpf-iptables the bare
/// program's median and the median ratio.
struct Point {
    median: f64,
    min: f64,
    max: f64,
    bare: Option<(f64, f64)>,
    /// the FIB-lookup floor's median ratio to the bare program (`sources`)
    fib: Option<f64>,
}

fn env_list<T: std::str::FromStr>(key: &str, default: &str) -> Vec<T> {
    std::env::var(key).unwrap_or_else(|_| default.into()).split_whitespace().filter_map(|s| s.parse().ok()).collect()
}

fn main() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("dataplane: needs root (skipped)");
        return;
    }
    let sizes: Vec<u32> = env_list("BPFIPT_BENCH_N", "0 100 1000 10000 100000");
    let reps: usize = env_list("BPFIPT_BENCH_REPS", "5").first().copied().unwrap_or(5).max(1);
    let secs: f64 = env_list("BPFIPT_BENCH_SECONDS", "0.5").first().copied().unwrap_or(0.5);
    let impls: Vec<Impl> = env_list::<String>("BPFIPT_BENCH_IMPLS", "bpf legacy nft-compat nft")
        .iter()
        .filter_map(|s| Impl::MEASURED.into_iter().find(|i| i.key() == s))
        .collect();
    let variants: Vec<Variant> = env_list::<String>("BPFIPT_BENCH_VARIANTS", "forward input deep established stream flows sources")
        .iter()
        .filter_map(|s| Variant::ALL.into_iter().find(|v| v.name() == s))
        .collect();
    pin_to(GEN_CPU);
    let bench = Bench { links: Links::new(), pass: const_prog(XDP_PASS), drop: const_prog(XDP_DROP), fib_drop: fib_drop_prog() };
    // Each point gets fresh namespaces: netfilter keeps a table's hooks registered once it
    // exists in a namespace (even flushed), which would tax the implementations measured
    // after it. The generator's own cost depends only on the frame's size and whether it
    // draws source ports: measured once.
    let own: Vec<(Variant, f64)> = {
        let topo = Topo::new();
        enter(&topo.g);
        [Variant::Forward, Variant::Input, Variant::Flows, Variant::Sources].into_iter().map(|v| (v, Generator::new(&topo, v, reps, secs).own)).collect()
    };
    let own_for = |v: Variant| {
        own.iter().find(|(w, _)| w.dst() == v.dst() && w.random() == v.random()).expect("generator").1
    };

    // A point: `imp` with `v`'s N rules on a fresh topology, and for bpf-iptables a bare
    // XDP_DROP program on a second one, the two measured in turns, so that each of our
    // repetitions has a bare one next to it in time: this VM's speed drifts (the bare program
    // measured 67 ns in one minute, 121 in another), and a ratio of figures taken minutes
    // apart says more about the drift than about the firewall.
    let point = |imp: Impl, v: Variant, n: u32| -> Point {
        let mut run = Measured::new(&bench, imp, v, n, own_for(v), secs);
        let mut bare = (imp == Impl::Bpf).then(|| Measured::new(&bench, Impl::Bare, v, 0, own_for(v), secs));
        // where every packet is a first one, the floor of any firewall that routes, in turns too
        let mut fib = (imp == Impl::Bpf && v.random() == Random::Source).then(|| Measured::new(&bench, Impl::FibDrop, v, 0, own_for(v), secs));
        let mut costs: Vec<f64> = Vec::new();
        let mut bares: Vec<f64> = Vec::new();
        let mut ratios: Vec<f64> = Vec::new();
        let mut fib_ratios: Vec<f64> = Vec::new();
        while costs.len() < reps {
            let b = bare.as_mut().map(|b| b.repetition(reps));
            let f = fib.as_mut().map(|f| f.repetition(reps));
            let c = run.repetition(reps);
            if let Some(b) = b {
                bares.push(b);
                ratios.push(c / b);
                if let Some(f) = f {
                    fib_ratios.push(f / b);
                }
            }
            costs.push(c);
        }
        for m in std::iter::once(&run).chain(&bare).chain(&fib) {
            m.check(&bench);
        }
        let mut sorted = costs.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        Point {
            median: median(costs),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            bare: (!bares.is_empty()).then(|| (median(bares), median(ratios))),
            fib: (!fib_ratios.is_empty()).then(|| median(fib_ratios)),
        }
    };

    println!("CPU ns per packet on the receiving core (generator subtracted), median of {reps} x ~{secs} s (min-max)\n");
    println!(
        "generator alone: {:.0} ns/packet ({:.0} drawing source ports, {:.0} source addresses)",
        own[0].1, own[2].1, own[3].1
    );
    println!("bpf-iptables' ratio: the median of its repetitions' ratios to a bare XDP_DROP program measured in turns with them\n");
    println!("| variant | N | {} |", impls.iter().map(|i| i.name()).collect::<Vec<_>>().join(" | "));
    println!("|---|---:|{}", "---:|".repeat(impls.len()));
    for &v in &variants {
        for &n in &sizes {
            let cells: Vec<String> = impls
                .iter()
                .map(|&imp| {
                    let p = point(imp, v, n);
                    let (m, lo, hi) = (p.median, p.min, p.max);
                    let floor = p.fib.map(|f| format!("; a FIB lookup alone {f:.1}x")).unwrap_or_default();
                    match p.bare {
                        Some((bare, ratio)) => format!("{m:.0} ({lo:.0}-{hi:.0}) = {ratio:.1}x bare {bare:.0}{floor}"),
                        None => format!("{m:.0} ({lo:.0}-{hi:.0})"),
                    }
                })
                .collect();
            println!("| {} | {n} | {} |", v.name(), cells.join(" | "));
            let _ = io::stdout().flush();
        }
    }
}

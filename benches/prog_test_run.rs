//! Per-packet cost of the datapath programs alone: BPF_PROG_TEST_RUN of the real XDP ingress
//! program, `repeat` times on one packet, for N non-matching rules then a matching last one
//! (the worst case of a linear search), next to a bare XDP_DROP program run the same way.
//!
//!   cargo bench --bench prog_test_run   (as root; BPFIPT_BENCH_N="0 100 ...",
//!                                        BPFIPT_BENCH_VARIANTS="input deep established",
//!                                        BPFIPT_BENCH_REPEAT=200000 runs per repetition)
//!
//! Variants per N: `input` (a packet to this host, N rules with distinct source/destination
//! /32s and ports before the match), `deep` (only the destination port differs), `appended`
//! (N rules installed, then as many appended by `-A` as the hook takes in place, the matching
//! one last: the worst case of the appended rules' linear walk; not run by default),
//! `uncached` (`input`'s rules after a `-s 192.0.2.1 -j LOG` that the packet never reaches: a
//! LOG rule keeps the hook's verdicts out of the flow cache, so every run is classified in
//! full, the cost of a flow's first packet without its cache misses; not run by default), and
//! `established` (rule 1 `-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`, N rules after
//! it; the packet belongs to a connection tracked beforehand, so it stops at rule 1).
//! Each point checks itself: the rule expected to match counted every run.
//! Runs in a network namespace of its own (unshare), with its own pin directory, both removed.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use bpf_iptables::compile::tables::Hook;
use bpf_iptables::compile::{compile, compile_tail};
use bpf_iptables::datapath;
use bpf_iptables::model::*;
use libbpf_rs::libbpf_sys;

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().expect("spawn");
    assert!(st.success(), "{args:?}");
}

fn ip(a: [u8; 4]) -> u32 {
    u32::from_be_bytes(a)
}

fn host(a: u32) -> Option<Inv<Ipv4Mask>> {
    Some(Inv::new(Ipv4Mask::new(a, u32::MAX), false))
}

fn tcp_dport(p: u16) -> Match {
    Match::Tcp(TcpMatch { dport: Some(Inv::new(PortRange { lo: p, hi: p }, false)), ..Default::default() })
}

fn ctstate(bits: u16) -> Match {
    Match::Conntrack(ConntrackMatch { state: Some(Inv::new(bits, false)), ..Default::default() })
}

fn rule(ip: IpHeader, matches: Vec<Match>, target: Target) -> Rule {
    Rule { id: Rule::UNASSIGNED, ip, matches, target, counters: Counters::default() }
}

fn tcp() -> IpHeader {
    IpHeader { proto: Some(Inv::new(6, false)), ..Default::default() }
}

/// INPUT of `rules` (ids 0..), policy ACCEPT.
fn ruleset(rules: Vec<Rule>) -> Ruleset {
    let mut rs = Ruleset::default();
    let chain = rs.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT");
    for (id, mut r) in rules.into_iter().enumerate() {
        r.id = id as u32;
        chain.rules.push(r);
    }
    rs
}

fn filler(i: u32, deep: bool) -> Rule {
    let port = 1 + (i % 60000) as u16;
    if deep {
        // Same addresses as the packet, only the port differs (never 22).
        let port = if port >= 22 { port + 1 } else { port };
        rule(IpHeader { src: host(ip([198, 18, 1, 2])), dst: host(ip([198, 18, 1, 1])), ..tcp() }, vec![tcp_dport(port)], Target::Drop)
    } else {
        rule(IpHeader { src: host(ip([10, 0, 0, 0]) + i), dst: host(ip([172, 16, 0, 0]) + i), ..tcp() }, vec![tcp_dport(port)], Target::Drop)
    }
}

/// Ethernet + IPv4 + TCP 198.18.1.2:40000 -> 198.18.1.1:22 with `flags`, `seq`, `ack`.
fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut iph = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    iph.extend_from_slice(&src);
    iph.extend_from_slice(&dst);
    let ck = bpf_iptables::testutil::inet_checksum(&iph);
    iph[10..12].copy_from_slice(&ck.to_be_bytes());
    f.extend(iph);
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    f.extend(t);
    f
}

/// (return value, mean ns per run) of `repeat` runs of program `fd` on `pkt`, ingress `ifindex`.
fn test_run(fd: i32, pkt: &[u8], ifindex: u32, repeat: u32) -> (u32, u32) {
    let md: [u32; 6] = [0, pkt.len() as u32, 0, ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|x| x.to_ne_bytes()).collect();
    let mut out = vec![0u8; pkt.len() + 256];
    let r = datapath::test_run(fd, pkt, &ctx, &mut out, repeat).unwrap_or_else(|e| panic!("test run: {e}"));
    (r.retval, r.ns)
}

/// A bare `return XDP_DROP` program.
fn bare_drop() -> i32 {
    // r0 = XDP_DROP; exit
    let insns = [
        libbpf_sys::bpf_insn { code: 0xb7, _bitfield_align_1: [], _bitfield_1: libbpf_sys::bpf_insn::new_bitfield_1(0, 0), off: 0, imm: XDP_DROP as i32 },
        libbpf_sys::bpf_insn { code: 0x95, _bitfield_align_1: [], _bitfield_1: libbpf_sys::bpf_insn::new_bitfield_1(0, 0), off: 0, imm: 0 },
    ];
    let license = CString::new("GPL").expect("license");
    // SAFETY: valid instructions and license; no options.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(libbpf_sys::BPF_PROG_TYPE_XDP, std::ptr::null(), license.as_ptr(), insns.as_ptr(), insns.len() as u64, std::ptr::null_mut())
    };
    assert!(fd >= 0, "loading the bare XDP_DROP program: {}", io::Error::from_raw_os_error(-fd));
    fd
}

fn counter(pins: &Path, id: u32) -> u64 {
    use libbpf_rs::MapCore;
    let m = libbpf_rs::MapHandle::from_pinned_path(pins.join("bpfipt_rule_counters")).expect("counters");
    m.lookup_percpu(&id.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
        .expect("lookup")
        .map(|v| v.iter().map(|c| u64::from_ne_bytes(c[0..8].try_into().expect("8"))).sum())
        .unwrap_or(0)
}

fn xdp_fd(pins: &Path) -> i32 {
    let dir = fs::read_dir(pins).expect("pins").flatten().find(|e| e.file_name().to_string_lossy().starts_with("progs-")).expect("programs loaded");
    let p = CString::new(dir.path().join("xdp").as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: NUL-terminated path.
    let fd = unsafe { libbpf_sys::bpf_obj_get(p.as_ptr()) };
    assert!(fd >= 0, "opening the pinned XDP program");
    fd
}

struct Pins(PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn median(mut v: Vec<u32>) -> u32 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("prog_test_run: needs root (skipped)");
        return;
    }
    // SAFETY: moves this (single-threaded) process into a new network namespace.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "link", "add", "d0", "type", "veth", "peer", "name", "p0"]);
    sh(&["ip", "addr", "add", "198.18.1.1/24", "dev", "d0"]);
    sh(&["ip", "link", "set", "d0", "up"]);
    sh(&["ip", "link", "set", "p0", "up"]);
    let d0 = {
        let c = CString::new("d0").expect("name");
        // SAFETY: NUL-terminated name.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    };
    let pins = Pins(bpf_iptables::store::pin_root().expect("bpffs").join(format!("bpfipt-bench-{}", std::process::id())));
    fs::create_dir_all(&pins.0).expect("pin dir");
    let sizes: Vec<u32> = std::env::var("BPFIPT_BENCH_N")
        .unwrap_or_else(|_| "0 100 1000 10000 100000".into())
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let variants: Vec<String> = std::env::var("BPFIPT_BENCH_VARIANTS")
        .unwrap_or_else(|_| "input deep established".into())
        .split_whitespace()
        .map(String::from)
        .collect();
    let reps = 5;
    // runs per repetition (more to profile the programs rather than their verification)
    let repeat: u32 = std::env::var("BPFIPT_BENCH_REPEAT").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let bare = bare_drop();
    let data = frame([198, 18, 1, 2], [198, 18, 1, 1], 40000, 22, 0x10, 101, 5001);
    let base = median((0..reps).map(|_| test_run(bare, &data, d0, repeat).1).collect());
    // In this mode a program run does no packet I/O, so the bare program's cost is only the
    // test-run loop's: what the table shows is what our program adds to a packet's path.
    println!("BPF_PROG_TEST_RUN, {repeat} runs x {reps} repetitions, median ns/packet (bare XDP_DROP: {base} ns)\n");
    println!("| variant | N | ns/packet | self-check |\n|---|---:|---:|---|");
    for &n in &sizes {
        for variant in variants.iter().map(String::as_str) {
            let mut rules = Vec::new();
            let last;
            if variant == "established" {
                rules.push(rule(IpHeader::default(), vec![ctstate(ct_state::ESTABLISHED | ct_state::RELATED)], Target::Accept));
                rules.extend((0..n).map(|i| filler(i, false)));
                rules.push(rule(tcp(), vec![tcp_dport(22), ctstate(ct_state::NEW)], Target::Accept));
                last = 0;
            } else {
                if variant == "uncached" {
                    let other = IpHeader { src: host(ip([192, 0, 2, 1])), ..Default::default() };
                    rules.push(rule(other, vec![], Target::Log(LogTarget::default())));
                }
                rules.extend((0..n).map(|i| filler(i, variant == "deep")));
                if variant == "appended" {
                    let room = datapath::image::tail_room(n as usize) as u32;
                    if room == 0 {
                        continue;
                    }
                    rules.extend((n..n + room - 1).map(|i| filler(i, false)));
                }
                rules.push(rule(IpHeader { src: host(ip([198, 18, 1, 2])), ..tcp() }, vec![tcp_dport(22)], Target::Accept));
                last = rules.len() as u32 - 1;
            }
            let rs = ruleset(rules);
            if variant == "appended" {
                // The first N rules installed, the others appended one `-A` at a time.
                let mut first = rs.clone();
                first.table_mut(TableKind::Filter).chain_mut("INPUT").expect("INPUT").rules.truncate(n as usize);
                datapath::apply(&pins.0, &compile(&first).expect("compiles"), false).expect("apply");
                let table = rs.table(TableKind::Filter).expect("filter");
                for r in &table.chain("INPUT").expect("INPUT").rules[n as usize..] {
                    let tail = |base| compile_tail(table, Hook::Input, std::slice::from_ref(r), true, base);
                    assert!(datapath::append_rules(&pins.0, Hook::Input, tail).expect("append"), "appended in place");
                }
            } else {
                datapath::apply(&pins.0, &compile(&rs).expect("compiles"), false).expect("apply");
            }
            let fd = xdp_fd(&pins.0);
            if variant == "established" {
                // The connection: the SYN in, then the SYN-ACK (run through the same XDP
                // program: to a non-local address it is judged in FORWARD, policy ACCEPT, and
                // the tracker keys both directions alike), then the ACK: ESTABLISHED.
                let syn = frame([198, 18, 1, 2], [198, 18, 1, 1], 40000, 22, 0x02, 100, 0);
                let synack = frame([198, 18, 1, 1], [198, 18, 1, 2], 22, 40000, 0x12, 5000, 101);
                for f in [&syn, &synack, &data] {
                    assert_eq!(test_run(fd, f, d0, 1).0, XDP_PASS);
                }
            }
            let before = counter(&pins.0, last);
            let ns = median((0..reps).map(|_| test_run(fd, &data, d0, repeat)).map(|(rv, ns)| {
                assert_eq!(rv, XDP_PASS, "{variant} N={n}: verdict");
                ns
            }).collect());
            let counted = counter(&pins.0, last) - before;
            let check = if counted == (repeat as u64) * reps as u64 { "ok".to_string() } else { format!("FAIL: rule counted {counted}") };
            println!("| {variant} | {n} | {ns} | {check} |");
            // SAFETY: closing our fd.
            unsafe { libc::close(fd) };
        }
    }
}

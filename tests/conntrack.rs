//! BPF_PROG_TEST_RUN tests of the connection tracker (`bpf/conntrack.h`) through its harness
//! `bpf/ct_test.bpf.c`: crafted packets go through lookup (+ update unless the "filter" drops
//! them) and the test checks the state netfilter would give each packet, the result fields
//! `-m conntrack` uses, and the table as `conntrack -L` lists it. Needs root; each test loads
//! its own copy of the harness, so tables are private and empty at start.

mod common;

use std::mem::MaybeUninit;
use std::net::Ipv4Addr;

use bpf_iptables::conntrack::{monotonic_ns, read_table, Conn};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, ProgramInput};

mod skel {
    #![allow(clippy::all, dead_code, non_camel_case_types, non_upper_case_globals, unused)]
    include!(concat!(env!("OUT_DIR"), "/ct_test.skel.rs"));
}
use skel::types::{bpfipt_ct_entry, bpfipt_ct_result};
use skel::{CtTestSkel, CtTestSkelBuilder};

const INVALID: u8 = 0;
const ESTABLISHED: u8 = 1;
const RELATED: u8 = 2;
const NEW: u8 = 3;

const ORIGINAL: u8 = 0;
const REPLY: u8 = 1;

const SEEN_REPLY: u32 = 1 << 1;
const ASSURED: u32 = 1 << 2;
const CONFIRMED: u32 = 1 << 3;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

const TCP_SYN_SENT: u8 = 1;
const TCP_SYN_RECV: u8 = 2;
const TCP_ESTABLISHED: u8 = 3;
const TCP_FIN_WAIT: u8 = 4;
const TCP_CLOSE_WAIT: u8 = 5;
const TCP_LAST_ACK: u8 = 6;
const TCP_TIME_WAIT: u8 = 7;
const TCP_CLOSE: u8 = 8;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

// ---- packets -------------------------------------------------------------------------------

/// Ethernet + IPv4 header around `l4` (checksums are not looked at).
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 14];
    p[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    p[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    p.extend_from_slice(&ip_header(src, dst, proto, 20 + l4.len()));
    p.extend_from_slice(l4);
    p
}

fn ip_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, total: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h
}

fn tcp_header(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, payload: usize) -> Vec<u8> {
    let mut t = vec![0u8; 20 + payload];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t
}

#[allow(clippy::too_many_arguments)]
fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8, seq: u32, ack: u32, payload: usize) -> Vec<u8> {
    ipv4(src, dst, 6, &tcp_header(sport, dport, flags, seq, ack, payload))
}

fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: usize) -> Vec<u8> {
    let mut u = vec![0u8; 8 + payload];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    ipv4(src, dst, 17, &u)
}

fn icmp_query(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut i = vec![0u8; 8 + 56];
    i[0] = icmp_type;
    i[4..6].copy_from_slice(&id.to_be_bytes());
    i[6..8].copy_from_slice(&seq.to_be_bytes());
    ipv4(src, dst, 1, &i)
}

/// An ICMP error from `src` to `dst` quoting the IP header and first 8 transport bytes of
/// `quoted` (a frame built by the functions above).
fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut i = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    i.extend_from_slice(&quoted[14..14 + 28]);
    ipv4(src, dst, 1, &i)
}

// ---- harness -------------------------------------------------------------------------------

struct Harness {
    skel: CtTestSkel<'static>,
}

impl Harness {
    /// Loads a fresh harness; `max_entries` shrinks the connection table (table bound test).
    fn new(max_entries: Option<u32>) -> Harness {
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = CtTestSkelBuilder::default().open(storage).expect("opening the ct_test object");
        if let Some(n) = max_entries {
            open.maps.bpfipt_ct.set_max_entries(n).expect("set_max_entries");
        }
        Harness { skel: open.load().expect("loading the ct_test object (verifier)") }
    }

    /// Runs one packet: lookup, then the update of a packet the filter accepted or (`drop`)
    /// dropped. Returns the lookup result.
    fn send_as(&mut self, pkt: &[u8], drop: bool) -> bpfipt_ct_result {
        self.run_mode(pkt, drop as u32)
    }

    /// Looks `pkt` up without updating anything.
    fn probe(&mut self, pkt: &[u8]) -> bpfipt_ct_result {
        self.run_mode(pkt, 2)
    }

    /// An accepted packet, the entry updated by "another CPU" between its lookup and its
    /// update (its deadline set 1 s away, its lock's seq moved on).
    fn send_racing(&mut self, pkt: &[u8]) -> bpfipt_ct_result {
        self.run_mode(pkt, 3)
    }

    fn run_mode(&mut self, pkt: &[u8], mode: u32) -> bpfipt_ct_result {
        let drop = mode == 1 || mode == 2;
        let bss = self.skel.maps.bss_data.as_deref_mut().expect("ct_test has a .bss");
        bss.ct_test_drop = mode;
        let out = self
            .skel
            .progs
            .bpfipt_ct_test
            .test_run(ProgramInput { data_in: Some(pkt), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(out.return_value, if drop { XDP_DROP } else { XDP_PASS }, "harness verdict");
        let bss = self.skel.maps.bss_data.as_deref().expect("ct_test has a .bss");
        // SAFETY: plain data in the mmapped .bss, written by the program run that just ended.
        unsafe { std::ptr::read_volatile(&bss.ct_test_result) }
    }

    /// An accepted packet.
    fn send(&mut self, pkt: &[u8]) -> bpfipt_ct_result {
        self.send_as(pkt, false)
    }

    fn table(&self) -> MapHandle {
        MapHandle::try_from(&self.skel.maps.bpfipt_ct).expect("table handle")
    }

    fn conns(&self) -> Vec<Conn> {
        read_table(&self.table()).expect("reading the table")
    }

    fn only_conn(&self) -> Conn {
        let conns = self.conns();
        assert_eq!(conns.len(), 1, "expected one connection: {conns:#?}");
        conns.into_iter().next().unwrap_or_else(|| unreachable!())
    }

    /// Rewrites every entry with `f` (to age it without waiting).
    fn edit_entries(&self, f: impl Fn(&mut bpfipt_ct_entry)) {
        let map = self.table();
        let keys: Vec<Vec<u8>> = map.keys().collect();
        for key in keys {
            let bytes = map.lookup(&key, MapFlags::ANY).expect("lookup").expect("entry present");
            let mut e = bpfipt_ct_entry::default();
            assert_eq!(bytes.len(), std::mem::size_of::<bpfipt_ct_entry>());
            // SAFETY: sizes checked; the entry is plain integers.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut e as *mut bpfipt_ct_entry).cast::<u8>(), bytes.len()) };
            f(&mut e);
            // SAFETY: reading the bytes of a plain repr(C) struct.
            let out = unsafe {
                std::slice::from_raw_parts((&e as *const bpfipt_ct_entry).cast::<u8>(), std::mem::size_of::<bpfipt_ct_entry>())
            };
            map.update(&key, out, MapFlags::EXIST).expect("update");
        }
    }
}

fn setup(test: &str) -> Option<Harness> {
    common::root_or_skip(test).then(|| Harness::new(None))
}

fn ip(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

/// A TCP connection CLIENT:40000 -> SERVER:22 through the three-way handshake.
/// Client ISN 1000, server ISN 5000.
fn handshake(h: &mut Harness) {
    assert_eq!(h.send(&tcp(CLIENT, 40000, SERVER, 22, SYN, 1000, 0, 0)).state, NEW);
    assert_eq!(h.send(&tcp(SERVER, 22, CLIENT, 40000, SYN | ACK, 5000, 1001, 0)).state, ESTABLISHED);
    assert_eq!(h.send(&tcp(CLIENT, 40000, SERVER, 22, ACK, 1001, 5001, 0)).state, ESTABLISHED);
}

// ---- TCP -----------------------------------------------------------------------------------

#[test]
fn tcp_handshake_data_and_close() {
    let Some(mut h) = setup("tcp_handshake_data_and_close") else { return };

    let r = h.send(&tcp(CLIENT, 40000, SERVER, 22, SYN, 1000, 0, 0));
    assert_eq!((r.state, r.dir, r.tcp_state), (NEW, ORIGINAL, TCP_SYN_SENT));
    assert_eq!(r.status & CONFIRMED, 0, "a new connection is not confirmed while the filter runs");
    assert_eq!(r.expire, 0);
    assert_eq!((ip(r.orig.src), ip(r.orig.dst), r.orig.sport, r.orig.dport), (CLIENT, SERVER, 40000, 22));
    assert_eq!((ip(r.reply.src), ip(r.reply.dst), r.reply.sport, r.reply.dport), (SERVER, CLIENT, 22, 40000));
    let c = h.only_conn();
    assert_eq!(c.tcp_state, TCP_SYN_SENT);
    assert!((119..=120).contains(&c.expire), "SYN_SENT timeout: {}", c.expire);
    assert!(c.to_string().contains("[UNREPLIED]"), "{c}");

    // A retransmitted SYN is still NEW (no reply yet).
    assert_eq!(h.send(&tcp(CLIENT, 40000, SERVER, 22, SYN, 1000, 0, 0)).state, NEW);

    let r = h.send(&tcp(SERVER, 22, CLIENT, 40000, SYN | ACK, 5000, 1001, 0));
    assert_eq!((r.state, r.dir, r.tcp_state), (ESTABLISHED, REPLY, TCP_SYN_RECV));
    assert_eq!(r.status & (SEEN_REPLY | CONFIRMED), SEEN_REPLY | CONFIRMED);
    assert!((59..=60).contains(&r.expire), "SYN_RECV timeout: {}", r.expire);

    let r = h.send(&tcp(CLIENT, 40000, SERVER, 22, ACK, 1001, 5001, 0));
    assert_eq!((r.state, r.dir, r.tcp_state), (ESTABLISHED, ORIGINAL, TCP_ESTABLISHED));
    assert_ne!(r.status & ASSURED, 0, "ASSURED after the handshake");
    assert!(r.expire > 431_000, "ESTABLISHED timeout: {}", r.expire);

    // Data: unacknowledged data shortens the timeout to 300 s until it is acked.
    let r = h.send(&tcp(CLIENT, 40000, SERVER, 22, PSH | ACK, 1001, 5001, 100));
    assert_eq!((r.state, r.tcp_state), (ESTABLISHED, TCP_ESTABLISHED));
    assert!(r.expire <= 300, "unacked data timeout: {}", r.expire);
    let r = h.send(&tcp(SERVER, 22, CLIENT, 40000, ACK, 5001, 1101, 0));
    assert!(r.expire > 431_000, "acked: {}", r.expire);

    let c = h.only_conn();
    assert_eq!(c.counters.map(|c| c.packets), [3, 2], "packets per direction (SYN retransmit not counted)");
    assert_eq!(c.counters[0].bytes, 40 + 40 + 140);
    let line = c.to_string();
    assert!(line.starts_with("tcp      6 "), "{line}");
    assert!(
        line.contains(
            "ESTABLISHED src=198.18.0.1 dst=198.18.0.2 sport=40000 dport=22 packets=3 bytes=220 \
             src=198.18.0.2 dst=198.18.0.1 sport=22 dport=40000 packets=2 bytes=80 [ASSURED] mark=0 use=1"
        ),
        "{line}"
    );

    // Close: client FIN, server ACK, server FIN, client ACK.
    let r = h.send(&tcp(CLIENT, 40000, SERVER, 22, FIN | ACK, 1101, 5001, 0));
    assert_eq!((r.state, r.tcp_state), (ESTABLISHED, TCP_FIN_WAIT));
    let r = h.send(&tcp(SERVER, 22, CLIENT, 40000, ACK, 5001, 1102, 0));
    assert_eq!((r.state, r.tcp_state), (ESTABLISHED, TCP_CLOSE_WAIT));
    let r = h.send(&tcp(SERVER, 22, CLIENT, 40000, FIN | ACK, 5001, 1102, 0));
    assert_eq!((r.state, r.tcp_state), (ESTABLISHED, TCP_LAST_ACK));
    let r = h.send(&tcp(CLIENT, 40000, SERVER, 22, ACK, 1102, 5002, 0));
    assert_eq!((r.state, r.tcp_state), (ESTABLISHED, TCP_TIME_WAIT));
    assert!((119..=120).contains(&r.expire), "TIME_WAIT timeout: {}", r.expire);

    // A new SYN on the same ports reopens: a new connection.
    let r = h.send(&tcp(CLIENT, 40000, SERVER, 22, SYN, 9000, 0, 0));
    assert_eq!((r.state, r.tcp_state), (NEW, TCP_SYN_SENT));
    let c = h.only_conn();
    assert_eq!((c.tcp_state, c.counters[0].packets, c.counters[1].packets), (TCP_SYN_SENT, 1, 0));
}

#[test]
fn tcp_rst_closes_and_bad_rst_is_invalid() {
    let Some(mut h) = setup("tcp_rst_closes_and_bad_rst_is_invalid") else { return };
    handshake(&mut h);
    h.send(&tcp(SERVER, 22, CLIENT, 40000, PSH | ACK, 5001, 1001, 50));
    h.send(&tcp(CLIENT, 40000, SERVER, 22, ACK, 1001, 5051, 0));

    // An RST below what the client has acknowledged of the server is not from the server.
    let r = h.send(&tcp(SERVER, 22, CLIENT, 40000, RST, 4000, 0, 0));
    assert_eq!(r.state, INVALID);
    assert_eq!(h.only_conn().tcp_state, TCP_ESTABLISHED);

    let r = h.send(&tcp(SERVER, 22, CLIENT, 40000, RST, 5051, 0, 0));
    assert_eq!((r.state, r.tcp_state), (ESTABLISHED, TCP_CLOSE));
    let c = h.only_conn();
    assert_eq!(c.tcp_state, TCP_CLOSE);
    assert!((9..=10).contains(&c.expire), "CLOSE timeout: {}", c.expire);
}

#[test]
fn tcp_rst_answering_syn_deletes_the_entry() {
    let Some(mut h) = setup("tcp_rst_answering_syn_deletes_the_entry") else { return };
    h.send(&tcp(CLIENT, 40000, SERVER, 23, SYN, 1000, 0, 0));
    let r = h.send(&tcp(SERVER, 23, CLIENT, 40000, RST | ACK, 0, 1001, 0));
    assert_eq!((r.state, r.dir), (ESTABLISHED, REPLY));
    assert!(h.conns().is_empty(), "refused connection must be gone");
}

/// Regression (found by tests/differential.rs against netfilter): netfilter tracks before
/// the filter, so a dropped packet of an existing connection still advances it; a SYN-ACK the
/// filter drops makes the client's next ACK ESTABLISHED.
#[test]
fn dropped_packet_of_a_connection_still_advances_it() {
    let Some(mut h) = setup("dropped_packet_of_a_connection_still_advances_it") else { return };
    h.send(&tcp(CLIENT, 40000, SERVER, 22, SYN, 1000, 0, 0));
    let r = h.send_as(&tcp(SERVER, 22, CLIENT, 40000, SYN | ACK, 5000, 1001, 0), true);
    assert_eq!(r.state, ESTABLISHED);
    let c = h.only_conn();
    assert_eq!(c.tcp_state, TCP_SYN_RECV);
    assert_ne!(u32::from(c.status) & SEEN_REPLY, 0);
    assert_eq!(h.probe(&tcp(CLIENT, 40000, SERVER, 22, ACK, 1001, 5001, 0)).state, ESTABLISHED);
}

#[test]
fn dropped_syn_leaves_no_entry() {
    let Some(mut h) = setup("dropped_syn_leaves_no_entry") else { return };
    assert_eq!(h.send_as(&tcp(CLIENT, 40000, SERVER, 80, SYN, 1000, 0, 0), true).state, NEW);
    assert!(h.conns().is_empty());
    // The server's answer to a SYN we never confirmed fits nothing.
    assert_eq!(h.send(&tcp(SERVER, 80, CLIENT, 40000, SYN | ACK, 5000, 1001, 0)).state, INVALID);
    assert!(h.conns().is_empty());
}

#[test]
fn tcp_invalid_flag_combinations() {
    let Some(mut h) = setup("tcp_invalid_flag_combinations") else { return };
    for flags in [0, SYN | FIN, SYN | RST, FIN, FIN | PSH | 0x20, SYN | FIN | RST | PSH | ACK | 0x20] {
        let r = h.send(&tcp(CLIENT, 40000, SERVER, 22, flags, 1000, 0, 0));
        assert_eq!(r.state, INVALID, "flags {flags:#04x}");
    }
    // Without an entry, only SYN (new) and ACK (picked up) start a connection.
    for flags in [SYN | ACK, FIN | ACK, RST, RST | ACK] {
        let r = h.send(&tcp(CLIENT, 40000, SERVER, 22, flags, 1000, 1, 0));
        assert_eq!(r.state, INVALID, "flags {flags:#04x} without a connection");
    }
    assert!(h.conns().is_empty());
}

#[test]
fn tcp_out_of_state_packets_are_invalid() {
    let Some(mut h) = setup("tcp_out_of_state_packets_are_invalid") else { return };
    h.send(&tcp(CLIENT, 40000, SERVER, 22, SYN, 1000, 0, 0));
    // The client cannot ACK before the SYN/ACK, nor send FIN.
    assert_eq!(h.send(&tcp(CLIENT, 40000, SERVER, 22, ACK, 1001, 5001, 0)).state, INVALID);
    assert_eq!(h.send(&tcp(CLIENT, 40000, SERVER, 22, FIN | ACK, 1001, 5001, 0)).state, INVALID);
    // A SYN/ACK that does not acknowledge the SYN.
    assert_eq!(h.send(&tcp(SERVER, 22, CLIENT, 40000, SYN | ACK, 5000, 7777, 0)).state, INVALID);
    assert_eq!(h.only_conn().tcp_state, TCP_SYN_SENT);
    // The right one.
    assert_eq!(h.send(&tcp(SERVER, 22, CLIENT, 40000, SYN | ACK, 5000, 1001, 0)).state, ESTABLISHED);
    // A SYN/ACK from the client once established is invalid.
    h.send(&tcp(CLIENT, 40000, SERVER, 22, ACK, 1001, 5001, 0));
    assert_eq!(h.send(&tcp(CLIENT, 40000, SERVER, 22, SYN | ACK, 1000, 5001, 0)).state, INVALID);
}

#[test]
fn tcp_mid_stream_pickup() {
    let Some(mut h) = setup("tcp_mid_stream_pickup") else { return };
    // nf_conntrack_tcp_loose=1: an ACK of an unknown connection starts tracking, as NEW.
    let r = h.send(&tcp(CLIENT, 40000, SERVER, 22, ACK, 123456, 654321, 10));
    assert_eq!((r.state, r.tcp_state), (NEW, TCP_ESTABLISHED));
    let c = h.only_conn();
    assert!(c.expire <= 300, "picked up without reply: at most 300 s, got {}", c.expire);
    let r = h.send(&tcp(SERVER, 22, CLIENT, 40000, ACK, 654321, 123466, 0));
    assert_eq!((r.state, r.dir), (ESTABLISHED, REPLY));
    let r = h.send(&tcp(CLIENT, 40000, SERVER, 22, ACK, 123466, 654321, 0));
    assert_eq!(r.state, ESTABLISHED);
    assert_ne!(r.status & ASSURED, 0);
}

// ---- UDP, ICMP, others ---------------------------------------------------------------------

/// A packet that changes nothing in its entry but the counters (the deadline moves once per
/// clock tick) is applied by its lookup, without the entry's lock: it takes effect then, so
/// an update by another CPU between its lookup and its update stands (the deadline it set is
/// kept) and the packet counts once; a lookup that no update follows (a probe) counts nothing.
#[test]
fn packets_that_only_count_are_applied_by_their_lookup() {
    let Some(mut h) = setup("packets_that_only_count_are_applied_by_their_lookup") else { return };
    h.send(&udp(CLIENT, 5353, SERVER, 53, 30));
    h.send(&udp(SERVER, 53, CLIENT, 5353, 30));
    let done = (0..50).filter(|_| h.send(&udp(CLIENT, 5353, SERVER, 53, 30)).done != 0).count();
    // 50 runs in a row mostly fall within one tick (a tick is 1 to 10 ms)
    assert!(done >= 10, "only {done} of 50 packets applied by their lookup");
    let c = h.only_conn();
    assert_eq!((c.counters[0].packets, c.counters[0].bytes, c.counters[1].packets), (51, 51 * 58, 1), "every packet counted once");
    assert!((29..=30).contains(&c.expire), "UDP timeout: {}", c.expire);
    assert_eq!(h.probe(&udp(CLIENT, 5353, SERVER, 53, 30)).state, ESTABLISHED);
    assert_eq!(h.only_conn().counters[0].packets, 51, "a probe counts nothing");

    // A packet applied by its lookup (within one tick: retried until so), the entry then
    // updated by "another CPU" (deadline 1 s away).
    let mut sent = 0;
    let r = loop {
        let r = h.send_racing(&udp(CLIENT, 5353, SERVER, 53, 30));
        sent += 1;
        if r.done != 0 || sent == 50 {
            break r;
        }
    };
    assert_eq!((r.state, r.done), (ESTABLISHED, 1));
    let c = h.only_conn();
    assert!(c.expire <= 1, "the other CPU's update stands: {}", c.expire);
    assert_eq!(c.counters[0].packets, 51 + sent, "counted once");
}

#[test]
fn udp_flow_and_assured_stream() {
    let Some(mut h) = setup("udp_flow_and_assured_stream") else { return };
    let r = h.send(&udp(CLIENT, 5353, SERVER, 53, 30));
    assert_eq!((r.state, r.dir), (NEW, ORIGINAL));
    assert_eq!(h.send(&udp(CLIENT, 5353, SERVER, 53, 30)).state, NEW, "no reply yet");
    let c = h.only_conn();
    assert!((29..=30).contains(&c.expire), "UDP timeout: {}", c.expire);
    assert_eq!(
        c.to_string(),
        format!(
            "udp      17 {} src=198.18.0.1 dst=198.18.0.2 sport=5353 dport=53 packets=2 bytes=116 [UNREPLIED] \
             src=198.18.0.2 dst=198.18.0.1 sport=53 dport=5353 packets=0 bytes=0 mark=0 use=1",
            c.expire
        )
    );

    let r = h.send(&udp(SERVER, 53, CLIENT, 5353, 100));
    assert_eq!((r.state, r.dir), (ESTABLISHED, REPLY));
    assert_eq!(r.status & ASSURED, 0);
    assert_eq!(h.send(&udp(CLIENT, 5353, SERVER, 53, 30)).state, ESTABLISHED);

    // Both directions seen and older than 2 s: a stream (120 s, ASSURED).
    h.edit_entries(|e| e.created = e.created.wrapping_sub(3_000_000_000));
    let r = h.send(&udp(CLIENT, 5353, SERVER, 53, 30));
    assert_ne!(r.status & ASSURED, 0);
    assert!((119..=120).contains(&r.expire), "UDP stream timeout: {}", r.expire);
    assert!(h.only_conn().to_string().contains("[ASSURED]"));
}

#[test]
fn icmp_echo() {
    let Some(mut h) = setup("icmp_echo") else { return };
    // A reply without request is INVALID, and creates nothing.
    assert_eq!(h.send(&icmp_query(SERVER, CLIENT, 0, 77, 1)).state, INVALID);
    assert!(h.conns().is_empty());

    let r = h.send(&icmp_query(CLIENT, SERVER, 8, 77, 1));
    assert_eq!((r.state, r.dir, r.orig.sport, r.orig.dport, r.reply.dport), (NEW, ORIGINAL, 77, 8 << 8, 0));
    let r = h.send(&icmp_query(SERVER, CLIENT, 0, 77, 1));
    assert_eq!((r.state, r.dir), (ESTABLISHED, REPLY));
    // Later requests of the same ping are ESTABLISHED.
    assert_eq!(h.send(&icmp_query(CLIENT, SERVER, 8, 77, 2)).state, ESTABLISHED);
    // Another identifier is another connection; the server pinging with the same id too.
    assert_eq!(h.send(&icmp_query(CLIENT, SERVER, 8, 78, 1)).state, NEW);
    assert_eq!(h.send(&icmp_query(SERVER, CLIENT, 8, 77, 1)).state, NEW);
    let conns = h.conns();
    assert_eq!(conns.len(), 3);
    let c = conns.iter().find(|c| c.orig.src == CLIENT && c.orig.sport == 77).expect("the first ping");
    assert_eq!(
        c.to_string(),
        format!(
            "icmp     1 {} src=198.18.0.1 dst=198.18.0.2 type=8 code=0 id=77 packets=2 bytes=168 \
             src=198.18.0.2 dst=198.18.0.1 type=0 code=0 id=77 packets=1 bytes=84 mark=0 use=1",
            c.expire
        )
    );
    // Other non-error types track nothing.
    assert_eq!(h.send(&icmp_query(ROUTER, CLIENT, 9, 0, 0)).state, INVALID);
    assert_eq!(h.send(&icmp_query(ROUTER, CLIENT, 42, 0, 0)).state, INVALID);
}

#[test]
fn icmp_errors_are_related() {
    let Some(mut h) = setup("icmp_errors_are_related") else { return };
    let out = udp(CLIENT, 5000, SERVER, 9999, 10);
    h.send(&out);

    // Port unreachable from the server, quoting the client's datagram: RELATED, reply dir.
    let r = h.send(&icmp_error(SERVER, CLIENT, 3, 3, &out));
    assert_eq!((r.state, r.dir, r.proto), (RELATED, REPLY, 17));
    assert_eq!((ip(r.orig.src), r.orig.dport), (CLIENT, 9999));
    // Time exceeded from a router on the way: RELATED too.
    assert_eq!(h.send(&icmp_error(ROUTER, CLIENT, 11, 0, &out)).state, RELATED);
    // An error quoting a flow we do not track.
    let other = udp(CLIENT, 5001, SERVER, 9999, 10);
    assert_eq!(h.send(&icmp_error(SERVER, CLIENT, 3, 3, &other)).state, INVALID);
    // An error sent to someone else than the quoted packet's sender.
    assert_eq!(h.send(&icmp_error(SERVER, ROUTER, 3, 3, &out)).state, INVALID);
    // An error about the server's reply, sent back to the server: RELATED, original dir.
    let back = udp(SERVER, 9999, CLIENT, 5000, 10);
    let r = h.send(&icmp_error(CLIENT, SERVER, 3, 3, &back));
    assert_eq!((r.state, r.dir), (RELATED, ORIGINAL));
    // RELATED packets do not touch the entry.
    let c = h.only_conn();
    assert_eq!((c.counters[0].packets, c.counters[1].packets, u32::from(c.status) & SEEN_REPLY), (1, 0, 0));

    // About a TCP connection and an echo request.
    handshake(&mut h);
    let syn = tcp(CLIENT, 40000, SERVER, 22, ACK, 1001, 5001, 0);
    assert_eq!(h.send(&icmp_error(ROUTER, CLIENT, 3, 4, &syn)).state, RELATED);
    let ping = icmp_query(CLIENT, SERVER, 8, 9, 1);
    h.send(&ping);
    assert_eq!(h.send(&icmp_error(ROUTER, CLIENT, 11, 0, &ping)).state, RELATED);
}

#[test]
fn other_protocols_by_address_pair() {
    let Some(mut h) = setup("other_protocols_by_address_pair") else { return };
    let esp = ipv4(CLIENT, SERVER, 50, &[0u8; 16]);
    assert_eq!(h.send(&esp).state, NEW);
    let r = h.send(&ipv4(SERVER, CLIENT, 50, &[0u8; 16]));
    assert_eq!((r.state, r.dir), (ESTABLISHED, REPLY));
    let c = h.only_conn();
    assert!((599..=600).contains(&c.expire), "generic timeout: {}", c.expire);
    assert!(c.to_string().starts_with("unknown  50 "), "{c}");
    // GRE: 30 s until replied, then 180 s and ASSURED.
    let gre = ipv4(CLIENT, SERVER, 47, &[0u8; 8]);
    assert_eq!(h.send(&gre).state, NEW);
    h.send(&ipv4(SERVER, CLIENT, 47, &[0u8; 8]));
    let r = h.send(&gre);
    assert_ne!(r.status & ASSURED, 0);
    assert!((179..=180).contains(&r.expire), "GRE stream timeout: {}", r.expire);
}

#[test]
fn non_first_fragments_and_truncated_headers_are_invalid() {
    let Some(mut h) = setup("non_first_fragments_and_truncated_headers_are_invalid") else { return };
    let mut frag = udp(CLIENT, 5000, SERVER, 53, 10);
    frag[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
    assert_eq!(h.send(&frag).state, INVALID);
    let short = ipv4(CLIENT, SERVER, 6, &[0u8; 10]);
    assert_eq!(h.send(&short).state, INVALID);
    assert!(h.conns().is_empty());
}

// ---- timeouts and the table ----------------------------------------------------------------

#[test]
fn expired_entries_count_as_absent() {
    let Some(mut h) = setup("expired_entries_count_as_absent") else { return };
    h.send(&udp(CLIENT, 5353, SERVER, 53, 30));
    h.send(&udp(SERVER, 53, CLIENT, 5353, 30));
    assert_eq!(h.send(&udp(CLIENT, 5353, SERVER, 53, 30)).state, ESTABLISHED);

    let now = monotonic_ns().expect("clock");
    h.edit_entries(|e| e.expires = now - 1);
    assert!(h.conns().is_empty(), "the listing skips expired entries");
    // The reply of an expired flow is a new flow's first packet now.
    let r = h.send(&udp(SERVER, 53, CLIENT, 5353, 30));
    assert_eq!((r.state, r.dir), (NEW, ORIGINAL));
    let c = h.only_conn();
    assert_eq!((c.orig.src, c.counters[0].packets, c.counters[1].packets), (SERVER, 1, 0));

    // An expired TCP connection: a mid-stream ACK is picked up again as NEW.
    handshake(&mut h);
    let now = monotonic_ns().expect("clock");
    h.edit_entries(|e| e.expires = now - 1);
    assert_eq!(h.send(&tcp(CLIENT, 40000, SERVER, 22, ACK, 1001, 5001, 0)).state, NEW);
}

/// A dropped packet starts no connection (netfilter forgets the one it made for it): not over
/// an expired entry of its key, and not by reopening a closed one (which netfilter kills
/// before the filter runs, whatever the verdict).
#[test]
fn dropped_packets_revive_nothing() {
    let Some(mut h) = setup("dropped_packets_revive_nothing") else { return };
    h.send(&udp(CLIENT, 5353, SERVER, 53, 30));
    let now = monotonic_ns().expect("clock");
    h.edit_entries(|e| e.expires = now - 1);
    assert_eq!(h.send_as(&udp(CLIENT, 5353, SERVER, 53, 30), true).state, NEW);
    assert!(h.conns().is_empty(), "{:?}", h.conns());
    // So the other end's answer is a new connection, not a reply.
    assert_eq!(h.send(&udp(SERVER, 53, CLIENT, 5353, 30)).dir, ORIGINAL);

    handshake(&mut h);
    h.send(&tcp(CLIENT, 40000, SERVER, 22, FIN | ACK, 1001, 5001, 0));
    h.send(&tcp(SERVER, 22, CLIENT, 40000, FIN | ACK, 5001, 1002, 0));
    let r = h.send(&tcp(CLIENT, 40000, SERVER, 22, ACK, 1002, 5002, 0));
    assert_eq!(r.tcp_state, TCP_TIME_WAIT);
    assert_eq!(h.send_as(&tcp(CLIENT, 40000, SERVER, 22, SYN, 9000, 0, 0), true).state, NEW);
    assert!(h.conns().iter().all(|c| c.orig.sport != 40000), "the closed connection is gone: {:?}", h.conns());
}

#[test]
fn table_is_bounded_lru() {
    if !common::root_or_skip("table_is_bounded_lru") {
        return;
    }
    const MAX: u32 = 512;
    let mut h = Harness::new(Some(MAX));
    for port in 0..4 * MAX as u16 {
        assert_eq!(h.send(&udp(CLIENT, 10000 + port, SERVER, 53, 0)).state, NEW);
    }
    let conns = h.conns();
    assert!(conns.len() as u32 <= MAX, "{} entries in a table of {MAX}", conns.len());
    // The most recent flow survives eviction.
    let last = 10000 + 4 * MAX as u16 - 1;
    assert!(conns.iter().any(|c| c.orig.sport == last), "most recent flow evicted");
    assert_eq!(h.send(&udp(SERVER, 53, CLIENT, last, 0)).state, ESTABLISHED);
}

#[test]
fn flush_empties_a_pinned_table() {
    if !common::root_or_skip("flush_empties_a_pinned_table") {
        return;
    }
    let mut h = Harness::new(None);
    handshake(&mut h);
    h.send(&udp(CLIENT, 5353, SERVER, 53, 30));
    let pin_dir = bpf_iptables::store::pin_root().expect("bpffs").join(format!("bpfipt-ct-test-{}", std::process::id()));
    std::fs::create_dir_all(&pin_dir).expect("pin dir on bpffs");
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unpin = Unpin(pin_dir.clone());
    h.skel.maps.bpfipt_ct.pin(pin_dir.join("bpfipt_ct")).expect("pinning the table");

    let mut out = Vec::new();
    assert_eq!(bpf_iptables::conntrack::list(&pin_dir, &mut out).expect("list"), 2);
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().next().unwrap_or_default().starts_with("tcp      6 "), "{text}");
    // The sweep deletes expired entries only.
    assert_eq!(bpf_iptables::conntrack::sweep(&pin_dir).expect("sweep"), 0);
    let now = monotonic_ns().expect("clock");
    let expired = std::cell::Cell::new(0);
    h.edit_entries(|e| {
        if e.proto == 17 {
            e.expires = now - 1;
            expired.set(expired.get() + 1);
        }
    });
    assert_eq!(expired.get(), 1);
    assert_eq!(bpf_iptables::conntrack::sweep(&pin_dir).expect("sweep"), 1);
    assert_eq!(h.skel.maps.bpfipt_ct.keys().count(), 1, "the live TCP entry stays");
    assert_eq!(bpf_iptables::conntrack::flush(&pin_dir).expect("flush"), 1);
    assert!(h.conns().is_empty());
    assert_eq!(h.send(&tcp(CLIENT, 40000, SERVER, 22, ACK, 1001, 5001, 0)).state, NEW, "picked up after a flush");
}

// ---- -m conntrack --------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    /// Present with probability 1/3, inverted half the time.
    fn opt<T>(&mut self, value: impl FnOnce(&mut Rng) -> T) -> Option<bpf_iptables::model::Inv<T>> {
        if self.below(3) != 0 {
            return None;
        }
        let invert = self.below(2) == 1;
        Some(bpf_iptables::model::Inv { value: value(self), invert })
    }
}

fn random_match(rng: &mut Rng) -> bpf_iptables::model::ConntrackMatch {
    use bpf_iptables::model::{CtDir, Ipv4Mask, PortRange};
    let addr = |rng: &mut Rng| {
        let a = u32::from(rng.pick(&[CLIENT, SERVER, ROUTER, Ipv4Addr::new(10, 0, 0, 1)]));
        Ipv4Mask::new(a, rng.pick(&[u32::MAX, 0xffff_fffe, 0xffff_ff00, 0]))
    };
    let port = |rng: &mut Rng| {
        let p = rng.pick(&[0u16, 22, 53, 77, 2048, 5353, 40000]);
        let hi = p.saturating_add(rng.pick(&[0u16, 1, 1000]));
        PortRange { lo: p.saturating_sub(rng.pick(&[0u16, 1])), hi }
    };
    bpf_iptables::model::ConntrackMatch {
        state: rng.opt(|r| rng_bits(r, &[0, 1, 2, 3, 6, 8, 9])),
        proto: rng.opt(|r| r.pick(&[1u8, 6, 17, 47])),
        orig_src: rng.opt(addr),
        orig_dst: rng.opt(addr),
        repl_src: rng.opt(addr),
        repl_dst: rng.opt(addr),
        orig_src_port: rng.opt(port),
        orig_dst_port: rng.opt(port),
        repl_src_port: rng.opt(port),
        repl_dst_port: rng.opt(port),
        status: rng.opt(|r| rng_bits(r, &[0, 1, 2, 3])),
        expire: rng.opt(|r| r.pick(&[(0u32, 0u32), (0, 60), (25, 35), (100, 500_000), (431_000, 432_000)])),
        dir: (rng.below(4) == 0).then(|| if rng.below(2) == 0 { CtDir::Original } else { CtDir::Reply }),
    }
}

/// A random non-empty subset of the given bit indexes.
fn rng_bits(rng: &mut Rng, bits: &[u32]) -> u16 {
    loop {
        let m = bits.iter().filter(|_| rng.below(2) == 1).fold(0u16, |m, b| m | 1 << b);
        if m != 0 {
            return m;
        }
    }
}

/// The reference classifier's view of a lookup result.
fn reference_packet(r: &bpfipt_ct_result) -> bpf_iptables::compile::reference::Packet {
    use bpf_iptables::compile::reference::{Conn as RefConn, Packet};
    let conn = (r.state != INVALID).then_some(RefConn {
        proto: r.proto,
        orig: (r.orig.src, r.orig.dst, r.orig.sport, r.orig.dport),
        repl: (r.reply.src, r.reply.dst, r.reply.sport, r.reply.dport),
        status: r.status,
        expire: r.expire,
        reply_dir: r.dir == REPLY,
    });
    Packet {
        hook: bpf_iptables::compile::tables::Hook::Input,
        src: 0,
        dst: 0,
        proto: 0,
        sport: 0,
        dport: 0,
        in_iface: String::new(),
        out_iface: String::new(),
        tcp_flags: 0,
        tcp_options: Vec::new(),
        icmp_type: 0,
        icmp_code: 0,
        length: 0,
        ttl: 0,
        tos: 0,
        mark: 0,
        frag_off: 0,
        l4_ok: true,
        ct_state: r.state,
        conn,
        pkttype: 0,
        mac_src: None,
        src_type: 0,
        dst_type: 0,
        now: 0,
        random: 0,
    }
}

#[test]
fn conntrack_match_agrees_with_reference() {
    let Some(mut h) = setup("conntrack_match_agrees_with_reference") else { return };
    handshake(&mut h);
    let out = udp(CLIENT, 5353, SERVER, 53, 30);
    h.send(&out);
    h.send(&icmp_query(CLIENT, SERVER, 8, 77, 1));
    h.send(&icmp_query(SERVER, CLIENT, 0, 77, 1));
    // Probes are "dropped" so that they do not change the table between matches.
    let probes = [
        ("established orig", tcp(CLIENT, 40000, SERVER, 22, ACK, 1001, 5001, 0), ESTABLISHED),
        ("established reply", tcp(SERVER, 22, CLIENT, 40000, ACK, 5001, 1001, 0), ESTABLISHED),
        ("new, unreplied entry", out.clone(), NEW),
        ("new, no entry", udp(CLIENT, 6000, SERVER, 53, 0), NEW),
        ("related", icmp_error(SERVER, CLIENT, 3, 3, &out), RELATED),
        ("icmp reply", icmp_query(SERVER, CLIENT, 0, 77, 2), ESTABLISHED),
        ("invalid", tcp(CLIENT, 40000, SERVER, 22, 0, 1001, 5001, 0), INVALID),
    ];
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let (mut matched, mut total) = (0, 0);
    for (what, pkt, state) in &probes {
        for _ in 0..300 {
            let m = random_match(&mut rng);
            let enc = bpf_iptables::conntrack::encode_match(&m);
            let bss = h.skel.maps.bss_data.as_deref_mut().expect(".bss");
            assert_eq!(std::mem::size_of_val(&enc), std::mem::size_of_val(&bss.ct_test_match));
            // SAFETY: the same C struct from two skeletons of one header: identical layout.
            bss.ct_test_match = unsafe { std::mem::transmute_copy(&enc) };
            let r = h.probe(pkt);
            assert_eq!(r.state, *state, "{what}");
            let bss = h.skel.maps.bss_data.as_deref().expect(".bss");
            // SAFETY: plain data in the mmapped .bss, written by the run that just ended.
            let got = unsafe { std::ptr::read_volatile(&bss.ct_test_matched) } != 0;
            let want = bpf_iptables::compile::reference::conntrack_matches(&m, &reference_packet(&r));
            assert_eq!(got, want, "{what}: {m:?} on {r:?}");
            matched += got as u32;
            total += 1;
        }
    }
    // The generator must exercise both outcomes.
    assert!(matched > total / 20 && matched < total - total / 20, "{matched} of {total} matched");
}

// ---- concurrency ---------------------------------------------------------------------------

/// Runs the harness `repeat` times on `pkt` from the calling thread's CPU (through the raw
/// syscall wrapper: the skeleton's program handle is not shareable between threads).
fn test_run_raw(prog_fd: i32, pkt: &[u8], repeat: i32) {
    let mut opts = libbpf_rs::libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_test_run_opts>() as _,
        data_in: pkt.as_ptr().cast(),
        data_size_in: pkt.len() as u32,
        repeat,
        ..Default::default()
    };
    // SAFETY: opts points at valid input for the duration of the call.
    let rc = unsafe { libbpf_rs::libbpf_sys::bpf_prog_test_run_opts(prog_fd, &mut opts) };
    assert_eq!(rc, 0, "bpf_prog_test_run_opts: {}", std::io::Error::last_os_error());
    assert_eq!(opts.retval, XDP_PASS);
}

/// Four threads (on two CPUs) each run 20 000 packets of one UDP flow, two per direction, in
/// harness mode `mode` (see run_mode); no packet may go uncounted.
fn concurrent_packets_lose_nothing(test: &str, mode: u32) {
    use std::os::fd::{AsFd, AsRawFd};
    let Some(mut h) = setup(test) else { return };
    let orig = udp(CLIENT, 5353, SERVER, 53, 30);
    let reply = udp(SERVER, 53, CLIENT, 5353, 30);
    h.send(&orig);
    h.send(&reply);
    h.skel.maps.bss_data.as_deref_mut().expect("ct_test has a .bss").ct_test_drop = mode;
    let fd = h.skel.progs.bpfipt_ct_test.as_fd().as_raw_fd();
    const N: i32 = 20_000;
    std::thread::scope(|s| {
        for pkt in [&orig, &reply, &orig, &reply] {
            s.spawn(move || test_run_raw(fd, pkt, N));
        }
    });
    let c = h.only_conn();
    assert_eq!(c.counters.map(|c| c.packets), [1 + 2 * N as u64; 2], "updates lost between CPUs");
    assert_eq!(c.counters.map(|c| c.bytes), [(1 + 2 * N as u64) * 58; 2]);
}

#[test]
fn concurrent_updates_of_one_entry_lose_nothing() {
    concurrent_packets_lose_nothing("concurrent_updates_of_one_entry_lose_nothing", 0);
}

#[test]
fn concurrent_updates_through_the_lock_lose_nothing() {
    // Every packet is overtaken once between its lookup and its update (mode 3: an update
    // under the lock moved its seq on), so none is applied by its lookup: each goes through
    // the update's snapshot, state machine and locked write-back, on both CPUs at once.
    concurrent_packets_lose_nothing("concurrent_updates_through_the_lock_lose_nothing", 3);
}

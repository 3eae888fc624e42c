//! Property test: on random rulesets and random packets, the software LBVS over the compiled
//! tables and the linear reference classifier give the same verdict, the same matched-rule
//! sequence and the same final mark — packet after packet, stateful matches included (their
//! state carries over between the packets of a case, so token/counter consumption order is
//! checked too).
//!
//! Rulesets mix nested/overlapping/negated prefixes, non-contiguous masks, iprange, protocols,
//! port ranges, multiport (all directions, negated), tcp flags and options, icmp types and code
//! ranges, interfaces with wildcards (at every hook), ctstate/state/conntrack, residual
//! matches, limit/statistic (deterministic: time and the random draw are packet fields), user
//! chains with -j/-g/RETURN, policies, non-terminating targets, all in random match order.
//! Packets are biased to edges (ends of prefixes and ranges, +-1, flag combinations).
//!
//! proptest draws the seeds; a failure is minimised here (rules, then packets, removed while
//! it still fails) and printed. `BPFIPT_COMPILE_CASES` sets the number of cases (default 1500).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::reference::{self, Conn, Packet, RefState};
use super::tables::Hook;
use super::tests::{ip, packet, rule};
use super::{compile, lbvs};
use crate::model::*;

/// The generator, driven by the proptest seed.
type Gen = crate::testutil::SplitMix64;

/// Address pool: `(addr, mask)`, contiguous and not.
fn addr_pool() -> Vec<(u32, u32)> {
    let p = |a: &str, len: u32| (ip(a), u32::MAX.checked_shl(32 - len).unwrap_or(0));
    vec![
        p("0.0.0.0", 0),
        p("0.0.0.0", 1),
        p("128.0.0.0", 1),
        p("10.0.0.0", 8),
        p("10.1.0.0", 16),
        p("10.1.2.0", 24),
        p("10.1.2.0", 31),
        p("10.1.2.3", 32),
        p("10.1.2.128", 25),
        p("10.2.0.0", 15),
        p("192.168.0.0", 16),
        p("192.168.1.0", 24),
        p("172.16.0.0", 12),
        p("255.255.255.255", 32),
        (ip("10.0.1.0"), ip("255.0.255.0")),
        (ip("10.0.0.1"), 0xff00_ff01),
    ]
}

const PORTS: [u16; 12] = [0, 1, 21, 22, 23, 79, 80, 81, 1023, 1024, 65534, 65535];
const NAMES: [&str; 7] = ["eth0", "eth1", "eth10", "lo", "veth0", "wlan0", "e"];
const WILD: [&str; 6] = ["", "eth", "eth1", "veth", "e", "lo"];
const STATES: [u8; 5] = [0, 1, 2, 3, 6];

fn gen_mask(g: &mut Gen) -> Ipv4Mask {
    if g.pct(30) {
        let len = 8 + g.below(25) as u32;
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        Ipv4Mask::new(0x0a00_0000 | (g.next() as u32 & 0x0003_ffff), mask)
    } else {
        let (a, m) = g.pick(&addr_pool());
        Ipv4Mask::new(a, m)
    }
}

fn gen_addr(g: &mut Gen) -> u32 {
    let m = gen_mask(g);
    let last = m.addr | !m.mask;
    match g.below(5) {
        0 => m.addr,
        1 => last,
        2 => m.addr.wrapping_sub(1),
        3 => last.wrapping_add(1),
        _ => m.addr | (g.next() as u32 & !m.mask),
    }
}

fn gen_range(g: &mut Gen) -> PortRange {
    let (a, b) = (g.pick(&PORTS), g.pick(&PORTS));
    if g.pct(40) {
        PortRange { lo: a, hi: a }
    } else {
        PortRange { lo: a.min(b), hi: a.max(b) }
    }
}

fn gen_iface(g: &mut Gen) -> Inv<Iface> {
    let iface = if g.pct(50) {
        Iface { name: g.pick(&NAMES).into(), wildcard: false }
    } else {
        Iface { name: g.pick(&WILD).into(), wildcard: true }
    };
    Inv::new(iface, g.pct(25))
}

fn gen_port_inv(g: &mut Gen) -> Option<Inv<PortRange>> {
    g.pct(40).then(|| Inv::new(gen_range(g), g.pct(25)))
}

fn gen_matches(g: &mut Gen, proto: Option<Inv<u8>>) -> Vec<Match> {
    let mut ms = Vec::new();
    let p = proto.filter(|p| !p.invert).map(|p| p.value);
    match p {
        Some(6) if g.pct(60) => ms.push(Match::Tcp(TcpMatch {
            sport: gen_port_inv(g),
            dport: gen_port_inv(g),
            flags: g.pct(35).then(|| {
                let mask = g.pick(&[0x12u8, 0x3f, 0x02, 0xff, 0x17]);
                let comp = if g.pct(90) { g.next() as u8 & mask } else { g.next() as u8 };
                Inv::new(TcpFlags { mask, comp }, g.pct(25))
            }),
            option: g.pct(15).then(|| Inv::new(g.pick(&[2u8, 4, 8]), g.pct(30))),
        })),
        Some(17) if g.pct(60) => ms.push(Match::Udp(UdpMatch { sport: gen_port_inv(g), dport: gen_port_inv(g) })),
        Some(1) if g.pct(60) => {
            let t = g.pick(&[0u8, 3, 8, 11, 255]);
            let (a, b) = (g.pick(&[0u8, 1, 3, 4, 255]), g.pick(&[0u8, 1, 3, 4, 255]));
            ms.push(Match::Icmp(IcmpMatch { icmp_type: t, code_lo: a.min(b), code_hi: a.max(b), invert: g.pct(25) }));
        }
        _ => {}
    }
    if matches!(p, Some(6) | Some(17)) && g.pct(35) {
        let dir = g.pick(&[MultiportDir::Source, MultiportDir::Destination, MultiportDir::Either]);
        let ports = (0..1 + g.below(4)).map(|_| gen_range(g)).collect();
        ms.push(Match::Multiport(MultiportMatch { dir, ports, invert: g.pct(20) }));
    }
    let ends = |g: &mut Gen| {
        let (a, b) = (gen_addr(g), gen_addr(g));
        Inv::new((a.min(b), a.max(b)), g.pct(30))
    };
    if g.pct(10) {
        let src = g.pct(70).then(|| ends(g));
        let dst = g.pct(50).then(|| ends(g));
        ms.push(Match::Iprange(IprangeMatch { src, dst }));
    }
    let state_bits = |g: &mut Gen| {
        let mut bits = 0u16;
        for b in [ct_state::INVALID, ct_state::ESTABLISHED, ct_state::RELATED, ct_state::NEW, ct_state::UNTRACKED] {
            if g.pct(35) {
                bits |= b;
            }
        }
        bits.max(ct_state::NEW)
    };
    if g.pct(15) {
        ms.push(Match::State(StateMatch { state: state_bits(g), invert: g.pct(25) }));
    }
    if g.pct(12) {
        let mut c = ConntrackMatch::default();
        if g.pct(80) {
            let snat = if g.pct(15) { ct_state::SNAT } else { 0 };
            c.state = Some(Inv::new(state_bits(g) | snat, g.pct(25)));
        }
        if g.pct(30) {
            c.proto = Some(Inv::new(g.pick(&[6u8, 17]), g.pct(30)));
        }
        if g.pct(20) {
            c.dir = Some(g.pick(&[CtDir::Original, CtDir::Reply]));
        }
        if g.pct(15) {
            c.status = Some(Inv::new(ct_status::ASSURED, g.pct(30)));
        }
        ms.push(Match::Conntrack(c));
    }
    if g.pct(15) {
        ms.push(Match::Mark(MarkMatch { mark: g.below(3) as u32, mask: g.pick(&[0xffu32, 0x1, 0xffff_ffff]), invert: g.pct(25) }));
    }
    if g.pct(5) {
        ms.push(Match::Length(LengthMatch { lo: 40, hi: g.pick(&[40u16, 100, 1500]), invert: g.pct(30) }));
    }
    if g.pct(5) {
        ms.push(Match::Ttl(TtlMatch { op: g.pick(&[TtlOp::Eq, TtlOp::Ne, TtlOp::Lt, TtlOp::Gt]), value: g.pick(&[1u8, 64]) }));
    }
    if g.pct(4) {
        ms.push(Match::Tos(TosMatch { value: 0x10, mask: 0xff, invert: g.pct(30) }));
    }
    if g.pct(3) {
        ms.push(Match::Dscp(DscpMatch { dscp: 4, invert: g.pct(30) }));
    }
    if g.pct(4) {
        ms.push(Match::Pkttype(PkttypeMatch { pkttype: g.below(3) as u8, invert: g.pct(30) }));
    }
    if g.pct(3) {
        ms.push(Match::Mac(MacMatch { addr: [2, 0, 0, 0, 0, 1], invert: g.pct(30) }));
    }
    if g.pct(4) {
        ms.push(Match::Addrtype(AddrtypeMatch {
            src_type: g.pct(50).then(|| Inv::new(addr_type::LOCAL, g.pct(30))),
            dst_type: Some(Inv::new(addr_type::LOCAL | addr_type::BROADCAST, g.pct(30))),
            limit_iface_in: false,
            limit_iface_out: false,
        }));
    }
    if g.pct(4) {
        ms.push(Match::Comment("c".into()));
    }
    if g.pct(8) {
        ms.push(Match::Limit(LimitMatch { avg: g.pick(&[LimitMatch::SCALE, LimitMatch::SCALE / 10]), burst: 1 + g.below(3) as u32 }));
    }
    if g.pct(8) {
        let every = g.below(3) as u32;
        ms.push(Match::Statistic(StatisticMatch { mode: StatisticMode::Nth { every, packet: g.below(every as usize + 1) as u32 }, invert: g.pct(20) }));
    }
    if g.pct(4) {
        ms.push(Match::Statistic(StatisticMatch { mode: StatisticMode::Random { probability: 0x4000_0000 }, invert: g.pct(20) }));
    }
    // Random match order (the header stays first, as in iptables).
    for i in (1..ms.len()).rev() {
        ms.swap(i, g.below(i + 1));
    }
    ms
}

fn gen_rule(g: &mut Gen, callees: &[String]) -> Rule {
    let mut h = IpHeader::default();
    if g.pct(40) {
        h.src = Some(Inv::new(gen_mask(g), g.pct(30)));
    }
    if g.pct(30) {
        h.dst = Some(Inv::new(gen_mask(g), g.pct(30)));
    }
    if g.pct(20) {
        h.in_iface = Some(gen_iface(g));
    }
    if g.pct(20) {
        h.out_iface = Some(gen_iface(g));
    }
    if g.pct(60) {
        h.proto = Some(Inv::new(g.pick(&[6u8, 6, 17, 17, 1, 47]), g.pct(12)));
    }
    if g.pct(5) {
        h.fragment = Some(g.pct(50));
    }
    let matches = gen_matches(g, h.proto);
    let mut targets = vec![(12, 0), (10, 1), (5, 2), (8, 3), (12, 4), (5, 5), (6, 6)];
    if !callees.is_empty() {
        targets.extend([(14, 7), (9, 8)]);
    }
    let total: usize = targets.iter().map(|t| t.0).sum();
    let mut roll = g.below(total);
    let kind = targets.iter().find(|t| roll < t.0 || { roll -= t.0; false }).map_or(0, |t| t.1);
    let target = match kind {
        0 => Target::Accept,
        1 => Target::Drop,
        2 => Target::Reject(g.pick(&[RejectWith::TcpReset, RejectWith::IcmpPortUnreachable])),
        3 => Target::Return,
        4 => Target::None,
        5 => Target::Log(LogTarget { level: 4, prefix: format!("p{}", g.below(2)), flags: 0 }),
        6 => Target::Mark(MarkTarget { value: g.below(3) as u32, mask: g.pick(&[0xffu32, 0xffff_ffff]) }),
        7 => Target::Jump(g.pick(callees)),
        _ => Target::Goto(g.pick(callees)),
    };
    rule(h, matches, target)
}

fn gen_ruleset(g: &mut Gen) -> Ruleset {
    let mut rs = Ruleset::default();
    let n_user = g.below(5);
    let users: Vec<String> = (0..n_user).map(|i| format!("U{i}")).collect();
    let t = rs.table_mut(TableKind::Filter);
    for u in &users {
        t.add_user_chain(Chain::user(u));
    }
    let mut id = 0;
    for ci in 0..t.chains.len() {
        // Built-in chains call any user chain; U<i> calls only U<j>, j > i (no loops).
        let callees: Vec<String> = match t.chains[ci].name.strip_prefix('U') {
            Some(n) => users.iter().skip(n.parse::<usize>().unwrap_or(0) + 1).cloned().collect(),
            None => users.clone(),
        };
        let n = g.below(if t.chains[ci].is_builtin() { 9 } else { 7 });
        for _ in 0..n {
            let mut r = gen_rule(g, &callees);
            r.id = id;
            id += 1;
            t.chains[ci].rules.push(r);
        }
        if t.chains[ci].is_builtin() && g.pct(40) {
            t.chains[ci].policy = Some(Policy::Drop);
        }
    }
    rs
}

fn gen_packet(g: &mut Gen, now: &mut u64) -> Packet {
    *now += g.pick(&[0u64, 1, 50, 100, 1000]);
    let mut p = packet(g.pick(&Hook::ALL));
    p.src = gen_addr(g);
    p.dst = gen_addr(g);
    p.proto = g.pick(&[6u8, 6, 17, 17, 1, 47]);
    let port = |g: &mut Gen| {
        let b = g.pick(&PORTS);
        match g.below(3) {
            0 => b.wrapping_add(1),
            1 => b.wrapping_sub(1),
            _ => b,
        }
    };
    p.sport = port(g);
    p.dport = port(g);
    p.in_iface = g.pick(&NAMES).into();
    p.out_iface = g.pick(&NAMES).into();
    p.tcp_flags = if g.pct(50) { g.next() as u8 } else { g.pick(&[0x02u8, 0x12, 0x10, 0x11, 0x04, 0x00, 0x3f]) };
    p.tcp_options = if g.pct(50) { vec![2, 4] } else { vec![8] };
    p.icmp_type = g.pick(&[0u8, 3, 8, 11, 255, 5]);
    p.icmp_code = g.pick(&[0u8, 1, 3, 4, 255]);
    p.length = g.pick(&[39u16, 40, 41, 100, 101, 1500]);
    p.ttl = g.pick(&[0u8, 1, 2, 63, 64, 65, 255]);
    p.tos = g.pick(&[0u8, 0x10, 0x11, 0x12]);
    p.mark = g.pick(&[0u32, 1, 2, 0x100, 0xffff_ffff]);
    p.frag_off = if g.pct(10) { g.pick(&[1u16, 100]) } else { 0 };
    p.l4_ok = g.pct(95);
    p.ct_state = g.pick(&STATES);
    p.conn = matches!(p.ct_state, 1..=3).then(|| Conn {
        proto: g.pick(&[6u8, 17]),
        orig: (p.src, p.dst, p.sport, p.dport),
        repl: (p.dst, p.src, p.dport, p.sport),
        status: g.pick(&[0u32, 1 << 2, 1 << 4, 1 << 5]),
        expire: 100,
        reply_dir: g.pct(50),
    });
    p.pkttype = g.below(4) as u8;
    p.mac_src = g.pick(&[None, Some([2, 0, 0, 0, 0, 1]), Some([2, 0, 0, 0, 0, 2])]);
    p.src_type = g.pick(&[addr_type::LOCAL, addr_type::UNICAST]);
    p.dst_type = g.pick(&[addr_type::LOCAL, addr_type::UNICAST, addr_type::BROADCAST]);
    p.now = *now;
    p.random = g.pick(&[0u32, 0x3fff_ffff, 0x4000_0000, 0x7fff_ffff, 0xffff_ffff]);
    p
}

/// The first packet (index and description) on which the classifiers differ.
fn first_difference(rs: &Ruleset, packets: &[Packet]) -> Option<(usize, String)> {
    let c = match compile(rs) {
        Ok(c) => c,
        Err(e) => return Some((0, format!("compile failed: {e}"))),
    };
    let table = rs.table(TableKind::Filter)?;
    let (mut rst, mut lst) = (RefState::default(), lbvs::LbvsState::new(&c));
    for (i, p) in packets.iter().enumerate() {
        let want = match reference::classify(table, p, &mut rst) {
            Ok(o) => o,
            Err(e) => return Some((i, format!("reference failed: {e}"))),
        };
        let got = lbvs::classify(&c, p, &mut lst);
        if got != want {
            return Some((i, format!("packet {p:#?}\nreference {want:?}\nlbvs      {got:?}\ncompiled {c:#?}")));
        }
    }
    None
}

/// Removes rules, then packets, while the failure persists.
fn minimise(mut rs: Ruleset, mut packets: Vec<Packet>) -> (Ruleset, Vec<Packet>) {
    loop {
        let mut progress = false;
        for ci in 0..rs.tables[0].chains.len() {
            let mut ri = 0;
            while ri < rs.tables[0].chains[ci].rules.len() {
                let mut cand = rs.clone();
                cand.tables[0].chains[ci].rules.remove(ri);
                if first_difference(&cand, &packets).is_some() {
                    rs = cand;
                    progress = true;
                } else {
                    ri += 1;
                }
            }
        }
        if let Some((last, _)) = first_difference(&rs, &packets) {
            packets.truncate(last + 1);
        }
        let mut pi = 0;
        while packets.len() > 1 && pi < packets.len() {
            let mut cand = packets.clone();
            cand.remove(pi);
            if first_difference(&rs, &cand).is_some() {
                packets = cand;
                progress = true;
            } else {
                pi += 1;
            }
        }
        if !progress {
            return (rs, packets);
        }
    }
}

#[test]
fn lbvs_agrees_with_reference() {
    let cases = std::env::var("BPFIPT_COMPILE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, max_shrink_iters: 0, ..Config::default() });
    let result = runner.run(&any::<u64>(), |seed| {
        let mut g = crate::testutil::SplitMix64(seed);
        let rs = gen_ruleset(&mut g);
        let mut now = 0;
        let packets: Vec<Packet> = (0..48).map(|_| gen_packet(&mut g, &mut now)).collect();
        if first_difference(&rs, &packets).is_none() {
            return Ok(());
        }
        let (rs, packets) = minimise(rs, packets);
        let (_, why) = first_difference(&rs, &packets).unwrap_or((0, String::new()));
        let chains: Vec<String> = rs.tables[0]
            .chains
            .iter()
            .map(|c| format!("{} {:?}: {:#?}", c.name, c.policy, c.rules))
            .collect();
        Err(TestCaseError::fail(format!(
            "seed {seed}: minimised ruleset\n{}\n{} packets, last differs:\n{why}",
            chains.join("\n"),
            packets.len()
        )))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Rules appended to a built-in chain and patched in (`compile_tail`, after the hook's
/// compiled rules, as the datapath's image takes them) classify as a full compile of the
/// grown ruleset would: as the reference does.
#[test]
fn appended_rules_agree_with_reference() {
    let cases = std::env::var("BPFIPT_COMPILE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
    let mut seeds = crate::testutil::SplitMix64(0x7a11_5eed);
    let mut patched = 0;
    for _ in 0..cases {
        let seed = seeds.next();
        let mut g = crate::testutil::SplitMix64(seed);
        let mut rs = gen_ruleset(&mut g);
        let before = compile(&rs).expect("compiles");
        let hook = g.pick(&Hook::ALL);
        let users: Vec<String> = rs.tables[0].chains.iter().filter(|c| !c.is_builtin()).map(|c| c.name.clone()).collect();
        let added = 1 + g.below(3);
        let t = rs.table_mut(TableKind::Filter);
        let mut id = t.chains.iter().map(|c| c.rules.len() as u32).sum::<u32>();
        let chain = t.chain_mut(hook.chain_name()).expect("built-in chain");
        for _ in 0..added {
            let mut r = gen_rule(&mut g, &users);
            r.id = id;
            id += 1;
            chain.rules.push(r);
        }
        let mut c = before;
        let h = &mut c.hooks[hook as usize];
        let table = rs.table(TableKind::Filter).expect("filter");
        let rules = &table.chain(hook.chain_name()).expect("built-in chain").rules;
        let (old, new) = rules.split_at(rules.len() - added);
        let reached = !old.iter().any(Rule::ends_walk);
        let Some(tail) = super::compile_tail(table, hook, new, reached, h.actions.len() as u32).expect("compiles") else { continue };
        h.actions.extend(tail);
        patched += 1;
        let table = rs.table(TableKind::Filter).expect("filter");
        let (mut rst, mut lst) = (RefState::default(), lbvs::LbvsState::new(&c));
        let mut now = 0;
        for _ in 0..48 {
            let mut p = gen_packet(&mut g, &mut now);
            p.hook = hook;
            let want = reference::classify(table, &p, &mut rst).expect("reference");
            let got = lbvs::classify(&c, &p, &mut lst);
            assert_eq!(got, want, "seed {seed}: packet {p:#?}\nchain {:#?}\ncompiled {:#?}", table.chain(hook.chain_name()), c.hooks[hook as usize]);
        }
    }
    // Most appends are patchable (not those with LOG, limit/nth, interfaces, or through them).
    assert!(patched * 3 > cases, "only {patched} of {cases} appends were patched");
}

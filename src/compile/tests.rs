//! Unit tests of the compiler: inlining, negation, ranges, prefixes, interfaces at hooks without
//! that device, stateful-match ordering, loops and size limits. Each ruleset is also checked by
//! running packets through the reference and the software LBVS (`agree`).

use super::reference::{self, Outcome, Packet, RefState, Verdict};
use super::tables::{ActionKind, Check, Compiled, Field, FieldMap, Hook, Prefix};
use super::{compile, lbvs};
use crate::error::Error;
use crate::model::*;

pub(super) fn ip(a: &str) -> u32 {
    u32::from(a.parse::<std::net::Ipv4Addr>().expect("test address"))
}

pub(super) fn net(a: &str, len: u8) -> Ipv4Mask {
    Ipv4Mask::new(ip(a), u32::MAX.checked_shl(32 - len as u32).unwrap_or(0))
}

/// A packet with neutral defaults.
pub(super) fn packet(hook: Hook) -> Packet {
    Packet {
        hook,
        src: ip("198.18.0.1"),
        dst: ip("198.18.0.2"),
        proto: 6,
        sport: 40000,
        dport: 80,
        in_iface: "eth0".into(),
        out_iface: "eth1".into(),
        tcp_flags: tcp_flags::SYN,
        tcp_options: vec![],
        icmp_type: 0,
        icmp_code: 0,
        length: 60,
        ttl: 64,
        tos: 0,
        mark: 0,
        frag_off: 0,
        l4_ok: true,
        ct_state: 3,
        conn: None,
        pkttype: 0,
        mac_src: None,
        src_type: addr_type::UNICAST,
        dst_type: addr_type::LOCAL,
        now: 0,
        random: 0,
    }
}

/// Runs `packets` in order through both classifiers (each with its own state), asserting the
/// same outcome for each; returns the outcomes.
pub(super) fn agree(rs: &Ruleset, packets: &[Packet]) -> Vec<Outcome> {
    let c = compile(rs).expect("compiles");
    let table = rs.table(TableKind::Filter).expect("filter table");
    let (mut rst, mut lst) = (RefState::default(), lbvs::LbvsState::new(&c));
    packets
        .iter()
        .map(|p| {
            let want = reference::classify(table, p, &mut rst).expect("reference");
            let got = lbvs::classify(&c, p, &mut lst);
            assert_eq!(got, want, "packet {p:?}\ncompiled {c:#?}");
            want
        })
        .collect()
}

/// A ruleset from `(chain, policy)` and rules `(chain, rule)`; ids are assigned in order.
pub(super) fn ruleset(policies: &[(&str, Policy)], user: &[&str], rules: Vec<(&str, Rule)>) -> Ruleset {
    let mut rs = Ruleset::default();
    let t = rs.table_mut(TableKind::Filter);
    for (c, p) in policies {
        if let Some(ch) = t.chain_mut(c) {
            ch.policy = Some(*p);
        }
    }
    for u in user {
        t.add_user_chain(Chain::user(u));
    }
    for (id, (c, mut r)) in rules.into_iter().enumerate() {
        r.id = id as u32;
        t.chain_mut(c).expect("test chain exists").rules.push(r);
    }
    rs
}

pub(super) fn rule(ip: IpHeader, matches: Vec<Match>, target: Target) -> Rule {
    Rule { id: Rule::UNASSIGNED, ip, matches, target, counters: Counters::default() }
}

fn src(m: Ipv4Mask, invert: bool) -> IpHeader {
    IpHeader { src: Some(Inv::new(m, invert)), ..Default::default() }
}

fn tcp_dport(lo: u16, hi: u16, invert: bool) -> Match {
    Match::Tcp(TcpMatch { dport: Some(Inv::new(PortRange { lo, hi }, invert)), ..Default::default() })
}

fn with_src(hook: Hook, a: &str) -> Packet {
    Packet { src: ip(a), ..packet(hook) }
}

fn kinds(c: &Compiled, hook: Hook) -> Vec<(Option<u32>, ActionKind)> {
    c.hooks[hook as usize].actions.iter().map(|a| (a.rule_id, a.kind.clone())).collect()
}

#[test]
fn jump_inlines_with_conjunction_and_return() {
    let rs = ruleset(
        &[("INPUT", Policy::Drop)],
        &["X"],
        vec![
            ("INPUT", rule(src(net("10.0.0.0", 8), false), vec![], Target::Jump("X".into()))),
            ("INPUT", rule(IpHeader::default(), vec![], Target::Accept)),
            ("X", rule(src(net("10.1.0.0", 16), false), vec![], Target::Drop)),
            ("X", rule(src(net("10.2.0.0", 16), false), vec![], Target::Return)),
            ("X", rule(IpHeader::default(), vec![], Target::Reject(RejectWith::IcmpPortUnreachable))),
        ],
    );
    let c = compile(&rs).unwrap();
    assert_eq!(
        kinds(&c, Hook::Input),
        vec![
            (Some(0), ActionKind::Enter { end: 4, depth: 1 }),
            (Some(2), ActionKind::Drop),
            (Some(3), ActionKind::SkipTo { to: 4, depth: 1 }),
            (Some(4), ActionKind::Reject(RejectWith::IcmpPortUnreachable)),
            (Some(1), ActionKind::Accept),
        ]
    );
    let outs = agree(
        &rs,
        &[
            with_src(Hook::Input, "10.1.2.3"),
            with_src(Hook::Input, "10.2.0.0"),
            with_src(Hook::Input, "10.3.0.0"),
            with_src(Hook::Input, "11.0.0.0"),
        ],
    );
    let got: Vec<(Verdict, Vec<u32>)> = outs.into_iter().map(|o| (o.verdict, o.matched)).collect();
    assert_eq!(
        got,
        vec![
            (Verdict::Drop, vec![0, 2]),
            (Verdict::Accept, vec![0, 3, 1]),
            (Verdict::Reject(RejectWith::IcmpPortUnreachable), vec![0, 4]),
            (Verdict::Accept, vec![1]),
        ]
    );
    // Conjunction: the inner /16 rules sit under the /8, and only there.
    let t = &c.hooks[Hook::Input as usize];
    let FieldMap::Prefixes(entries) = &t.fields.iter().find(|f| f.field == Field::Src).unwrap().map else { panic!() };
    let keys: Vec<Prefix> = entries.iter().map(|e| e.0).collect();
    assert!(keys.contains(&Prefix { addr: ip("10.0.0.0"), len: 8 }) && keys.contains(&Prefix { addr: 0, len: 0 }));
}

#[test]
fn goto_returns_to_the_callers_caller() {
    let rs = ruleset(
        &[],
        &["X", "Y"],
        vec![
            ("INPUT", rule(IpHeader::default(), vec![], Target::Jump("Y".into()))),
            ("INPUT", rule(IpHeader::default(), vec![], Target::Drop)),
            ("Y", rule(src(net("10.0.0.0", 8), false), vec![], Target::Goto("X".into()))),
            ("Y", rule(IpHeader::default(), vec![], Target::Reject(RejectWith::TcpReset))),
            ("X", rule(src(net("10.1.0.0", 16), false), vec![], Target::Return)),
            ("X", rule(IpHeader::default(), vec![], Target::None)),
        ],
    );
    let outs = agree(&rs, &[with_src(Hook::Input, "10.1.0.1"), with_src(Hook::Input, "10.9.0.1"), with_src(Hook::Input, "9.0.0.1")]);
    let got: Vec<(Verdict, Vec<u32>)> = outs.into_iter().map(|o| (o.verdict, o.matched)).collect();
    assert_eq!(
        got,
        vec![
            (Verdict::Drop, vec![0, 2, 4, 1]),
            (Verdict::Drop, vec![0, 2, 5, 1]),
            (Verdict::Reject(RejectWith::TcpReset), vec![0, 3]),
        ]
    );
    // A goto from a built-in chain ends in the policy.
    let rs = ruleset(
        &[("FORWARD", Policy::Drop)],
        &["X"],
        vec![
            ("FORWARD", rule(IpHeader::default(), vec![], Target::Goto("X".into()))),
            ("FORWARD", rule(IpHeader::default(), vec![], Target::Accept)),
            ("X", rule(IpHeader::default(), vec![], Target::None)),
        ],
    );
    let o = agree(&rs, &[packet(Hook::Forward)]);
    assert_eq!((o[0].verdict, o[0].by_policy, o[0].matched.clone()), (Verdict::Drop, true, vec![0, 2]));
}

#[test]
fn negation_and_nested_prefixes_are_exact() {
    let rs = ruleset(
        &[],
        &[],
        vec![
            ("OUTPUT", rule(src(net("10.0.0.0", 8), true), vec![], Target::Drop)),
            ("OUTPUT", rule(src(net("10.1.0.0", 16), true), vec![], Target::Reject(RejectWith::TcpReset))),
            ("OUTPUT", rule(src(net("10.1.2.0", 24), false), vec![], Target::None)),
        ],
    );
    let pkts: Vec<Packet> = ["9.255.255.255", "10.0.0.0", "10.1.0.0", "10.1.2.255", "10.1.3.0", "10.255.255.255", "11.0.0.0"]
        .iter()
        .map(|a| with_src(Hook::Output, a))
        .collect();
    let outs = agree(&rs, &pkts);
    let v: Vec<Verdict> = outs.iter().map(|o| o.verdict).collect();
    use Verdict::*;
    let rst = Reject(RejectWith::TcpReset);
    assert_eq!(v, vec![Drop, rst, Accept, Accept, Accept, rst, Drop]);
    assert_eq!(outs[3].matched, vec![2]);
    // `! -s 10/8` is two LPM entries, not a prefix decomposition of the complement.
    let c = compile(&rs).unwrap();
    let FieldMap::Prefixes(e) = &c.hooks[Hook::Output as usize].fields[0].map else { panic!() };
    assert_eq!(e.len(), 4);
}

#[test]
fn ports_ranges_multiport_and_flags() {
    let tcp = IpHeader { proto: Some(Inv::new(6, false)), ..Default::default() };
    let mp = |dir, ports: Vec<PortRange>, invert| Match::Multiport(MultiportMatch { dir, ports, invert });
    let pr = |lo, hi| PortRange { lo, hi };
    let rs = ruleset(
        &[("INPUT", Policy::Drop)],
        &["X"],
        vec![
            ("INPUT", rule(tcp.clone(), vec![tcp_dport(1000, 2000, false)], Target::Jump("X".into()))),
            ("INPUT", rule(tcp.clone(), vec![mp(MultiportDir::Either, vec![pr(22, 22), pr(80, 90)], false)], Target::Accept)),
            ("INPUT", rule(tcp.clone(), vec![Match::Tcp(TcpMatch { flags: Some(Inv::new(TcpFlags { mask: 0x12, comp: 0x02 }, true)), ..Default::default() })], Target::Reject(RejectWith::TcpReset))),
            ("X", rule(tcp.clone(), vec![tcp_dport(1500, 3000, true)], Target::Accept)),
            ("X", rule(tcp.clone(), vec![mp(MultiportDir::Source, vec![pr(5, 5)], true)], Target::None)),
        ],
    );
    let mut pkts = Vec::new();
    for (sport, dport) in [(22, 22), (22, 5), (5, 85), (5, 999), (5, 1000), (5, 1499), (5, 1500), (5, 2000), (6, 2000), (5, 2001), (80, 80)] {
        for flags in [0x02, 0x12, 0x10, 0x00] {
            pkts.push(Packet { sport, dport, tcp_flags: flags, ..packet(Hook::Input) });
        }
    }
    let outs = agree(&rs, &pkts);
    // --ports: one count whichever port hits.
    assert_eq!(outs[0].matched, vec![1]);
    assert_eq!(outs[4].matched, vec![1]);
    assert_eq!(outs[8].matched, vec![1]);
    // The --ports rule is split in two exclusive compiled rules with the same id.
    let c = compile(&rs).unwrap();
    assert_eq!(c.hooks[0].actions.iter().filter(|a| a.rule_id == Some(1)).count(), 2);
}

#[test]
fn out_iface_at_input_is_the_empty_name() {
    let o = |name: &str, wildcard, invert| IpHeader {
        out_iface: Some(Inv::new(Iface { name: name.into(), wildcard }, invert)),
        ..Default::default()
    };
    let rs = ruleset(
        &[],
        &["X"],
        vec![
            ("INPUT", rule(IpHeader::default(), vec![], Target::Jump("X".into()))),
            ("FORWARD", rule(IpHeader::default(), vec![], Target::Jump("X".into()))),
            ("X", rule(o("eth1", false, false), vec![], Target::None)),
            ("X", rule(o("eth", true, false), vec![], Target::None)),
            ("X", rule(o("eth1", false, true), vec![], Target::None)),
            ("X", rule(o("", true, false), vec![], Target::None)),
            ("X", rule(o("", true, true), vec![], Target::None)),
        ],
    );
    let outs = agree(&rs, &[packet(Hook::Input), packet(Hook::Forward), Packet { out_iface: "eth10".into(), ..packet(Hook::Forward) }]);
    assert_eq!(outs[0].matched, vec![0, 4, 5]);
    assert_eq!(outs[1].matched, vec![1, 2, 3, 5]);
    assert_eq!(outs[2].matched, vec![1, 3, 4, 5]);
    let c = compile(&rs).unwrap();
    assert!(c.hooks[0].fields.iter().all(|f| f.field != Field::OutIface));
    assert_eq!(c.hooks[0].actions.len(), 3);
}

#[test]
fn field_matches_after_a_stateful_match_become_ordered_checks() {
    let tcp = IpHeader { proto: Some(Inv::new(6, false)), ..Default::default() };
    let nth = Match::Statistic(StatisticMatch { mode: StatisticMode::Nth { every: 1, packet: 0 }, invert: false });
    let rs = ruleset(
        &[],
        &[],
        vec![
            ("INPUT", rule(tcp.clone(), vec![tcp_dport(22, 22, false), nth.clone(), tcp_dport(0, 100, false)], Target::Drop)),
            ("INPUT", rule(tcp, vec![nth, tcp_dport(22, 22, false)], Target::Reject(RejectWith::TcpReset))),
        ],
    );
    let c = compile(&rs).unwrap();
    let a = &c.hooks[0].actions;
    assert_eq!(a[0].checks[0], Check::L4Header);
    assert!(matches!(a[0].checks[1], Check::StatisticNth { state: 0, .. }));
    assert_eq!(a[0].checks[2], Check::FieldIn { field: Field::Dport, ranges: vec![(0, 100)] });
    assert_eq!(c.n_states, 2);
    // The second rule's nth counts every packet reaching it, whatever its port.
    let pkts: Vec<Packet> = [22, 80, 22, 22, 80, 22, 23, 22].iter().map(|&d| Packet { dport: d, ..packet(Hook::Input) }).collect();
    agree(&rs, &pkts);
}

#[test]
fn jump_rule_checks_are_evaluated_once() {
    // The jump rule's mark check must not be re-evaluated inside the chain after MARK.
    let mark = Match::Mark(MarkMatch { mark: 0, mask: 0xff, invert: false });
    let rs = ruleset(
        &[],
        &["X"],
        vec![
            ("INPUT", rule(IpHeader::default(), vec![mark], Target::Jump("X".into()))),
            ("X", rule(IpHeader::default(), vec![], Target::Mark(MarkTarget { value: 1, mask: 0xff }))),
            ("X", rule(IpHeader::default(), vec![], Target::Drop)),
        ],
    );
    let c = compile(&rs).unwrap();
    assert_eq!(c.hooks[0].actions[0].kind, ActionKind::Enter { end: 3, depth: 1 });
    let o = agree(&rs, &[packet(Hook::Input), Packet { mark: 5, ..packet(Hook::Input) }]);
    assert_eq!((o[0].verdict, o[0].matched.clone(), o[0].mark), (Verdict::Drop, vec![0, 1, 2], 1));
    assert_eq!((o[1].verdict, o[1].matched.clone()), (Verdict::Accept, vec![]));
}

#[test]
fn loops_are_refused_like_iptables() {
    let rs = ruleset(
        &[],
        &["A", "B"],
        vec![
            ("A", rule(IpHeader::default(), vec![], Target::Jump("B".into()))),
            ("B", rule(src(net("10.0.0.0", 8), false), vec![], Target::Goto("A".into()))),
        ],
    );
    // Not reachable from a built-in chain: fine.
    assert!(compile(&rs).is_ok());
    let mut rs2 = rs.clone();
    rs2.table_mut(TableKind::Filter).chain_mut("OUTPUT").unwrap().rules.push(rule(src(net("1.0.0.0", 8), true), vec![], Target::Jump("A".into())));
    match compile(&rs2) {
        Err(e @ Error::State(_)) => assert_eq!(e.render("iptables"), "iptables: Too many levels of symbolic links.\n"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn inlining_blow_up_is_refused() {
    // Chain Ci jumps to C(i+1) twice: 2^20 copies of the last chain.
    let names: Vec<String> = (0..20).map(|i| format!("C{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut rules = vec![("INPUT", rule(IpHeader::default(), vec![], Target::Jump("C00".into())))];
    for w in refs.windows(2) {
        for _ in 0..2 {
            rules.push((w[0], rule(IpHeader::default(), vec![], Target::Jump(w[1].into()))));
        }
    }
    rules.push((refs[19], rule(IpHeader::default(), vec![], Target::None)));
    let rs = ruleset(&[], &refs, rules);
    match compile(&rs) {
        Err(Error::State(m)) => assert!(m.contains("Ruleset too large"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn icmp_ctstate_iprange_and_residuals() {
    let icmp = IpHeader { proto: Some(Inv::new(1, false)), ..Default::default() };
    let echo = Match::Icmp(IcmpMatch { icmp_type: 8, code_lo: 0, code_hi: 0, invert: false });
    let unreach = Match::Icmp(IcmpMatch { icmp_type: 3, code_lo: 1, code_hi: 3, invert: true });
    let st = Match::State(StateMatch { state: ct_state::ESTABLISHED | ct_state::RELATED, invert: false });
    let ct = Match::Conntrack(ConntrackMatch { state: Some(Inv::new(ct_state::NEW, true)), proto: Some(Inv::new(6, false)), ..Default::default() });
    let range = Match::Iprange(IprangeMatch { src: Some(Inv::new((ip("10.0.0.5"), ip("10.0.1.7")), true)), dst: None });
    let frag = IpHeader { fragment: Some(true), ..Default::default() };
    let rs = ruleset(
        &[("INPUT", Policy::Drop)],
        &[],
        vec![
            ("INPUT", rule(frag, vec![], Target::Reject(RejectWith::IcmpHostProhibited))),
            ("INPUT", rule(IpHeader::default(), vec![st], Target::Accept)),
            ("INPUT", rule(icmp.clone(), vec![echo], Target::Accept)),
            ("INPUT", rule(icmp, vec![unreach], Target::None)),
            ("INPUT", rule(IpHeader::default(), vec![ct], Target::Log(LogTarget::default()))),
            ("INPUT", rule(IpHeader::default(), vec![range], Target::Reject(RejectWith::TcpReset))),
        ],
    );
    let mut pkts = Vec::new();
    for (proto, t, code) in [(1u8, 8u8, 0u8), (1, 8, 1), (1, 3, 0), (1, 3, 1), (1, 3, 3), (1, 3, 4), (6, 0, 0)] {
        for s in [0u8, 1, 2, 3, 6] {
            for a in ["10.0.0.4", "10.0.0.5", "10.0.1.7", "10.0.1.8"] {
                for frag_off in [0u16, 1] {
                    pkts.push(Packet { proto, icmp_type: t, icmp_code: code, ct_state: s, src: ip(a), frag_off, ..packet(Hook::Input) });
                }
            }
        }
    }
    agree(&rs, &pkts);
    let c = compile(&rs).unwrap();
    assert_eq!(c.logs, vec![LogTarget::default()]);
    let used: Vec<Field> = c.hooks[0].fields.iter().map(|f| f.field).collect();
    assert_eq!(used, vec![Field::Src, Field::Proto, Field::Icmp, Field::CtState]);
}

#[test]
fn large_ruleset_compiles() {
    // 100 000 rules; timing is for benches, this checks the shapes stay sparse.
    let mut rules = Vec::new();
    for i in 0..100_000u32 {
        let h = IpHeader { src: Some(Inv::new(Ipv4Mask::new(0x0a00_0000 | i, u32::MAX), false)), proto: Some(Inv::new(6, false)), ..Default::default() };
        rules.push(("INPUT", rule(h, vec![tcp_dport((i % 60000) as u16, (i % 60000) as u16, false)], Target::Accept)));
    }
    let rs = ruleset(&[], &[], rules);
    let t0 = std::time::Instant::now();
    let c = compile(&rs).unwrap();
    eprintln!("compiled 100000 rules in {:?}", t0.elapsed());
    let t = &c.hooks[0];
    assert_eq!(t.actions.len(), 100_000);
    // Only the `-p tcp` vector holds every rule; address and port vectors hold one or two.
    assert_eq!(t.vectors.iter().filter(|v| v.words.len() > 2).count(), 1);
    agree(&rs, &[Packet { src: 0x0a00_0000 | 777, dport: 777, ..packet(Hook::Input) }, packet(Hook::Input)]);
}

/// Jumps inserted in place (`flat_inserted`): to an empty chain, or one whose last rule is an
/// unconditional RETURN, with field matches alone, they are rules that count and go on; a
/// jump with another check, a RETURN further up, a goto, stay for a rebuild.
#[test]
fn inserted_jumps_flatten_when_their_blocks_need_no_skip() {
    let out = |name: &str| IpHeader { out_iface: Some(Inv::new(Iface { name: name.into(), wildcard: false }, false)), ..Default::default() };
    let rs = ruleset(
        &[],
        &["EMPTY", "ISO", "MID", "D"],
        vec![
            ("ISO", rule(IpHeader::default(), vec![], Target::Return)),
            ("MID", rule(src(net("10.0.0.0", 8), false), vec![], Target::Return)),
            ("MID", rule(IpHeader::default(), vec![], Target::Drop)),
            ("D", rule(IpHeader::default(), vec![tcp_dport(81, 81, false)], Target::Drop)),
        ],
    );
    let table = rs.table(TableKind::Filter).expect("filter");
    let flat = |r: Rule| {
        let actions = super::compile_tail(table, Hook::Forward, &[Rule { id: 9, ..r }], true, 0).expect("compiles").expect("no rebuild");
        super::flat_inserted(actions).map(|a| a.into_iter().map(|a| (a.rule_id, a.kind)).collect::<Vec<_>>())
    };
    let jump = |ip: IpHeader, m: Vec<Match>, to: &str| rule(ip, m, Target::Jump(to.into()));
    assert_eq!(flat(jump(out("f1"), vec![], "EMPTY")), Some(vec![(Some(9), ActionKind::Continue)]));
    assert_eq!(flat(jump(IpHeader::default(), vec![], "ISO")), Some(vec![(Some(9), ActionKind::Continue), (Some(0), ActionKind::Continue)]));
    assert_eq!(
        flat(jump(out("f1"), vec![], "D")),
        Some(vec![(Some(9), ActionKind::Continue), (Some(3), ActionKind::Drop)])
    );
    // the TCP header check of `--dport` on the jump, evaluated once: not flat
    assert_eq!(flat(jump(IpHeader::default(), vec![tcp_dport(82, 82, false)], "D")), None);
    // a RETURN before the chain's end skips its rest
    assert_eq!(flat(jump(IpHeader::default(), vec![], "MID")), None);
    // a goto returns for the calling chain
    assert_eq!(flat(rule(IpHeader::default(), vec![], Target::Goto("EMPTY".into()))), None);
}

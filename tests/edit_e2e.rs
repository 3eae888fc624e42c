//! `-I`, `-R` and `-D` through the command line with real traffic (root only): rules inserted
//! in a built-in chain of a loaded ruleset (at its head or further down), replacing one of
//! its rules or deleted from it take effect at once, and the rest is listed and counted as
//! before, whether the change is patched into the datapath's image (rules that neither jump
//! nor, for `-D`, end the chain; `-D` by spec and by number; Docker's jumps) or rebuilds it
//! (deleting a jump); a rule
//! that does not exist gets iptables' error and changes nothing. Changes no packet sees
//! (chains nothing jumps to) compile nothing, and a policy is patched in. The same edits of
//! user chains are patched in wherever the chains are inlined; flushing a chain that is
//! reached takes its rules out of the datapath, and `-Z` zeroes a chain's or a rule's
//! counters.

mod common;

use bpf_iptables::datapath::skel::types::bpfipt_const;
use common::topo::PaddedFirewall;

/// Big enough for FORWARD to take four rules in place (one per TAIL_PER rules).
const FILLER: u32 = 4 * bpfipt_const::BPFIPT_IMG_TAIL_PER.0 + 4;

#[test]
fn inserted_and_deleted_rules_take_effect_and_the_rest_stays() {
    if !common::root_or_skip("inserted_and_deleted_rules_take_effect_and_the_rest_stays") {
        return;
    }
    let rules = "-A FORWARD -p tcp -m tcp --dport 81 -j DROP\n\
                 -A FORWARD -p tcp -m tcp --dport 82 -j DROP\n\
                 -A FORWARD -p tcp -m tcp --dport 83 -j REJECT --reject-with tcp-reset\n\
                 -A FORWARD -j U\n\
                 -A FORWARD -p tcp -m tcp --dport 80 -j ACCEPT\n\
                 -A U -p tcp -m tcp --dport 84 -j DROP\n\
                 COMMIT\n";
    let fw = PaddedFirewall::new("edit", FILLER, rules, &[80, 81, 82, 83, 84, 85]);
    let (t, run, ok) = (&fw.t, |args: &[&str]| fw.run(args), |args: &[&str]| fw.ok(args));
    let compiled = || fw.compiled_forward();

    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 81), "timeout");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "open");
    let before = compiled();

    // At the head, in place: the compiled rules of the hook stay as they were.
    ok(&["-I", "FORWARD", "-p", "tcp", "--dport", "80", "-j", "DROP"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "timeout", "inserted before the ACCEPT");
    ok(&["-I", "FORWARD", "1", "-p", "tcp", "--dport", "80", "-s", "198.18.1.2", "-j", "ACCEPT"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "open", "the newest first");
    assert_eq!(compiled(), before, "inserted in place");
    let listed = ok(&["-S", "FORWARD"]);
    assert_eq!(
        listed.lines().take(3).collect::<Vec<_>>(),
        ["-P FORWARD ACCEPT", "-A FORWARD -s 198.18.1.2/32 -p tcp -m tcp --dport 80 -j ACCEPT", "-A FORWARD -p tcp -m tcp --dport 80 -j DROP"]
    );
    ok(&["-D", "FORWARD", "1"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "timeout", "deleted the inserted ACCEPT");
    ok(&["-D", "FORWARD", "-p", "tcp", "--dport", "80", "-j", "DROP"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "open", "deleted the inserted DROP");
    assert_eq!(compiled(), before);

    // By spec, and by number (the 82 rule is number FILLER + 1 once the 81 one is gone).
    ok(&["-D", "FORWARD", "-p", "tcp", "--dport", "81", "-j", "DROP"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 81), "open", "deleted by spec");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 82), "timeout", "the next rule stays");
    ok(&["-D", "FORWARD", &(FILLER + 1).to_string()]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 82), "open", "deleted by number");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 83), "refused", "REJECT stays");
    assert_eq!(compiled(), before, "deleted in place: the compiled rules stay, doing nothing");

    // Chains no packet reaches, and policies: the installed image is kept (a rebuild would
    // drop the rules deleted in place above) or has its policy slot set.
    ok(&["-N", "V"]);
    ok(&["-A", "V", "-p", "tcp", "--dport", "80", "-j", "DROP"]);
    ok(&["-E", "V", "W"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "open", "no jump to W");
    ok(&["-P", "FORWARD", "DROP"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 85), "timeout", "policy DROP (replies too)");
    ok(&["-P", "FORWARD", "ACCEPT"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 85), "open", "policy ACCEPT again");
    ok(&["-F", "W"]);
    ok(&["-X", "W"]);
    assert_eq!(compiled(), before, "nothing compiled for these");
    ok(&["-D", "FORWARD", "-p", "tcp", "--dport", "83", "-j", "REJECT", "--reject-with", "tcp-reset"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 83), "open", "deleted REJECT");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 84), "timeout", "through the jump to U");

    // A rule that is not there, a number past the end: iptables' errors, nothing changed.
    let o = run(&["-D", "FORWARD", "-p", "tcp", "--dport", "81", "-j", "DROP"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "iptables: Bad rule (does a matching rule exist in that chain?).\n");
    let o = run(&["-D", "FORWARD", "9999"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "iptables: Index of deletion too big.\n");
    assert_eq!(compiled(), before);

    // A jump: its chain is inlined after it, so the image is rebuilt without them.
    ok(&["-D", "FORWARD", "-j", "U"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 84), "open", "deleted jump");
    assert!(compiled() < before, "rebuilt without the deleted rules");
    // Further down, and in place of a rule: in place too, each where it was put.
    let rebuilt = compiled();
    ok(&["-I", "FORWARD", &(FILLER + 1).to_string(), "-p", "tcp", "--dport", "84", "-j", "DROP"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 84), "timeout", "inserted further down");
    ok(&["-I", "FORWARD", &(FILLER + 1).to_string(), "-p", "tcp", "--dport", "84", "-j", "ACCEPT"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 84), "open", "inserted before that");
    ok(&["-R", "FORWARD", &(FILLER + 1).to_string(), "-p", "tcp", "--dport", "85", "-j", "DROP"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 84), "timeout", "the ACCEPT replaced");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 85), "timeout", "by a DROP");
    assert_eq!(compiled(), rebuilt, "in place");
    assert_eq!(
        ok(&["-S", "FORWARD"]).lines().skip(1 + FILLER as usize).take(2).collect::<Vec<_>>(),
        ["-A FORWARD -p tcp -m tcp --dport 85 -j DROP", "-A FORWARD -p tcp -m tcp --dport 84 -j DROP"]
    );
    let o = run(&["-R", "FORWARD", &(FILLER + 4).to_string(), "-j", "DROP"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "iptables: Index of replacement too big.\n");
    let o = run(&["-I", "FORWARD", &(FILLER + 5).to_string(), "-j", "DROP"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "iptables: Index of insertion too big.\n");
    ok(&["-D", "FORWARD", &(FILLER + 1).to_string()]);
    ok(&["-D", "FORWARD", &(FILLER + 1).to_string()]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 84), "open");
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 85), "open");

    assert_eq!(
        fw.listed_past_filler(),
        [
            "-P INPUT ACCEPT",
            "-P FORWARD ACCEPT",
            "-P OUTPUT ACCEPT",
            "-N U",
            "-A FORWARD -p tcp -m tcp --dport 80 -j ACCEPT",
            "-A U -p tcp -m tcp --dport 84 -j DROP",
        ]
    );
    // The ACCEPT kept counting through every change.
    let accept = ok(&["-L", "FORWARD", "-v", "-x", "-n"]).lines().last().map(str::to_string).expect("a rule");
    let n: u64 = accept.split_whitespace().next().and_then(|n| n.parse().ok()).expect("packet count");
    assert!(n >= 2 && accept.contains("tcp dpt:80"), "{accept}");
    ok(&["-D", "FORWARD", "-p", "tcp", "--dport", "80", "-j", "ACCEPT"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "open", "policy ACCEPT");
}

/// Docker's edits: rules added to, replaced in and deleted from user chains that FORWARD
/// jumps to take effect at once, patched in where the chains are inlined (nothing compiled),
/// after a chain's unconditional RETURN they change nothing, and a RETURN added rebuilds.
#[test]
fn user_chain_edits_are_patched_in_where_the_chains_are_inlined() {
    if !common::root_or_skip("user_chain_edits_are_patched_in_where_the_chains_are_inlined") {
        return;
    }
    let rules = ":DOCKER - [0:0]\n\
                 :DOCKER-USER - [0:0]\n\
                 -A FORWARD -j DOCKER-USER\n\
                 -A FORWARD -o f1 -p tcp -j DOCKER\n\
                 -A FORWARD -p tcp -m tcp --dport 80 -j ACCEPT\n\
                 -A DOCKER-USER -j RETURN\n\
                 -A DOCKER -p tcp -m tcp --dport 81 -j DROP\n\
                 COMMIT\n";
    let fw = PaddedFirewall::new("user", FILLER, rules, &[80, 81, 82, 83, 84, 85, 86]);
    let (t, ok) = (&fw.t, |args: &[&str]| fw.ok(args));
    let compiled = || fw.compiled_forward();
    let probe = |port| t.probe(&t.s, "tcp", "198.18.2.2", port);
    assert_eq!(probe(81), "timeout");
    assert_eq!(probe(82), "open");
    let before = compiled();

    let docker = ["-d", "198.18.2.2", "!", "-i", "f1", "-o", "f1", "-p", "tcp", "--dport", "82", "-j", "DROP"];
    ok(&[&["-A", "DOCKER"], &docker[..]].concat());
    assert_eq!(probe(82), "timeout", "appended to DOCKER");
    ok(&["-I", "DOCKER-USER", "-p", "tcp", "--dport", "83", "-j", "DROP"]);
    assert_eq!(probe(83), "timeout", "inserted before DOCKER-USER's RETURN");
    ok(&["-A", "DOCKER-USER", "-p", "tcp", "--dport", "84", "-j", "DROP"]);
    assert_eq!(probe(84), "open", "after the RETURN: reached by no packet");
    ok(&["-R", "DOCKER", "1", "-p", "tcp", "--dport", "85", "-j", "DROP"]);
    assert_eq!(probe(81), "open", "replaced");
    assert_eq!(probe(85), "timeout", "by this one");
    ok(&[&["-D", "DOCKER"], &docker[..]].concat());
    assert_eq!(probe(82), "open", "deleted");
    assert_eq!(compiled(), before, "all in place");
    assert_eq!(
        fw.listed_past_filler(),
        [
            "-P INPUT ACCEPT",
            "-P FORWARD ACCEPT",
            "-P OUTPUT ACCEPT",
            "-N DOCKER",
            "-N DOCKER-USER",
            "-N U",
            "-A FORWARD -j DOCKER-USER",
            "-A FORWARD -o f1 -p tcp -j DOCKER",
            "-A FORWARD -p tcp -m tcp --dport 80 -j ACCEPT",
            "-A DOCKER -p tcp -m tcp --dport 85 -j DROP",
            "-A DOCKER-USER -p tcp -m tcp --dport 83 -j DROP",
            "-A DOCKER-USER -j RETURN",
            "-A DOCKER-USER -p tcp -m tcp --dport 84 -j DROP",
        ]
    );
    let counted = ok(&["-L", "DOCKER", "-v", "-x", "-n"]);
    let n: u64 = counted.lines().nth(2).and_then(|l| l.split_whitespace().next()?.parse().ok()).expect("packet count");
    assert!(n >= 1, "{counted}");

    // A RETURN skips within the hook: not inserted in place, the image is rebuilt.
    ok(&["-I", "DOCKER", "-p", "tcp", "--dport", "85", "-j", "RETURN"]);
    assert_ne!(compiled(), before, "rebuilt");
    assert_eq!(probe(85), "open", "returned before the DROP");
    assert_eq!(probe(83), "timeout", "the rest as it was");
    assert_eq!(probe(80), "open");

    // Counters zeroed by the stored rules' ids, a chain's or one rule's.
    let counts = |chain: &str| fw.packet_counts(chain);
    let counted = counts("DOCKER");
    assert!(counted[0] >= 1 && counted[1] >= 1, "both counted: {counted:?}");
    ok(&["-Z", "DOCKER", "2"]);
    assert_eq!(counts("DOCKER"), [counted[0], 0], "the second rule zeroed");
    assert_eq!(probe(83), "timeout");
    ok(&["-Z", "DOCKER-USER"]);
    assert_eq!(counts("DOCKER-USER"), [0, 0, 0]);
    // Flushing a chain FORWARD jumps to takes its rules out of the datapath too: in place when
    // none of them always ends the chain's walk (DOCKER), rebuilt otherwise (DOCKER-USER's
    // RETURN); one nothing jumps to, or one already empty, changes nothing there.
    ok(&["-A", "DOCKER", "-p", "tcp", "--dport", "86", "-j", "DROP"]);
    assert_eq!(probe(86), "timeout", "appended to DOCKER");
    let kept = compiled();
    ok(&["-F", "DOCKER"]);
    assert_eq!(probe(86), "open", "DOCKER flushed");
    assert_eq!(probe(83), "timeout", "DOCKER-USER as it was");
    assert_eq!(compiled(), kept, "in place");
    ok(&["-F", "DOCKER-USER"]);
    assert_eq!(probe(83), "open", "DOCKER-USER flushed");
    let flushed = compiled();
    assert!(flushed < kept, "rebuilt");
    ok(&["-N", "SPARE"]);
    ok(&["-A", "SPARE", "-j", "DROP"]);
    ok(&["-F", "SPARE"]);
    ok(&["-F", "DOCKER-USER"]);
    ok(&["-X", "SPARE"]);
    assert_eq!(compiled(), flushed, "nothing compiled");
    ok(&["-F", "FORWARD"]);
    assert_eq!(probe(81), "open", "FORWARD flushed, its jumps too");
    assert_eq!(probe(85), "open");
    let listed = ok(&["-S"]);
    assert!(listed.lines().all(|l| !l.starts_with("-A")) && listed.contains("-N DOCKER\n"), "{listed}");
}

/// Docker's jumps, inserted at the head of FORWARD: to an empty chain and to one that only
/// returns, and one with a field match, go in place (nothing compiled), count as netfilter
/// counts them, and the chain's rules judge there; a jump with a check that is not a field
/// match (`--dport` needs the TCP header) and rules added to a chain whose jump went in place
/// rebuild; a jump that would make a loop gets iptables' error and changes nothing.
#[test]
fn jumps_are_inserted_in_place() {
    if !common::root_or_skip("jumps_are_inserted_in_place") {
        return;
    }
    let rules = ":DOCKER - [0:0]\n\
                 :ISO - [0:0]\n\
                 :D - [0:0]\n\
                 -A FORWARD -p tcp -m tcp --dport 80 -j ACCEPT\n\
                 -A ISO -j RETURN\n\
                 -A D -p tcp -m tcp --dport 81 -j DROP\n\
                 COMMIT\n";
    // room for the five compiled rules the first three jumps insert
    let filler = 8 * bpfipt_const::BPFIPT_IMG_TAIL_PER.0 + 4;
    let fw = PaddedFirewall::new("jumps", filler, rules, &[80, 81, 82, 83, 84]);
    let (t, ok) = (&fw.t, |args: &[&str]| fw.ok(args));
    let compiled = || fw.compiled_forward();
    let probe = |port| t.probe(&t.s, "tcp", "198.18.2.2", port);
    let counts = |chain: &str| fw.packet_counts(chain);
    assert_eq!(probe(81), "open");
    let before = compiled();

    ok(&["-I", "FORWARD", "-o", "f1", "-j", "DOCKER"]);
    ok(&["-I", "FORWARD", "-j", "ISO"]);
    ok(&["-I", "FORWARD", "-p", "tcp", "-o", "f1", "-j", "D"]);
    assert_eq!(compiled(), before, "in place");
    assert_eq!(probe(81), "timeout", "D's DROP, through the jump");
    assert_eq!(probe(80), "open", "past ISO's RETURN and the empty DOCKER");
    // the jumps count the packets they take, as ISO's RETURN does: D those out of f1 (the
    // probe to 81 dropped there), ISO all the others, DOCKER, after it, those out of f1
    let forward = counts("FORWARD");
    let (d, iso, docker) = (forward[0], forward[1], forward[2]);
    assert!(d >= 1 && docker >= 1 && iso > docker, "jumps counted: {:?}", &forward[..3]);
    assert_eq!(counts("ISO"), [iso], "the RETURN counts what the jump took");

    // A loop through D, which FORWARD reaches: refused, nothing changed.
    ok(&["-N", "L"]);
    ok(&["-A", "L", "-j", "D"]);
    let o = fw.run(&["-I", "D", "-j", "L"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "iptables: Too many levels of symbolic links.\n");
    assert_eq!(compiled(), before);

    // `--dport` on the jump is checked once, not with each rule of D: rebuilt.
    ok(&["-I", "FORWARD", "-p", "tcp", "--dport", "82", "-j", "D"]);
    let rebuilt = compiled();
    assert_ne!(rebuilt, before, "rebuilt");
    assert_eq!(probe(81), "timeout");
    assert_eq!(probe(82), "open", "D has no rule for 82");
    // DOCKER is inlined in the rebuilt image: its rule goes in place.
    ok(&["-A", "DOCKER", "-p", "tcp", "--dport", "83", "-j", "DROP"]);
    assert_eq!(probe(83), "timeout", "appended to DOCKER");
    // and a jump appended there, to a chain with a rule, goes in place with that rule
    ok(&["-N", "E"]);
    ok(&["-A", "E", "-p", "tcp", "--dport", "84", "-j", "DROP"]);
    ok(&["-A", "DOCKER", "-j", "E"]);
    assert_eq!(probe(84), "timeout", "E's DROP, through DOCKER");
    assert_eq!(compiled(), rebuilt, "in place");
    assert_eq!(
        fw.listed_past_filler(),
        [
            "-P INPUT ACCEPT",
            "-P FORWARD ACCEPT",
            "-P OUTPUT ACCEPT",
            "-N D",
            "-N DOCKER",
            "-N E",
            "-N ISO",
            "-N L",
            "-N U",
            "-A FORWARD -p tcp -m tcp --dport 82 -j D",
            "-A FORWARD -o f1 -p tcp -j D",
            "-A FORWARD -j ISO",
            "-A FORWARD -o f1 -j DOCKER",
            "-A FORWARD -p tcp -m tcp --dport 80 -j ACCEPT",
            "-A D -p tcp -m tcp --dport 81 -j DROP",
            "-A DOCKER -p tcp -m tcp --dport 83 -j DROP",
            "-A DOCKER -j E",
            "-A E -p tcp -m tcp --dport 84 -j DROP",
            "-A ISO -j RETURN",
            "-A L -j D",
        ]
    );
}

/// A policy set in an empty ruleset (nothing enforced until then) takes effect: `-P` with
/// no image to patch enforces the ruleset whole, and back to ACCEPT it passes everything again.
#[test]
fn a_policy_alone_is_enforced() {
    if !common::root_or_skip("a_policy_alone_is_enforced") {
        return;
    }
    let ours = env!("CARGO_BIN_EXE_bpf-iptables");
    let mut t = common::topo::Topo::new("policy");
    t.on_drop_in_fw(&[ours, "--reset"]);
    t.serve_ports(&t.r, &[80], &[]);
    let tools = common::Tools::ours();
    let ipt = tools.bin("iptables");
    let ipt = ipt.to_str().expect("utf-8 path");
    let ok = |args: &[&str]| {
        let o = t.exec(&t.f, &[&[ipt][..], args].concat());
        assert!(o.status.success() && o.stdout.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "open");
    ok(&["-P", "FORWARD", "DROP"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "timeout", "policy DROP");
    ok(&["-N", "X"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "timeout", "a new chain changes nothing");
    ok(&["-P", "FORWARD", "ACCEPT"]);
    assert_eq!(t.probe(&t.s, "tcp", "198.18.2.2", 80), "open", "policy ACCEPT");
}

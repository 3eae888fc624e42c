//! Concurrent invocations are serialised by the xtables lock: 50 `iptables -w -A` calls started
//! at once in one namespace must all land, each exactly once (root; skips otherwise).

mod common;

use common::{in_fresh_netns, root_or_skip, Tools};

#[test]
fn fifty_concurrent_appends_lose_no_rule() {
    if !root_or_skip("fifty_concurrent_appends_lose_no_rule") {
        return;
    }
    let tools = Tools::ours();
    in_fresh_netns(&tools, |s| {
        let outcomes: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..50)
                .map(|i| {
                    scope.spawn(move || {
                        let src = format!("198.18.7.{}", i + 1);
                        s.run("iptables", &["-w", "-A", "INPUT", "-s", &src, "-j", "DROP"], None)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        for (i, o) in outcomes.iter().enumerate() {
            assert!(o.success(), "append {i}: {} {}", o.describe(), o.stderr);
            assert!(o.stdout.is_empty() && o.stderr.is_empty(), "append {i} printed something");
        }
        let listed = s.run("iptables", &["-S", "INPUT"], None);
        assert!(listed.success(), "{}", listed.stderr);
        let mut rules: Vec<&str> = listed.stdout.lines().filter(|l| l.starts_with("-A INPUT")).collect();
        assert_eq!(rules.len(), 50, "{}", listed.stdout);
        rules.sort_unstable();
        rules.dedup();
        assert_eq!(rules.len(), 50, "a rule landed twice:\n{}", listed.stdout);
        for i in 1..=50 {
            let want = format!("-A INPUT -s 198.18.7.{i}/32 -j DROP");
            assert!(rules.contains(&want.as_str()), "missing {want}");
        }
    });
}

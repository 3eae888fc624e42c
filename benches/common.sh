# Sourced by the control-plane benches, from the repository's top directory: builds the
# release binary and links its personalities into a scratch directory ($work), names the
# run's network namespace ($ns: drop_ns removes it and our pinned state of it, as the exit
# does), and gen_rules N prints an iptables-restore input of N filter INPUT rules that match
# no bench traffic (distinct source/destination /32s and ports), a rule that does (UDP from
# 198.18.0.2 to port 9), and a jump to the empty user chain USER; gen_nft N the same ruleset
# as nft -f input (both from gen_ruleset, one loop: the two stay the same rules);
# median_pair_ms and median_ms time commands in the namespace (REPS runs).
cargo build --release --quiet
bin=$PWD/target/release/bpf-iptables
work=$(mktemp -d)
ns=bpfipt-bench-$$
for n in iptables iptables-save iptables-restore; do ln -s "$bin" "$work/$n"; done
# (pins outlive a namespace otherwise)
drop_ns() {
  ip netns exec "$ns" "$bin" --reset >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
}
cleanup() { drop_ns; rm -rf "$work"; }
trap cleanup EXIT

# N FORMAT (ipt: iptables-restore input, nft: nft -f input): one generator for both, so that
# the two stay the same rules
gen_ruleset() {
  python3 - "$1" "$2" <<'PY'
import sys
n, fmt = int(sys.argv[1]), sys.argv[2]
ipt = fmt == "ipt"
if ipt:
    print("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:USER - [0:0]")
else:
    print("flush ruleset\ntable ip filter {\n chain USER {\n }\n chain INPUT { type filter hook input priority 0; policy accept;")
for i in range(n):
    a, b = divmod(i, 250)
    src, dst, port = f"10.{a // 250}.{a % 250}.{b + 1}", f"172.16.{a % 250}.{b + 1}", 1 + i % 60000
    if ipt:
        print(f"-A INPUT -s {src}/32 -d {dst}/32 -p tcp -m tcp --dport {port} -j DROP")
    else:
        print(f"  ip saddr {src} ip daddr {dst} tcp dport {port} drop")
if ipt:
    print("-A INPUT -s 198.18.0.2/32 -p udp -m udp --dport 9 -j ACCEPT\n-A INPUT -j USER\nCOMMIT")
else:
    print("  ip saddr 198.18.0.2 udp dport 9 accept\n  jump USER\n }\n}")
PY
}
gen_rules() { gen_ruleset "$1" ipt; } # N -> iptables-restore input
gen_nft() { gen_ruleset "$1" nft; }   # N -> nft -f input

# Timing runs inside the namespace, so `ip netns exec` (a few ms of its own) is not measured,
# and reads bash's EPOCHREALTIME (µs), not date(1), whose own fork and exec would add ~2 ms.
# median_pair_ms DO UNDO: median wall-clock ms over REPS runs of the shell command DO, each
# followed by the untimed UNDO (empty: nothing).
median_pair_ms() {
  ip netns exec "$ns" bash -c '
    do_cmd=$1 undo_cmd=$2 reps=$3 times=()
    for _ in $(seq "$reps"); do
      t0=${EPOCHREALTIME/./}; eval "$do_cmd" >/dev/null; t1=${EPOCHREALTIME/./}
      [ -n "$undo_cmd" ] && eval "$undo_cmd" >/dev/null
      times+=($(( t1 - t0 )))
    done
    printf "%s\n" "${times[@]}" | sort -n | awk "{a[NR]=\$1} END {printf \"%.2f\", a[int((NR+1)/2)]/1000}"
  ' _ "$1" "$2" "$REPS"
}
median_ms() { median_pair_ms "$*" ""; }

#!/usr/bin/env bash
# Control-plane benchmark: how long rule changes and listings take, side by side for
# bpf-iptables, iptables-legacy, iptables-nft and native nft, in one run on this machine.
#
#   benches/control_plane.sh [N ...]        (as root; default N = 0 100 1000 10000;
#                                            IMPLS="bpf legacy nft-compat nft" selects columns)
#
# For each N, each implementation gets a fresh network namespace holding N filter INPUT rules
# that do not match (distinct source/destination /32s and ports), a rule that does match, and
# a jump to the user chain USER, and we time, as whole processes (median of REPS runs, in ms):
#   restore  replacing the whole ruleset from a file (iptables-restore / nft -f)
#   append   one -A with N rules present (nft: add rule)
#   insert   one -I at the head with N rules present (nft: insert rule)
#   mid      one -I in the middle, before rule N/2 + 1 (nft: insert rule position)
#   replace  one -R of rule N/2 + 1 (nft: replace rule handle)
#   delete   deleting the appended rule again by spec (nft: delete rule by handle)
#   chain    one -N of a new chain, nothing jumping to it (nft: add chain)
#   user     one -A to USER, which INPUT jumps to (nft: add rule to chain USER)
#   check    one -C of the last rule, the jump to USER (nft has no such command: -)
#   save     iptables-save (nft list ruleset)
#   list     -L -n (nft list table)
# and for bpf-iptables the bytes of its BPF maps (bpftool's memlock: the pinned maps and the
# classifier image maps they hold) per N.
# Each point checks itself: the listing must contain N+1 rules, after the restore and after
# the edits, else the run aborts.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
REPS=${REPS:-7}
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(0 100 1000 10000)
# shellcheck source=benches/common.sh
source benches/common.sh

check_count() { # impl expected-rules
  local got
  case $1 in
    nft) got=$(ip netns exec "$ns" nft list chain ip filter INPUT | grep -cE '( drop| accept|jump USER)$') ;;
    *) got=$(ip netns exec "$ns" "$2" -S INPUT | grep -c '^-A INPUT') ;;
  esac
  [ "$got" = "$3" ] || { echo "self-check failed: $1 holds $got rules, expected $3" >&2; exit 1; }
}

rule='-A INPUT -s 203.0.113.7/32 -p tcp -m tcp --dport 4242 -j DROP'
printf '| impl | N | restore ms | append ms | insert ms | mid ms | replace ms | delete ms | chain ms | user ms | check ms | save ms | list ms | map bytes |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for n in "${sizes[@]}"; do
  gen_rules "$n" > "$work/rules.$n"
  gen_nft "$n" > "$work/rules.$n.nft"
  for impl in ${IMPLS:-bpf legacy nft-compat nft}; do
    drop_ns
    ip netns add "$ns"
    case $impl in
      bpf) ipt=$work/iptables; save=$work/iptables-save; restore=$work/iptables-restore ;;
      legacy) ipt=iptables-legacy; save=iptables-legacy-save; restore=iptables-legacy-restore ;;
      nft-compat) ipt=iptables-nft; save=iptables-nft-save; restore=iptables-nft-restore ;;
      nft) ;;
    esac
    mem=-
    ck=-
    k=$((n / 2 + 1))
    if [ "$impl" = nft ]; then
      r=$(median_ms nft -f "$work/rules.$n.nft")
      check_count nft nft $((n + 2))
      a=$(median_pair_ms "nft add rule ip filter INPUT ip saddr 203.0.113.7 tcp dport 4242 drop" \
        "nft -a list chain ip filter INPUT | awk '/203.0.113.7/ {print \$NF}' | xargs -r -I{} nft delete rule ip filter INPUT handle {}")
      i=$(median_pair_ms "nft insert rule ip filter INPUT ip saddr 203.0.113.7 tcp dport 4242 drop" \
        "nft -a list chain ip filter INPUT | awk '/203.0.113.7/ {print \$NF}' | xargs -r -I{} nft delete rule ip filter INPUT handle {}")
      # the handle of rule k (handles stay when other rules come and go)
      hk=$(ip netns exec "$ns" nft -a list chain ip filter INPUT | grep -E ' (drop|accept) # handle' | sed -n "${k}p" | awk '{print $NF}')
      m=$(median_pair_ms "nft insert rule ip filter INPUT position $hk ip saddr 203.0.113.7 tcp dport 4242 drop" \
        "nft -a list chain ip filter INPUT | awk '/203.0.113.7/ {print \$NF}' | xargs -r -I{} nft delete rule ip filter INPUT handle {}")
      p=$(median_ms nft replace rule ip filter INPUT handle "$hk" ip saddr 203.0.113.8 tcp dport 4243 drop)
      ip netns exec "$ns" nft add rule ip filter INPUT ip saddr 203.0.113.7 tcp dport 4242 drop
      d=$(median_pair_ms "nft -a list chain ip filter INPUT | awk '/203.0.113.7/ {print \$NF}' | xargs -r -I{} nft delete rule ip filter INPUT handle {}" \
        "nft add rule ip filter INPUT ip saddr 203.0.113.7 tcp dport 4242 drop")
      ip netns exec "$ns" sh -c "nft -a list chain ip filter INPUT | awk '/203.0.113.7/ {print \$NF}' | xargs -r -I{} nft delete rule ip filter INPUT handle {}"
      c=$(median_pair_ms "nft add chain ip filter BENCHX" "nft delete chain ip filter BENCHX")
      u=$(median_pair_ms "nft add rule ip filter USER ip saddr 203.0.113.7 tcp dport 4242 drop" \
        "nft -a list chain ip filter USER | awk '/203.0.113.7/ {print \$NF}' | xargs -r -I{} nft delete rule ip filter USER handle {}")
      check_count nft nft $((n + 2))
      s=$(median_ms nft list ruleset)
      l=$(median_ms nft list table ip filter)
    else
      r=$(median_ms sh -c "$restore < $work/rules.$n")
      check_count "$impl" "$ipt" $((n + 2))
      a=$(median_pair_ms "$ipt $rule" "$ipt ${rule/-A/-D}")
      i=$(median_pair_ms "$ipt ${rule/-A INPUT/-I INPUT 1}" "$ipt -D INPUT 1")
      m=$(median_pair_ms "$ipt ${rule/-A INPUT/-I INPUT $k}" "$ipt -D INPUT $k")
      p=$(median_ms "$ipt" -R INPUT "$k" -s 203.0.113.8/32 -p tcp -m tcp --dport 4243 -j DROP)
      ip netns exec "$ns" $ipt $rule
      d=$(median_pair_ms "$ipt ${rule/-A/-D}" "$ipt $rule")
      ip netns exec "$ns" $ipt ${rule/-A/-D}
      c=$(median_pair_ms "$ipt -N BENCHX" "$ipt -X BENCHX")
      u=$(median_pair_ms "$ipt ${rule/-A INPUT/-A USER}" "$ipt ${rule/-A INPUT/-D USER}")
      ip netns exec "$ns" $ipt -C INPUT -j USER || { echo "self-check failed: $impl does not find -j USER" >&2; exit 1; }
      ck=$(median_ms "$ipt" -C INPUT -j USER)
      check_count "$impl" "$ipt" $((n + 2))
      s=$(median_ms "$save")
      l=$(median_ms "$ipt" -L -n)
      if [ "$impl" = bpf ]; then
        dir=$(ip netns exec "$ns" "$bin" --pin-dir 2>/dev/null || true)
        if [ -n "$dir" ]; then
          # the pinned maps, and the image maps held by bpfipt_tables (not pinned themselves)
          mem=$( (for p in "$dir"/bpfipt_*; do bpftool -j map show pinned "$p" 2>/dev/null || true; done
            bpftool -j map dump pinned "$dir/bpfipt_tables" 2>/dev/null |
              python3 -c 'import sys, json; [print(int.from_bytes(bytes(int(b, 16) for b in e["value"]), "little")) for e in json.load(sys.stdin)]' |
              while read -r id; do bpftool -j map show id "$id"; echo; done) |
            python3 -c 'import sys, json; print(sum(json.loads(l).get("bytes_memlock", 0) for l in sys.stdin if l.strip()))')
        fi
      fi
    fi
    printf '| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$impl" "$n" "$r" "$a" "$i" "$m" "$p" "$d" "$c" "$u" "$ck" "$s" "$l" "$mem"
  done
done

#!/usr/bin/env bash
# Chain-command benchmark: how long the commands that edit chains rather than rules take,
# side by side for bpf-iptables, iptables-legacy and iptables-nft, in one run on this machine.
#
#   benches/chain_commands.sh [N ...]       (as root; default N = 0 10000;
#                                            IMPLS="bpf legacy nft-compat" selects columns)
#
# For each N, each implementation gets a fresh network namespace holding the N filter INPUT
# rules of benches/control_plane.sh (a jump to the empty chain USER last), a chain SPARE with
# one rule that nothing jumps to, an empty chain EMPTY, and a chain DK with two rules that
# FORWARD jumps to (as Docker's chains), and we time, as whole processes (median of REPS runs,
# each undone untimed, in ms):
#   rename      -E SPARE SPARE2 (nothing jumps to it)
#   flush       -F SPARE (nothing jumps to it)
#   delete      -X EMPTY
#   flush-dk    -F DK (FORWARD jumps to it; Docker flushes its chains)
#   zero        -Z
#   zero-rule   -Z INPUT 1
#   flush-all   -F (every rule; undone by restoring the ruleset again). With N = 0 the
#               ruleset is left empty: what emptying a ruleset, and filling it again, costs.
# Each point checks itself: INPUT holds N+2 rules and DK two after the edits, else the run
# aborts.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
REPS=${REPS:-7}
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(0 10000)
# shellcheck source=benches/common.sh
source benches/common.sh

count() { # ipt chain -> its rules
  ip netns exec "$ns" "$1" -S "$2" | grep -c "^-A $2 " || true
}
self_check() { # impl ipt n
  local input dk
  input=$(count "$2" INPUT) dk=$(count "$2" DK)
  [ "$input" = $(($3 + 2)) ] && [ "$dk" = 2 ] ||
    { echo "self-check failed: $1 holds $input INPUT rules and $dk in DK, expected $(($3 + 2)) and 2" >&2; exit 1; }
}

printf '| impl | N | rename ms | flush ms | delete ms | flush-dk ms | zero ms | zero-rule ms | flush-all ms |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for n in "${sizes[@]}"; do
  gen_rules "$n" > "$work/rules.$n"
  for impl in ${IMPLS:-bpf legacy nft-compat}; do
    drop_ns
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    case $impl in
      bpf) ipt=$work/iptables; restore=$work/iptables-restore ;;
      legacy) ipt=iptables-legacy; restore=iptables-legacy-restore ;;
      nft-compat) ipt=iptables-nft; restore=iptables-nft-restore ;;
      *) echo "unknown implementation $impl" >&2; exit 1 ;;
    esac
    setup="$restore < $work/rules.$n && $ipt -N SPARE && $ipt -A SPARE -j ACCEPT && $ipt -N EMPTY && $ipt -N DK &&
      $ipt -A DK -p tcp --dport 5 -j DROP && $ipt -A DK -s 192.0.2.1 -j ACCEPT && $ipt -A FORWARD -j DK"
    ip netns exec "$ns" sh -c "$setup"
    self_check "$impl" "$ipt" "$n"
    e=$(median_pair_ms "$ipt -E SPARE SPARE2" "$ipt -E SPARE2 SPARE")
    f=$(median_pair_ms "$ipt -F SPARE" "$ipt -A SPARE -j ACCEPT")
    x=$(median_pair_ms "$ipt -X EMPTY" "$ipt -N EMPTY")
    fd=$(median_pair_ms "$ipt -F DK" "$ipt -A DK -p tcp --dport 5 -j DROP; $ipt -A DK -s 192.0.2.1 -j ACCEPT")
    z=$(median_pair_ms "$ipt -Z" "")
    zr=$(median_pair_ms "$ipt -Z INPUT 1" "")
    self_check "$impl" "$ipt" "$n"
    fa=$(median_pair_ms "$ipt -F" "$ipt -X; sh -c '$setup'")
    self_check "$impl" "$ipt" "$n"
    printf '| %s | %d | %s | %s | %s | %s | %s | %s | %s |\n' "$impl" "$n" "$e" "$f" "$x" "$fd" "$z" "$zr" "$fa"
  done
done

#!/usr/bin/env bash
# Docker starting on a host that already has a firewall: the filter-table commands dockerd
# v27 runs for its default bridge and one published port (benches/data/docker-filter-
# commands.txt, from the shared ruleset material's dockerd-v27-default-bridge-commands.txt,
# its nat-table commands left out: bpf-iptables enforces the filter table only), run one after
# another as dockerd runs them (`-nL` and `-C` probes, `-N`, `-I` and `-A`, jumps included),
# side by side for bpf-iptables, iptables-legacy and iptables-nft.
#
#   benches/docker_sequence.sh [N ...]      (as root; default N = 0 1000 10000; REPS=5;
#                                            IMPLS="bpf legacy nft-compat" selects rows)
#
# For each N and implementation, each repetition gets a fresh network namespace holding N
# filter INPUT rules (benches/common.sh), then the sequence runs in it, each command a
# whole process timed with bash's EPOCHREALTIME inside the namespace. Printed: the medians
# over REPS of the whole sequence (ms) and of its slowest command, and that command (of the
# last repetition, without Docker's `--wait -t filter`).
# Self-check: every implementation must end with the same filter table (iptables-save
# without counters and comments), else the run aborts.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
REPS=${REPS:-5}
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(0 1000 10000)
# shellcheck source=benches/common.sh
source benches/common.sh
cmds=$PWD/benches/data/docker-filter-commands.txt

printf '| impl | N | sequence ms | slowest command ms | slowest command |\n|---|---:|---:|---:|---|\n'
for n in "${sizes[@]}"; do
  gen_rules "$n" > "$work/rules.$n"
  want=
  for impl in ${IMPLS:-bpf legacy nft-compat}; do
    case $impl in
      bpf) ipt=$work/iptables; save=$work/iptables-save; restore=$work/iptables-restore ;;
      legacy) ipt=iptables-legacy; save=iptables-legacy-save; restore=iptables-legacy-restore ;;
      nft-compat) ipt=iptables-nft; save=iptables-nft-save; restore=iptables-nft-restore ;;
    esac
    totals=() worsts=()
    for _ in $(seq "$REPS"); do
      drop_ns
      ip netns add "$ns"
      ip netns exec "$ns" "$restore" < "$work/rules.$n"
      # one line per repetition: total µs, slowest µs, slowest command
      read -r total worst which < <(ip netns exec "$ns" bash -c '
        ipt=$1 total=0 worst=0 which=
        while read -r -a args; do
          t0=${EPOCHREALTIME/./}; "$ipt" "${args[@]}" >/dev/null 2>&1 || true; t1=${EPOCHREALTIME/./}
          d=$(( t1 - t0 )); total=$(( total + d ))
          if [ "$d" -gt "$worst" ]; then worst=$d which="${args[*]}"; fi
        done < "$2"
        echo "$total $worst $which"' _ "$ipt" "$cmds")
      totals+=("$total") worsts+=("$worst")
    done
    got=$(ip netns exec "$ns" "$save" -t filter | grep -v '^#')
    if [ -z "$want" ]; then
      want=$got
    elif [ "$got" != "$want" ]; then
      echo "self-check failed: $impl ends with another filter table than ${IMPLS%% *}:" >&2
      diff <(echo "$want") <(echo "$got") >&2 || true
      exit 1
    fi
    median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]/1000}'; }
    printf '| %s | %d | %s | %s | %s |\n' "$impl" "$n" "$(median "${totals[@]}")" "$(median "${worsts[@]}")" \
      "$(sed 's/--wait //; s/-t filter //' <<< "$which")"
  done
done

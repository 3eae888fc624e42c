#!/usr/bin/env bash
# Differential verification against the kernel's netfilter for as long as asked: random
# INPUT, FORWARD and OUTPUT rulesets and crafted packets through twin firewalls (bpf-iptables and
# iptables-legacy), verdicts and counters compared; mismatches shrunk and printed.
#
#   scripts/differential.sh [RULESETS] [PACKETS_PER_RULESET] [SEED]    (as root)
#
# Defaults: 1000 rulesets x 100 packets with a fresh seed (printed; pass it back to replay).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
export BPFIPT_DIFF_RULESETS=${1:-1000}
export BPFIPT_DIFF_PACKETS=${2:-100}
export BPFIPT_DIFF_SEED=${3:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}
echo "seed $BPFIPT_DIFF_SEED: $BPFIPT_DIFF_RULESETS rulesets x $BPFIPT_DIFF_PACKETS packets"
exec cargo test --release --test differential -- --nocapture

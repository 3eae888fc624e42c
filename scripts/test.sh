#!/usr/bin/env bash
# Runs the whole bpf-iptables test suite and prints a summary at the end.
#
#   scripts/test.sh            (as root; without root the namespace tests skip with a message)
#
# On a fresh Debian 12 it first installs what is missing: a Rust toolchain through rustup (only
# when no cargo is found: Debian's own is too old), a C linker, and the packages listed in
# scripts/deps.sh (clang llvm make pkg-config libelf-dev zlib1g-dev iproute2 iptables nftables
# bpftool ethtool). It needs no terminal and no stdin (CI=true is fine). Then:
#   1. cargo test --workspace: unit tests, the .t conformance runner, CLI probe replays, dump
#      round trips against iptables-legacy, parser fuzzing, compiler/datapath/end-to-end tests;
#   2. the .t runner once more against real iptables-legacy, as a check of the runner itself.
# Reports for failing conformance lines and dumps: target/conformance/.
# Environment: BPFIPT_TEST_TIMEOUT (default 40m) bounds each cargo run, so a hang cannot stall CI.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
exec </dev/null

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  is_root || { echo "warning: cannot install $* without root" >&2; return 0; }
  echo "installing: $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- toolchain ---------------------------------------------------------------------------------
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1 && is_root; then
  command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
  echo "installing Rust (rustup, stable, minimal profile)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# Rust links through `cc`, which clang alone does not provide on Debian.
command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

if ! is_root; then
  echo "note: not root: tests that need network namespaces, BPF or iptables-legacy will skip"
fi

# --- tests -------------------------------------------------------------------------------------
mkdir -p target/conformance
rm -f target/conformance/report.txt target/conformance/report-iptables-legacy.txt target/conformance/dumps-report.txt
log=target/test.log
limit=${BPFIPT_TEST_TIMEOUT:-40m}

echo "== cargo test --workspace"
set +e
timeout -k 30s "$limit" cargo test --workspace --no-fail-fast -- --show-output 2>&1 | tee "$log"
main_rc=${PIPESTATUS[0]}
echo "== .t runner self-check against iptables-legacy"
BPFIPT_CONFORMANCE_BIN=iptables-legacy timeout -k 30s "$limit" \
  cargo test --test conformance iptables_t_specs -- --show-output 2>&1 | tee -a "$log"
oracle_rc=${PIPESTATUS[0]}
set -e

# --- summary -----------------------------------------------------------------------------------
sum_field() { grep -E '^test result:' "$log" | grep -oE "[0-9]+ $1" | awk '{s+=$1} END {print s+0}'; }
echo
echo "================================ summary ================================"
echo "tests: $(sum_field passed) passed, $(sum_field failed) failed, $(sum_field ignored) ignored"
failing=$(grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/  \1/' | sort -u || true)
[ -n "$failing" ] && { echo "failing tests:"; echo "$failing"; }
grep -E '^error(\[E[0-9]+\]: |: could not compile)' "$log" | sort -u | head -20 | sed 's/^/  build: /' || true
skipped=$(grep -E '^skipped: ' "$log" | sort | uniq -c | sed 's/^ */  /' || true)
[ -n "$skipped" ] && { echo "skipped:"; echo "$skipped"; }
for r in target/conformance/report.txt target/conformance/report-iptables-legacy.txt target/conformance/dumps-report.txt; do
  [ -f "$r" ] && echo "$(grep -E '^TOTAL: ' "$r" | sed 's/^TOTAL: //')   [$r]"
done
if [ "$main_rc" = 124 ] || [ "$oracle_rc" = 124 ]; then
  echo "a cargo run hit the $limit timeout (BPFIPT_TEST_TIMEOUT)"
fi
# Pinned state of namespaces the tests created and removed should be gone already; remove and
# count whatever a test left behind, so leaks show and never accumulate on the machine.
if is_root && [ -x target/debug/bpf-iptables ]; then
  echo "pinned state left by dead namespaces (removed now): $(target/debug/bpf-iptables --gc | wc -l)"
fi
echo "time: $(( $(date +%s) - started ))s"
if [ "$main_rc" = 0 ] && [ "$oracle_rc" = 0 ]; then
  echo "RESULT: PASS"
else
  echo "RESULT: FAIL (cargo test exit $main_rc, runner self-check exit $oracle_rc)"
  exit 1
fi

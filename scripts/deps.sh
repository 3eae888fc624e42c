#!/usr/bin/env bash
# Installs what building and testing bpf-iptables needs on Debian 12, if missing. Sourced by
# scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail

need_pkgs=()
for pair in clang:clang llc:llvm make:make pkg-config:pkg-config ip:iproute2 \
            iptables-legacy:iptables nft:nftables bpftool:bpftool flock:util-linux \
            python3:python3 ping:iputils-ping ethtool:ethtool taskset:util-linux; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
for pkg in libelf-dev zlib1g-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "bpf-iptables needs Rust >= 1.82 (Debian 12's cargo is too old): install it with rustup," >&2
  echo "  curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y" >&2
  exit 1
fi

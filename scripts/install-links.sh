#!/usr/bin/env bash
# Installs bpf-iptables and makes it answer to the names iptables, iptables-save and
# iptables-restore.
#
#   scripts/install-links.sh [--bin PATH] [--prefix DIR] [--path-links DIR | --alternatives]
#
#   --bin PATH          the binary to install (default: target/release/bpf-iptables)
#   --prefix DIR        where bpf-iptables{,-save,-restore} go (default: /usr/local/sbin)
#   --path-links DIR    (default mode, DIR defaults to the prefix) put iptables, iptables-save,
#                       iptables-restore links in DIR; /usr/local/sbin comes before /usr/sbin in
#                       root's PATH, so callers that look iptables up in PATH (Docker,
#                       kube-proxy, fail2ban, scripts) get bpf-iptables
#   --alternatives      register with Debian's update-alternatives (the mechanism Debian uses for
#                       legacy/nft) and select it, so /usr/sbin/iptables itself is bpf-iptables:
#                       needed for callers with hard-coded /usr/sbin paths (ufw, firewalld)
#
# Undo with scripts/uninstall-links.sh (same options).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release/bpf-iptables
prefix=/usr/local/sbin
mode=path
links_dir=
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --path-links) mode=path; links_dir=${2:-}; shift; [ -n "$links_dir" ] && shift ;;
    --alternatives) mode=alternatives; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
links_dir=${links_dir:-$prefix}

[ -x "$bin" ] || { echo "no binary at $bin: run 'cargo build --release' first" >&2; exit 1; }
install -d "$prefix"
install -m 0755 "$bin" "$prefix/bpf-iptables"
ln -sf bpf-iptables "$prefix/bpf-iptables-save"
ln -sf bpf-iptables "$prefix/bpf-iptables-restore"

case "$mode" in
  path)
    install -d "$links_dir"
    for name in iptables iptables-save iptables-restore; do
      ln -sf "$prefix/bpf-iptables" "$links_dir/$name"
    done
    echo "installed: $links_dir/{iptables,iptables-save,iptables-restore} -> $prefix/bpf-iptables"
    ;;
  alternatives)
    update-alternatives --install /usr/sbin/iptables iptables "$prefix/bpf-iptables" 5 \
      --slave /usr/sbin/iptables-restore iptables-restore "$prefix/bpf-iptables-restore" \
      --slave /usr/sbin/iptables-save iptables-save "$prefix/bpf-iptables-save"
    update-alternatives --set iptables "$prefix/bpf-iptables"
    echo "selected bpf-iptables as the 'iptables' alternative (/usr/sbin/iptables*)"
    ;;
esac

#!/usr/bin/env bash
# Undoes scripts/install-links.sh: removes the iptables links (and the alternative, restoring
# Debian's automatic choice), then the installed binary.
#
#   scripts/uninstall-links.sh [--prefix DIR] [--path-links DIR]
set -euo pipefail
prefix=/usr/local/sbin
links_dir=
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --path-links) links_dir=$2; shift 2 ;;
    --alternatives) shift ;;  # accepted for symmetry: alternatives are always cleaned up
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
links_dir=${links_dir:-$prefix}

for name in iptables iptables-save iptables-restore; do
  link="$links_dir/$name"
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$prefix/bpf-iptables" ]; then
    rm -f "$link"
  fi
done
if command -v update-alternatives >/dev/null &&
   update-alternatives --list iptables 2>/dev/null | grep -qx "$prefix/bpf-iptables"; then
  update-alternatives --remove iptables "$prefix/bpf-iptables"
  update-alternatives --auto iptables
fi
rm -f "$prefix/bpf-iptables" "$prefix/bpf-iptables-save" "$prefix/bpf-iptables-restore"
echo "removed bpf-iptables links and binary from $prefix"

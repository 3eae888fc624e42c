#!/usr/bin/env bash
# The main job, end to end: installs what is missing, builds bpf-iptables, creates a sandbox of
# three network namespaces (client -> firewall/router -> server, veth pairs, 198.18.0.0/15),
# loads examples/firewall.rules into the firewall namespace with bpf-iptables-restore, sends real
# traffic (ping, TCP, UDP) and shows which packets the eBPF datapath let through, dropped or
# rejected, then the rule counters. Everything it creates is removed on exit, also on failure.
#
#   scripts/demo.sh            (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (it creates network namespaces)" >&2; exit 1; }
source scripts/deps.sh

echo "== building (cargo build --release)"
cargo build --release --quiet
bin=$PWD/target/release/bpf-iptables

tag=$$
C=bpfipt-demo-client-$tag FW=bpfipt-demo-fw-$tag S=bpfipt-demo-server-$tag
links=$(mktemp -d)
for n in iptables iptables-save iptables-restore; do ln -s "$bin" "$links/$n"; done
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  # Drop the firewall's state (detach programs, remove its pins), then the namespaces.
  ip netns exec "$FW" "$bin" --reset >/dev/null 2>&1
  for ns in "$C" "$FW" "$S"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$links"
}
trap cleanup EXIT

fw() { ip netns exec "$FW" env PATH="$links:$PATH" "$@"; }

echo "== sandbox: $C (198.18.0.2, .66) -> $FW (198.18.0.1 | 198.18.1.1) -> $S (198.18.1.2)"
for ns in "$C" "$FW" "$S"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add fw-c netns "$FW" type veth peer name eth0 netns "$C"
ip link add fw-s netns "$FW" type veth peer name eth0 netns "$S"
ip -n "$C" addr add 198.18.0.2/24 dev eth0
ip -n "$C" addr add 198.18.0.66/24 dev eth0
ip -n "$FW" addr add 198.18.0.1/24 dev fw-c
ip -n "$FW" addr add 198.18.1.1/24 dev fw-s
ip -n "$S" addr add 198.18.1.2/24 dev eth0
for pair in "$C eth0" "$FW fw-c" "$FW fw-s" "$S eth0"; do
  set -- $pair; ip -n "$1" link set "$2" up
  ip netns exec "$1" ethtool -K "$2" gro on >/dev/null 2>&1 || true
done
ip -n "$C" route add default via 198.18.0.1
ip -n "$S" route add default via 198.18.1.1
ip netns exec "$FW" sysctl -qw net.ipv4.ip_forward=1

# Listeners: ssh-like port 22 and 23 on the firewall, 8080 and 9090 on the server, UDP 53 on fw.
serve() { ip netns exec "$1" python3 -c '
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b"hello\n"); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=tcp, args=(int(p),), daemon=True).start()
threading.Event().wait()' "${@:2}" & pids+=($!); }
serve "$FW" 22 23 80
serve "$S" 8080 9090
sleep 0.5

echo "== loading examples/firewall.rules into $FW with iptables-restore"
fw iptables-restore < examples/firewall.rules
fw iptables -S

# try NAME SRC-ADDR HOST PORT EXPECT: a TCP connection from the client, classified as
# connected / refused (RST or ICMP error) / timeout (dropped).
try_tcp() {
  local what=$1 src=$2 host=$3 port=$4 expect=$5 got
  got=$(ip netns exec "$C" python3 -c '
import socket, sys
s = socket.socket(); s.settimeout(1.5); s.bind((sys.argv[1], 0))
try:
    s.connect((sys.argv[2], int(sys.argv[3]))); print("connected")
except ConnectionRefusedError: print("refused")
except OSError as e: print("timeout" if isinstance(e, socket.timeout) else "error:" + str(e.errno))' "$src" "$host" "$port")
  report "$what" "$expect" "$got"
}
try_ping() {
  local what=$1 host=$2 expect=$3 got
  if ip netns exec "$C" ping -c1 -W1 -q "$host" >/dev/null 2>&1; then got=replied; else got=no-reply; fi
  report "$what" "$expect" "$got"
}
try_udp() {
  local what=$1 host=$2 port=$3 expect=$4 got
  got=$(ip netns exec "$C" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
s.connect((sys.argv[1], int(sys.argv[2]))); s.send(b"x")
try:
    s.recv(10); print("answered")
except ConnectionRefusedError: print("unreachable")
except socket.timeout: print("timeout")' "$host" "$port")
  report "$what" "$expect" "$got"
}
failures=0
report() {
  local mark=ok
  [ "$2" = "$3" ] || { mark=UNEXPECTED; failures=$((failures + 1)); }
  printf '  %-58s %-10s (expected %s) %s\n' "$1" "$3" "$2" "$mark"
}

# LOG lines: a follower prints them (as the kernel's LOG target would) into a file we show later.
ip netns exec "$FW" "$bin" --log-follow --stdout > "$links/log.txt" 2>&1 & pids+=($!)
sleep 0.2

echo "== traffic"
try_ping "client -> firewall ping (INPUT accepts echo-request)" 198.18.0.1 replied
try_tcp  "client -> firewall tcp/22 (INPUT accepts)" 198.18.0.2 198.18.0.1 22 connected
try_tcp  "client -> firewall tcp/23 (INPUT REJECT tcp-reset)" 198.18.0.2 198.18.0.1 23 refused
try_tcp  "client -> firewall tcp/80 (INPUT policy DROP)" 198.18.0.2 198.18.0.1 80 timeout
try_udp  "client -> firewall udp/53 (INPUT REJECT port-unreach)" 198.18.0.1 53 unreachable
try_ping "client -> server ping (FORWARD via CLIENTS chain)" 198.18.1.2 replied
try_tcp  "client -> server tcp/8080 (FORWARD accepts)" 198.18.0.2 198.18.1.2 8080 connected
try_tcp  "client -> server tcp/9090 (FORWARD: LOG, then policy DROP)" 198.18.0.2 198.18.1.2 9090 timeout
try_tcp  "client .66 -> server tcp/8080 (CLIENTS drops .66)" 198.18.0.66 198.18.1.2 8080 timeout

echo "== LOG lines (bpf-iptables --log-follow --stdout; without --stdout they go to the kernel log)"
sleep 0.3
sed 's/^/  /' "$links/log.txt"
echo "== counters (iptables -L -n -v)"
fw iptables -L -n -v
if [ "$failures" -gt 0 ]; then
  echo "== $failures unexpected outcome(s)"; exit 1
fi
echo "== all outcomes as expected"

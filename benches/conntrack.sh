#!/usr/bin/env bash
# Connection-tracking benchmark: new TCP connections per second through a firewall host whose
# FORWARD chain is the classic stateful script, for bpf-iptables and iptables-legacy (kernel
# nf_conntrack) side by side in one run.
#
#   benches/conntrack.sh [N ...]     (as root; default N = 0 1000 10000; REPS, SECONDS_PER_RUN)
#
# Topology (namespaces created and removed here): client 198.18.1.2 -- fw (forwarding) --
# server 198.18.2.2. FORWARD: policy DROP; rule 1 `-m conntrack --ctstate ESTABLISHED,RELATED
# -j ACCEPT`; N rules that never match; last `-p tcp --dport 80 -m conntrack --ctstate NEW
# -j ACCEPT`. So the SYN of each connection walks all N rules, every later packet is accepted
# by rule 1. Two client processes connect and close in a loop for SECONDS_PER_RUN seconds.
# Reported: connections/s (median of REPS runs, and min..max), and the fw's softirq CPU time
# per connection (from /proc/stat, machine-wide, so it includes client and server stacks).
# Then the per-packet cost of an established flow with the same ruleset: a UDP echo exchange
# (one request answered, so the flow is ESTABLISHED), then STREAM_PACKETS datagrams each way;
# softirq ns per forwarded packet (again machine-wide: veths and both end hosts included).
# Self-check: every run must complete connections, and the NEW rule's counter must equal the
# connections made (one SYN each; see the 0.1% allowance below), else the run is marked FAIL.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
REPS=${REPS:-3}
SECS=${SECONDS_PER_RUN:-4}
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(0 1000 10000)
cargo build --release --quiet
bin=$PWD/target/release/bpf-iptables
work=$(mktemp -d)
p=bpfipt-ctb-$$
for n in iptables iptables-save iptables-restore; do ln -s "$bin" "$work/$n"; done
server_pid=
teardown() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  ip netns exec "$p-f" "$bin" --reset >/dev/null 2>&1 || true
  for x in c f s; do ip netns del "$p-$x" 2>/dev/null || true; done
}
trap 'teardown; rm -rf "$work"' EXIT

setup() {
  for x in c f s; do ip netns add "$p-$x"; ip -n "$p-$x" link set lo up; done
  ip link add c0 netns "$p-c" type veth peer name f0 netns "$p-f"
  ip link add s0 netns "$p-s" type veth peer name f1 netns "$p-f"
  ip -n "$p-c" addr add 198.18.1.2/24 dev c0; ip -n "$p-c" link set c0 up
  ip -n "$p-f" addr add 198.18.1.1/24 dev f0; ip -n "$p-f" link set f0 up
  ip -n "$p-f" addr add 198.18.2.1/24 dev f1; ip -n "$p-f" link set f1 up
  ip -n "$p-s" addr add 198.18.2.2/24 dev s0; ip -n "$p-s" link set s0 up
  ip -n "$p-c" route add default via 198.18.1.1
  ip -n "$p-s" route add default via 198.18.2.1
  ip netns exec "$p-f" sysctl -qw net.ipv4.ip_forward=1
  # Many short connections: reuse TIME_WAIT ports on the client.
  ip netns exec "$p-c" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="10000 65000"
  ip netns exec "$p-s" python3 -c '
import socket, threading
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7))
    while True:
        d, a = u.recvfrom(2048); u.sendto(d, a)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()
' &
  server_pid=$!
  sleep 0.3
}

gen_rules() { # N
  python3 - "$1" <<'PY'
import sys
n = int(sys.argv[1])
print("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]")
print("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
for i in range(n):
    a, b = divmod(i, 250)
    print(f"-A FORWARD -s 10.{a // 250}.{a % 250}.{b + 1}/32 -p tcp -m tcp --dport {1 + i % 60000} -j DROP")
print("-A FORWARD -p tcp -m tcp --dport 80 -m conntrack --ctstate NEW -j ACCEPT")
print("-A FORWARD -p udp -m udp --dport 7 -m conntrack --ctstate NEW -j ACCEPT")
print("COMMIT")
PY
}

softirq_ticks() { awk '/^cpu / {print $8}' /proc/stat; }

# One run: prints "connections softirq_ticks".
run_clients() {
  local t0 t1 conns
  t0=$(softirq_ticks)
  conns=$(ip netns exec "$p-c" python3 - "$SECS" <<'PY'
import socket, sys, time, multiprocessing as mp
def worker(secs, q):
    n, end = 0, time.monotonic() + secs
    while time.monotonic() < end:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        try:
            s.connect(("198.18.2.2", 80)); n += 1
        except OSError:
            pass
        s.close()
    q.put(n)
secs = float(sys.argv[1]); q = mp.Queue()
ps = [mp.Process(target=worker, args=(secs, q)) for _ in range(2)]
for p in ps: p.start()
for p in ps: p.join()
print(sum(q.get() for _ in ps))
PY
)
  t1=$(softirq_ticks)
  echo "$conns $((t1 - t0))"
}

new_rule_packets() { # ipt-binary
  ip netns exec "$p-f" "$1" -L FORWARD -v -x -n | awk '/ctstate NEW/ && /dpt:80/ {print $1}'
}

# One established UDP stream: prints the packets forwarded (both directions).
STREAM=${STREAM_PACKETS:-200000}
run_stream() {
  ip netns exec "$p-c" python3 - "$STREAM" <<'PY'
import socket, sys
n = int(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(1)
u.connect(("198.18.2.2", 7)); u.send(b"hello"); u.recv(100)   # now ESTABLISHED
u.setblocking(False)
sent = got = 0
while sent < n:
    try:
        u.send(b"x" * 64); sent += 1
    except BlockingIOError:
        pass
    try:
        while True:
            u.recv(100); got += 1
    except BlockingIOError:
        pass
print(sent + got)
PY
}

hz=$(getconf CLK_TCK)
stream_rows=()
printf '| impl | N | conn/s median [min..max] | softirq us/conn | self-check |\n|---|---:|---:|---:|---|\n'
for n in "${sizes[@]}"; do
  gen_rules "$n" > "$work/rules.$n"
  for impl in bpf legacy; do
    teardown; server_pid=
    setup
    case $impl in
      bpf) ipt=$work/iptables; restore=$work/iptables-restore ;;
      legacy) ipt=iptables-legacy; restore=iptables-legacy-restore ;;
    esac
    ip netns exec "$p-f" "$restore" "$work/rules.$n"
    rates=() us=() check=ok
    for _ in $(seq "$REPS"); do
      ip netns exec "$p-f" "$ipt" -Z FORWARD
      read -r conns ticks < <(run_clients)
      syns=$(new_rule_packets "$ipt")
      # Each connection's SYN is counted by the NEW rule. A client port freed by one worker's
      # RST and reused at once by the other can race on two CPUs: the SYN is then classified
      # on the entry as it was before the RST (ESTABLISHED, so rule 1), a handful per 100 000.
      if [ "$conns" -le 0 ] || [ $((syns * 1000)) -lt $((conns * 999)) ]; then check="FAIL ($conns conns, $syns SYNs)"; fi
      rates+=("$(python3 -c "print(round($conns / $SECS))")")
      us+=("$(python3 -c "print(round($ticks * 1e6 / $hz / max($conns, 1), 1))")")
    done
    med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "%s [%s..%s]", a[int((NR+1)/2)], a[1], a[NR]}'; }
    printf '| %s | %d | %s | %s | %s |\n' "$impl" "$n" "$(med "${rates[@]}")" "$(printf '%s\n' "${us[@]}" | sort -n | sed -n "$(( (REPS + 1) / 2 ))p")" "$check"
    ns_pkt=() scheck=ok
    for _ in $(seq "$REPS"); do
      ip netns exec "$p-f" "$ipt" -Z FORWARD
      t0=$(softirq_ticks)
      pkts=$(run_stream)
      t1=$(softirq_ticks)
      est=$(ip netns exec "$p-f" "$ipt" -L FORWARD 1 -v -x -n | awk '{print $1}')
      # Self-check: the ESTABLISHED rule saw (nearly) every packet of the stream.
      [ "$est" -ge $((pkts * 99 / 100)) ] || scheck="FAIL (stream: $pkts packets, rule 1 counted $est)"
      ns_pkt+=("$(python3 -c "print(round(($t1 - $t0) * 1e9 / $hz / max($pkts, 1)))")")
    done
    stream_rows+=("| $impl | $n | $(med "${ns_pkt[@]}") | $scheck |")
  done
done
printf '\nEstablished stream (UDP, both directions): softirq ns per forwarded packet\n\n'
printf '| impl | N | ns/packet median [min..max] | self-check |\n|---|---:|---:|---|\n'
printf '%s\n' "${stream_rows[@]}"

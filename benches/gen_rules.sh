# Sourced by the benches: gen_rules N prints an iptables-restore input of N filter INPUT
# rules that match no bench traffic (distinct source/destination /32s and ports), a rule that
# does (UDP from 198.18.0.2 to port 9), and a jump to the empty user chain USER.
gen_rules() { # N -> iptables-restore input
  local n=$1
  python3 - "$n" <<'PY'
import sys
n = int(sys.argv[1])
print("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:USER - [0:0]")
for i in range(n):
    a, b = divmod(i, 250)
    print(f"-A INPUT -s 10.{a // 250}.{a % 250}.{b + 1}/32 -d 172.16.{a % 250}.{b + 1}/32 "
          f"-p tcp -m tcp --dport {1 + i % 60000} -j DROP")
print("-A INPUT -s 198.18.0.2/32 -p udp -m udp --dport 9 -j ACCEPT")
print("-A INPUT -j USER")
print("COMMIT")
PY
}

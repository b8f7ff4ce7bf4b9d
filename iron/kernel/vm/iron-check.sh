# CI check: cpu.iron.stat moves when UDP flows over veth from cgroup a to a receiver in cgroup b,
# does not move with kernel.sched_iron=0, and a throttled receiver's packets are dropped early and
# it is not left throttled once the traffic stops.
. /bin/iron-lib.sh
check() { name=$1; ok=$2; shift 2; result type=check name=$name ok=$ok "$@"; }
if ! have_iron; then check patched 0 reason=no_kernel.sched_iron; exit 0; fi
check patched 1
mkgroup a 50000
mkgroup b 50000
veth 1
[ -e /cgroup/b/cpu.iron.stat ] && check interface 1 || check interface 0 reason=no_cpu.iron.stat
flow() { # secs
  ingroup b /bin/ip netns exec ns1 iron-bench udp-recv --bind 10.99.1.2:9000 --secs $(($1 + 1)) > /tmp/recv.out &
  rp=$!
  sleep 0.5
  ingroup a iron-bench udp-send --to 10.99.1.2:9000 --size 1000 --secs $1 > /tmp/send.out
  wait $rp
}
c0=$(stat b charged_usec); p0=$(stat b rx_packets)
flow 2
c1=$(stat b charged_usec); p1=$(stat b rx_packets)
[ "$c1" -gt "$c0" ] && [ "$p1" -gt "$p0" ] && ok=1 || ok=0
check stat_moves $ok charged_usec=$((c1 - c0)) rx_packets=$((p1 - p0)) $(cat /tmp/recv.out) $(cat /tmp/send.out)
sysctl -w kernel.sched_iron=0 >/dev/null
flow 1
c2=$(stat b charged_usec); p2=$(stat b rx_packets)
[ "$c2" -eq "$c1" ] && [ "$p2" -eq "$p1" ] && ok=1 || ok=0
check off_is_off $ok charged_usec=$((c2 - c1)) $(cat /tmp/recv.out)
sysctl -w kernel.sched_iron=1 >/dev/null
bind 1 b
grep -q vb1 /cgroup/b/cpu.iron.queue && ok=1 || ok=0
check queue_bound $ok queue="$(cat /cgroup/b/cpu.iron.queue)"
echo "5000 100000" > /cgroup/b/cpu.max
d0=$(stat b dropped)
flow 2
d1=$(stat b dropped)
[ "$d1" -gt "$d0" ] && ok=1 || ok=0
check throttled_dropped $ok dropped=$((d1 - d0)) debt_usec=$(stat b debt_usec) $(cat /tmp/recv.out)
i=0
while [ "$(stat b throttled)" != 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ "$(stat b throttled)" = 0 ] && ok=1 || ok=0
check unthrottled_after $ok waited_ms=$((i * 100)) debt_usec=$(stat b debt_usec)
if echo nosuchdev > /cgroup/b/cpu.iron.queue 2>/dev/null; then ok=0; else ok=1; fi
check bad_queue_rejected $ok

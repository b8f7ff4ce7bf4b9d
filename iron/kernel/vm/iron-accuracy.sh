# CPU-limit accuracy (dissertation Fig 2.14): 3 containers at 30 % of CPU 0 each, one burning CPU,
# two sending UDP through an HTB rate limiter (whose dequeue runs in the TX softirq). CPU 0 must
# be busy at most 90 % (+0.5 %). Prints busy_pct from /proc/stat and the groups' own usage.
#
# iron.layout=single (a VM with one CPU): there is no second core for the receiving side, so the
# packets' arrival at the peer (va2/va3 in the root netns) is processed on CPU 0 too. That work is
# caused by the sending container, so with Iron each peer is bound to its sender's group
# (cpu.iron.queue) and its IP packets are dropped at its ingress (tc; ARP passes), with no
# receiving socket.
#   iron.mode=off|iron iron.secs=S iron.layout=split|single iron.load=net|cpu
. /bin/iron-lib.sh
mode=$(param mode iron); secs=$(param secs 10); layout=$(param layout split); load=$(param load net)
[ "$mode" = off ] && sysctl -w kernel.sched_iron=0 >/dev/null 2>&1
for g in 1 2 3; do mkgroup g$g 30000; done
for i in 2 3; do
  veth $i
  ip netns exec ns$i tc qdisc add dev vb$i root handle 1: htb default 1
  ip netns exec ns$i tc class add dev vb$i parent 1: classid 1:1 htb rate 200mbit
  ip netns exec ns$i ip route add default via 10.99.$i.1
  if [ "$layout" = single ]; then
    tc qdisc add dev va$i clsact
    tc filter add dev va$i ingress protocol ip matchall action drop
    [ "$mode" = iron ] && echo va$i > /cgroup/g$i/cpu.iron.queue
  else
    echo 2 > /sys/class/net/va$i/queues/rx-0/rps_cpus
    taskset 2 iron-bench udp-recv --bind 10.99.$i.1:9000 --secs $((secs + 5)) > /dev/null &
  fi
done
ingroup g1 taskset 1 iron-bench burn $((secs + 3)) &
if [ "$load" = cpu ]; then
  # Control: all three containers burn CPU, no traffic: how busy 3 x 30 % leaves the core
  # with no network work at all (timer, scheduler and bandwidth-timer overhead).
  ingroup g2 taskset 1 iron-bench burn $((secs + 3)) &
  ingroup g3 taskset 1 iron-bench burn $((secs + 3)) &
else
  ingroup g2 taskset 1 /bin/ip netns exec ns2 iron-bench udp-send --to 10.99.2.1:9000 --size 1400 --secs $((secs + 3)) > /dev/null &
  ingroup g3 taskset 1 /bin/ip netns exec ns3 iron-bench udp-send --to 10.99.3.1:9000 --size 1400 --secs $((secs + 3)) > /dev/null &
fi
sleep 1
cpu0() { awk '$1=="cpu0"{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
groups() { echo $(( $(usage_usec g1) + $(usage_usec g2) + $(usage_usec g3) )); }
set -- $(cpu0); b0=$1; t0=$2; g0=$(groups)
sleep $secs
set -- $(cpu0); b1=$1; t1=$2; g1=$(groups)
busy=$(awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) 'BEGIN{printf "%.2f", 100*b/t}')
gp=$(awk -v g=$((g1 - g0)) -v s=$secs 'BEGIN{printf "%.2f", g/(s*10000)}')
# For the record: CPU 0's irq+softirq share, the packets the senders' peers received, and Iron's
# packet counts for the senders' groups.
irq=$(awk '$1=="cpu0"{print $7+$8}' /proc/stat)
result type=accuracy layout=$layout mode=$mode load=$load busy_pct=$busy groups_pct=$gp charged_usec=$(( $(stat g2 charged_usec) + $(stat g3 charged_usec) )) \
  peer_rx=$(( $(cat /sys/class/net/va2/statistics/rx_packets) + $(cat /sys/class/net/va3/statistics/rx_packets) )) \
  iron_rx=$(( $(stat g2 rx_packets) + $(stat g3 rx_packets) )) iron_tx=$(( $(stat g2 tx_packets) + $(stat g3 tx_packets) )) \
  dropped=$(( $(stat g2 dropped) + $(stat g3 dropped) )) cpu0_irq_ticks=$irq
wait

# CPU-limit accuracy (dissertation Fig 2.14a): 3 containers at 30 % of CPU 0 each, one burning
# CPU, two sending UDP through an HTB rate limiter (whose dequeue runs in the TX softirq). The
# paper's figure is the total CPU used by all containers over a 30 s window: at most 90 % (+0.5 %).
# Measured here by `iron-bench cpu-window` over a whole number of bandwidth periods: each group's
# own runtime (cpu.stat usage_usec) plus the network time Iron charged it (cpu.iron.stat
# charged_usec, less credited_usec), every counter a delta over the same measured window, and
# beside it the core's busy share from /proc/stat (which also holds kernel work nobody is
# charged for: ticks, timers, the measuring shell).
#
# iron.layout=single (a VM with one CPU): there is no second core for the receiving side, so the
# packets' arrival at the peer (va2/va3 in the root netns) is processed on CPU 0 too. That work is
# caused by the sending container, so with Iron each peer is bound to its sender's group
# (cpu.iron.queue) and its IP packets are dropped at its ingress (tc; ARP passes), with no
# receiving socket.
#   iron.mode=off|iron iron.secs=S iron.warmup=S iron.layout=split|single iron.load=net|cpu
. /bin/iron-lib.sh
mode=$(param mode iron); secs=$(param secs 30); warmup=$(param warmup 2); layout=$(param layout split); load=$(param load net)
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
    taskset 2 iron-bench udp-recv --bind 10.99.$i.1:9000 --secs $((secs + warmup + 6)) > /dev/null &
  fi
done
ingroup g1 taskset 1 iron-bench burn $((secs + warmup + 4)) &
if [ "$load" = cpu ]; then
  # Control: all three containers burn CPU, no traffic: how busy 3 x 30 % leaves the core
  # with no network work at all (timer, scheduler and bandwidth-timer overhead).
  ingroup g2 taskset 1 iron-bench burn $((secs + warmup + 4)) &
  ingroup g3 taskset 1 iron-bench burn $((secs + warmup + 4)) &
else
  ingroup g2 taskset 1 /bin/ip netns exec ns2 iron-bench udp-send --to 10.99.2.1:9000 --size 1400 --secs $((secs + warmup + 4)) > /dev/null &
  ingroup g3 taskset 1 /bin/ip netns exec ns3 iron-bench udp-send --to 10.99.3.1:9000 --size 1400 --secs $((secs + warmup + 4)) > /dev/null &
fi
# Warm-up: the groups reach their steady pattern (and, with Iron, their steady debt) first.
sleep $warmup
# The window: secs x 10 bandwidth periods of 100 ms, each end read 3 ms before a refill of the
# groups' period timers (see iron/bench/src/window.rs). The sampler runs at nice -20 in the root
# group so that it reads each end as soon after its due time as the core allows.
win=$(sh -c 'renice -n -20 $$ >/dev/null; exec iron-bench cpu-window --groups g1,g2,g3 --periods '$((secs * 10))' --cpu 0')
# For the record: the packets the senders' peers received and Iron's packet counts for the
# senders' groups (since boot).
result type=accuracy layout=$layout mode=$mode load=$load secs=$secs $win \
  peer_rx=$(( $(cat /sys/class/net/va2/statistics/rx_packets) + $(cat /sys/class/net/va3/statistics/rx_packets) )) \
  iron_rx=$(( $(stat g2 rx_packets) + $(stat g3 rx_packets) )) iron_tx=$(( $(stat g2 tx_packets) + $(stat g3 tx_packets) )) \
  dropped=$(( $(stat g2 dropped) + $(stat g3 dropped) ))
wait

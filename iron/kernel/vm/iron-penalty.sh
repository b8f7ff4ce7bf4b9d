# Penalty factor (dissertation §2.1.3/§2.3): n containers share CPU 0 with quota = period/n; one
# victim runs a fixed CPU job, the n-1 interferers either burn CPU (baseline) or receive UDP/TCP
# that a sender on CPU 1 (outside the containers) pushes over veth, with RPS steering receive
# processing to CPU 0 as a NIC queue's interrupt would. Each receiver's veth has its own NAPI
# instance (GRO on), polled on CPU 1 like a NIC queue: with Iron it is bound to the receiver's
# cgroup, so a throttled receiver's queue is parked and the sender's ring overflows instead. Each
# repetition also runs an emulator control (the job alone on CPU 0 with CPU 1 idle, busy, and
# carrying the same kind of traffic on its own) and prints one IRON-RESULT.
#
# iron.layout=single (a VM with one CPU): everything runs on CPU 0, so under qemu's instruction
# counting guest time is exactly what this CPU executes and no second vCPU or host load changes
# the job's speed. The sender then runs on the containers' core too, in a group of its own, and
# all n+1 groups get period/(n+1): in the baseline the sender's group burns CPU like the
# interferers, so both arms have the same groups with the same quotas and differ only in whether
# the n-1 interferers receive traffic (from the sender) or burn CPU. Each receiver's NAPI is
# polled on CPU 0 (no RPS: the queue's interrupt on the containers' core, as in the paper).
#   iron.kind=udp|tcp iron.n=N iron.mode=off|governor|iron iron.reps=R iron.work=MS iron.drop_pct=T
#   iron.layout=split|single iron.gso=K
. /bin/iron-lib.sh
kind=$(param kind udp); n=$(param n 4); mode=$(param mode iron); reps=$(param reps 3)
target_ms=$(param work 300)
drop_pct=$(param drop_pct 5)
# UDP datagrams per send of the traffic sender (UDP GSO; the veth keeps the batch whole and the
# receiving socket's softirq splits it, so the receive work per datagram stays with the receiver).
gso=$(param gso 1)
have_iron && sysctl -w kernel.sched_iron_drop_pct=$drop_pct >/dev/null
layout=$(param layout split)
if [ "$layout" = single ]; then
  quota=$((100000 / (n + 1))); aux=1
else
  quota=$((100000 / n)); aux=2
fi
# Calibrate the victim job to about target_ms of CPU on this (emulated) machine.
# The fastest of five runs: the emulated CPU slows down whenever the host is busy.
cal=$(for k in 1 2 3 4 5; do taskset 1 iron-bench spin 200 | sed 's/elapsed_ms=\([^ ]*\).*/\1/'; done | sort -n | head -1)
units=$(awk -v c="$cal" -v t="$target_ms" 'BEGIN{u=int(200*t/c); if(u<10)u=10; print u}')
echo "calibration: 200 units = $cal ms -> $units units"
mkgroup c0 $quota
[ "$layout" = single ] && mkgroup cs $quota
targets=""
i=1
while [ $i -lt $n ]; do
  mkgroup c$i $quota
  veth $i
  napi $i
  if [ "$layout" != single ]; then
    rps $i 1
    # The sender's side (ACKs for TCP) is processed on CPU 1, as on a remote sender.
    echo 2 > /sys/class/net/va$i/queues/rx-0/rps_cpus
  fi
  [ "$mode" = iron ] && bind $i c$i
  targets="$targets${targets:+,}10.99.$i.2:9000"
  i=$((i + 1))
done
# Emulator control: one more veth pair whose traffic stays entirely on CPU 1 (receiver, NAPI
# and RPS there, not bound to any group), so that CPU 0 does no network work at all.
if [ "$layout" != single ]; then
  veth 9
  napi 9
  rps 9 2
  echo 2 > /sys/class/net/va9/queues/rx-0/rps_cpus
fi
case "$mode" in
  off) sysctl -w kernel.sched_iron=0 >/dev/null 2>&1 ;;
  governor)
    sysctl -w kernel.sched_iron=0 >/dev/null 2>&1
    { echo "period_ms = 100"; echo "cgroup_root = \"/cgroup\""; echo "drop = \"tc\"";
      i=0; while [ $i -lt $n ]; do
        echo "[[container]]"; echo "name = \"c$i\""; echo "cgroup = \"c$i\""; echo "quota_us = $quota"
        [ $i -gt 0 ] && echo "host_iface = \"va$i\""
        i=$((i + 1)); done
      [ "$layout" = single ] && { echo "[[container]]"; echo "name = \"cs\""; echo "cgroup = \"cs\""; echo "quota_us = $quota"; }
      } > /tmp/governor.toml
    taskset $aux iron-governor --config /tmp/governor.toml --stock > /tmp/governor.log 2>&1 &
    gov=$!
    sleep 0.5 ;;
esac
# The victim's job: prints its completion time and the CPU time the scheduler gave it (ms), and
# how many times it was put on the CPU.
victim() { ingroup c0 taskset 1 iron-bench spin $units | sed 's/elapsed_ms=\([^ ]*\) cpu_ms=\([^ ]*\) slices=\(.*\)/\1 \2 \3/'; }
# Ends every workload of a phase (the VM runs nothing else called iron-bench) and waits for it.
stop_all() { killall iron-bench 2>/dev/null; while pidof iron-bench >/dev/null; do sleep 0.1; done; }
# CPU 0's user+system, irq+softirq and idle ticks, and ksoftirqd/0's runtime (ms), for the record.
cpu0() { awk '$1=="cpu0"{print $2+$3+$4, $7+$8, $5}' /proc/stat; }
# A field of a group's cpu.stat (0 if absent).
cstat() { awk -v f="$2" '$1==f{print $2; found=1} END{if(!found)print 0}' /cgroup/$1/cpu.stat; }
# The victim group's throttling and credit; the guest clock (TCG can mark the TSC unstable, which
# also switches IRQ time accounting off).
vstate() { echo "$(cstat c0 nr_throttled) $(cstat c0 throttled_usec) $(stat c0 credited_usec) $(stat c0 forfeited_usec)"; }
clock() { echo "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource) $(dmesg | grep -c -i 'unstable')"; }
# CPU 0's packets processed and RPS IPIs received (softnet_stat), CPU 1's irq+softirq ticks: a
# receive queue polled on CPU 0 instead of CPU 1 shows as fewer IPIs and less softirq on CPU 1.
net0() { set -- $(sed -n 1p /proc/net/softnet_stat); printf "%d %d " 0x$1 0x${10}; awk '$1=="cpu1"{print $7+$8}' /proc/stat; }
# The receivers' own CPU time (cpu.stat usage, Iron's charges not included), the sender group's
# own CPU time and what Iron charged it (its ACKs under TCP), all in usec; 0 for a missing group.
gstate() {
  ru=0; i=1; while [ $i -lt $n ]; do ru=$((ru + $(cstat c$i usage_usec))); i=$((i + 1)); done
  if [ -d /cgroup/cs ]; then echo "$ru $(cstat cs usage_usec) $(stat cs charged_usec)"; else echo "$ru 0 0"; fi
}
ksoftirqd0() { awk '{printf "%d", $1/1000000}' /proc/$(for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = ksoftirqd/0 ] && basename $p; done)/schedstat; }
r=1
while [ $r -le $reps ]; do
  # Baseline: the interferers burn CPU.
  pids=""
  i=1; while [ $i -lt $n ]; do ingroup c$i taskset 1 iron-bench burn 100000 & pids="$pids $!"; i=$((i + 1)); done
  # Single CPU: the sender's group is part of the core's allocation and burns CPU as well.
  [ "$layout" = single ] && { ingroup cs iron-bench burn 100000 & }
  sleep 0.3
  set -- $(victim); base=$1; base_cpu=$2; base_slices=$3
  stop_all
  # Emulator control: the same job with no quota, CPU 1 idle, then CPU 1 busy with a plain CPU
  # burner (no traffic). Under TCG the vCPUs are host threads, so a busy CPU 1 can slow CPU 0.
  # With one CPU only the first is possible: the job alone on the core, no quota.
  emu_idle=$(taskset 1 iron-bench spin $units | sed 's/elapsed_ms=\([^ ]*\).*/\1/')
  emu_busy=; emu_net=
  if [ "$layout" != single ]; then
    taskset 2 iron-bench burn 100000 & sleep 0.2
    emu_busy=$(taskset 1 iron-bench spin $units | sed 's/elapsed_ms=\([^ ]*\).*/\1/')
    stop_all
    # ... and with the same kind of traffic flowing on CPU 1 only.
    if [ "$kind" = tcp ]; then
      taskset 2 /bin/ip netns exec ns9 iron-bench tcp-recv --bind 10.99.9.2:9000 --secs 100000 > /dev/null &
      sleep 0.3
      taskset 2 iron-bench tcp-send --to 10.99.9.2:9000 --flows $((2 * (n - 1))) --secs 100000 > /dev/null &
    else
      taskset 2 /bin/ip netns exec ns9 iron-bench udp-recv --bind 10.99.9.2:9000 --secs 100000 > /dev/null &
      sleep 0.3
      taskset 2 iron-bench udp-send --to 10.99.9.2:9000 --size 1400 --secs 100000 > /dev/null &
    fi
    sleep 1
    emu_net=$(taskset 1 iron-bench spin $units | sed 's/elapsed_ms=\([^ ]*\).*/\1/')
    stop_all
  fi
  # Traffic: the interferers receive.
  c0=0; d0=0; k0=0; i=1; while [ $i -lt $n ]; do c0=$((c0 + $(stat c$i charged_usec))); d0=$((d0 + $(stat c$i dropped))); k0=$((k0 + $(stat c$i parked))); i=$((i + 1)); done
  pids=""
  i=1
  while [ $i -lt $n ]; do
    if [ "$kind" = tcp ]; then
      ingroup c$i taskset 1 /bin/ip netns exec ns$i iron-bench tcp-recv --bind 10.99.$i.2:9000 --secs 100000 > /dev/null &
    else
      ingroup c$i taskset 1 /bin/ip netns exec ns$i iron-bench udp-recv --bind 10.99.$i.2:9000 --secs 100000 > /dev/null &
    fi
    pids="$pids $!"; i=$((i + 1))
  done
  sleep 0.3
  # The sender: on CPU 1 outside the containers, or (single CPU) in its own group on CPU 0.
  sg=; [ "$layout" = single ] && sg="ingroup cs"
  if [ "$kind" = tcp ]; then
    $sg taskset $aux iron-bench tcp-send --to $targets --flows 2 --secs 100000 > /dev/null &
  else
    $sg taskset $aux iron-bench udp-send --to $targets --size 1400 --gso $gso --secs 100000 > /dev/null &
  fi
  pids="$pids $!"
  sleep 1
  set -- $(vstate); vt0=$1; vtu0=$2; vc0=$3; vf0=$4
  set -- $(net0); np0=$1; nr0=$2; c1s0=$3
  set -- $(cpu0); u0=$1; s0=$2; i0=$3; ks0=$(ksoftirqd0)
  set -- $(gstate); ru0=$1; su0=$2; sc0=$3
  set -- $(victim); net=$1; net_cpu=$2; net_slices=$3
  set -- $(cpu0); u1=$1; s1=$2; i1=$3; ks1=$(ksoftirqd0)
  set -- $(gstate); ru1=$1; su1=$2; sc1=$3
  set -- $(net0); np1=$1; nr1=$2; c1s1=$3
  set -- $(vstate); vt1=$1; vtu1=$2; vc1=$3; vf1=$4
  debt=0; i=1; while [ $i -lt $n ]; do debt=$((debt + $(stat c$i debt_usec))); i=$((i + 1)); done
  set -- $(clock); cs=$1; unstable=$2
  stop_all
  c1=0; d1=0; k1=0; i=1; while [ $i -lt $n ]; do c1=$((c1 + $(stat c$i charged_usec))); d1=$((d1 + $(stat c$i dropped))); k1=$((k1 + $(stat c$i parked))); i=$((i + 1)); done
  result type=penalty kind=$kind n=$n layout=$layout quota_us=$quota mode=$mode rep=$r victim_ms=$net baseline_ms=$base charged_ms=$(((c1 - c0) / 1000)) dropped=$((d1 - d0)) parked=$((k1 - k0)) cpu0_task=$((u1 - u0)) cpu0_irq=$((s1 - s0)) cpu0_idle=$((i1 - i0)) ksoftirqd_ms=$((ks1 - ks0)) cpu1_irq=$((c1s1 - c1s0)) cpu0_pkts=$((np1 - np0)) cpu0_rps_ipis=$((nr1 - nr0)) victim_cpu_ms=$net_cpu baseline_cpu_ms=$base_cpu victim_slices=$net_slices baseline_slices=$base_slices emu_idle_ms=$emu_idle emu_busy_ms=$emu_busy emu_net_ms=$emu_net victim_nr_throttled=$((vt1 - vt0)) victim_throttled_ms=$(((vtu1 - vtu0) / 1000)) victim_credited_ms=$(((vc1 - vc0) / 1000)) victim_forfeited_ms=$(((vf1 - vf0) / 1000)) debt_ms=$((debt / 1000)) rx_usage_ms=$(((ru1 - ru0) / 1000)) sender_usage_ms=$(((su1 - su0) / 1000)) sender_charged_ms=$(((sc1 - sc0) / 1000)) clocksource=$cs unstable=$unstable softirq="$(awk '/NET_RX/{print $2"/"$3}' /proc/softirqs)"
  sleep 0.3
  r=$((r + 1))
done
[ -n "${gov:-}" ] && { kill -INT $gov; wait $gov; tail -5 /tmp/governor.log; }

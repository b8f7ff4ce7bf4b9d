# Helpers shared by the in-VM tests (sourced).
# Debian's static busybox runs its own applets before PATH, so iproute2's ip and tc are called
# by full path.
ip() { /bin/ip "$@"; }
tc() { /bin/tc "$@"; }
# param NAME DEFAULT: value of iron.NAME= on the kernel command line.
param() { v=$(sed -n "s/.*iron\.$1=\([^ ]*\).*/\1/p" /proc/cmdline); echo "${v:-$2}"; }
result() { echo "IRON-RESULT $*"; }
# mkgroup NAME QUOTA_US: a cgroup with the cpu controller and cpu.max = QUOTA_US per 100 ms.
mkgroup() {
  grep -q cpu /cgroup/cgroup.subtree_control || echo +cpu > /cgroup/cgroup.subtree_control
  mkdir -p /cgroup/$1
  echo "$2 100000" > /cgroup/$1/cpu.max
}
# ingroup NAME CMD...: run CMD inside cgroup NAME (the shell moves itself, then execs).
ingroup() { g=$1; shift; sh -c 'echo $$ > /cgroup/'"$g"'/cgroup.procs; exec "$@"' ingroup "$@"; }
# veth I: netns nsI with vbI = 10.99.I.2, peer vaI = 10.99.I.1 in the root netns.
veth() {
  ip netns add ns$1
  ip link add va$1 type veth peer name vb$1 netns ns$1
  ip addr add 10.99.$1.1/24 dev va$1
  ip link set va$1 up
  ip -n ns$1 addr add 10.99.$1.2/24 dev vb$1
  ip -n ns$1 link set vb$1 up
  ip -n ns$1 link set lo up
}
# rps I MASK: process packets arriving on vbI on the CPUs in MASK (like a NIC queue's IRQ).
rps() { ip netns exec ns$1 sh -c "echo $2 > /sys/class/net/vb$1/queues/rx-0/rps_cpus"; }
# napi I: give vbI its own NAPI instance (veth does when GRO is on), polled on the sending CPU:
# the VM's stand-in for a NIC receive queue with its own interrupt.
# veth only queues to that NAPI what is eligible for GRO: with TSO off on the sending side.
napi() { ip netns exec ns$1 /bin/ethtool -K vb$1 gro on; /bin/ethtool -K va$1 tso off; }
# bind I GROUP: bind vbI (inside nsI) to GROUP with cpu.iron.queue.
bind() { ip netns exec ns$1 sh -c "echo vb$1 > /cgroup/$2/cpu.iron.queue"; }
# stat GROUP FIELD: a field of cpu.iron.stat (0 if absent).
stat() { awk -v f="$2" '$1==f{print $2; found=1} END{if(!found)print 0}' /cgroup/$1/cpu.iron.stat 2>/dev/null || echo 0; }
usage_usec() { awk '$1=="usage_usec"{print $2}' /cgroup/$1/cpu.stat; }
now_ms() { awk '{printf "%d", $1*1000}' /proc/uptime; }
have_iron() { [ -e /proc/sys/kernel/sched_iron ]; }

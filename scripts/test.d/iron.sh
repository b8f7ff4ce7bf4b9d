#!/usr/bin/env bash
# Iron end to end: the kernel patch series applies to Debian's linux-source-6.12, the small test
# kernel builds (cached in $IRON_CACHE, default ~/.cache/iron, so only the first run pays the full
# build), boots under qemu (TCG) and the in-VM check passes: cpu.iron.stat moves when UDP flows
# over veth between two cgroups, stays put with kernel.sched_iron=0, a throttled receiver's
# packets are dropped and it is not left throttled. IRON_CHECK_EACH=1 also compiles the touched
# objects after every patch of the series.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
iron/kernel/deps.sh
bin=${CARGO_TARGET_DIR:-target}/release
[ -x "$bin/iron-bench" ] || cargo build --release -p iron-bench -p iron-governor
export IRON_TOOLS=$bin
if [ "${IRON_CHECK_EACH:-0}" = 1 ]; then
  nice -n 10 iron/kernel/build.sh --objects --each
fi
nice -n 10 iron/kernel/build.sh
"$bin/iron-bench" check
echo "iron: kernel built, booted and checked in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# Compares chc-bench binaries (old and new trees) on one DPDK chain: one-lcore trials of
# `chc-bench dpdk trial`, the binaries taking turns in every round so that the machine's
# drift hits them alike. Prints Mpps, TSC cycles per packet on the lcore's CPU and p50
# latency per trial, then each binary's medians.
#   benches/scripts/dpdk-ab.sh CHAIN SIZE ROUNDS BIN...
#   e.g. benches/scripts/dpdk-ab.sh nat-eo-c-na 64 5 /tmp/old/chc-bench target/release/chc-bench
# Copy each binary out of target/ first if a rebuild may run meanwhile.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
chain=$1 size=$2 rounds=$3
shift 3
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for r in $(seq "$rounds"); do
  for b in "$@"; do
    line=$("$b" dpdk trial --chain "$chain" --size "$size" --seconds 2 2>/dev/null | tail -1)
    # One trial's figures, printed and kept (tab-separated) for the medians.
    python3 - "$b" "$line" <<'PY' | tee -a "$out" | cut -f4
import json, sys
d = json.loads(sys.argv[2])
cyc = d["tsc_hz"] * d["cpu_seconds"] / d["packets"]
print(f"{sys.argv[1]}\t{d['mpps']}\t{cyc}\t"
      f"{sys.argv[1]:<40} {d['mpps']:7.2f} Mpps {cyc:8.1f} cycles/pkt  p50 {d['p50_us']:.2f} us")
PY
  done
done
python3 - "$out" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    b, mpps, cyc, _ = line.split("\t", 3)
    runs.setdefault(b, []).append((float(mpps), float(cyc)))
print("medians:")
for b, v in runs.items():
    print(f"{b:<40} {statistics.median(x[0] for x in v):7.2f} Mpps "
          f"{statistics.median(x[1] for x in v):8.1f} cycles/pkt ({len(v)} trials)")
PY

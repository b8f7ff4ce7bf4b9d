#!/usr/bin/env bash
# Runs each failure scenario of `chc-bench coe` with many seeds on one trace and reports how
# many runs were equivalent to the ideal chain (the goal is all of them).
#   benches/scripts/coe-seeds.sh [TRACE] [RUNS] [SCENARIO...]
# Defaults: ../shared/traces/mixed.pcap, 100 runs, nf-crash root-crash store-crash correlated.
# The in-process scenarios (scale-out, scale-in, naive-move, parallel, delay) work the same.
# A failing seed is printed, so `chc-bench coe --trace T --scenario S --seed N --keep DIR`
# replays it with every process's log.
# CHC_COE_BACKEND=dpdk runs the scenarios' chains on the DPDK path (parallel, delay,
# scale-out, scale-in, naive-move, straggler, straggler-nodedup, and nf-crash: the chain
# split over two hosts in network namespaces, one killed and restarted; needs root);
# CHC_COE_EAL adds EAL arguments there
# (CHC_COE_EAL=--lcores=0@0,1@1,2@1 spreads the instances over two worker lcores).
# CHC_BENCH=PATH runs a copy of chc-bench (its chc-dataplane and chc-store next to it), so
# that a rebuild meanwhile does not swap binaries under a running loop.
# A run that takes longer than CHC_RUN_TIMEOUT seconds (default 300) is stopped and counted
# as not equivalent (listed as "hung"), so one stalled run does not stop the sweep.
set -uo pipefail
cd "$(dirname "$0")/../.."
trace=${1:-../shared/traces/mixed.pcap}
runs=${2:-100}
shift 2 2>/dev/null || shift $#
scenarios=${*:-nf-crash root-crash store-crash correlated}
bin=${CHC_BENCH:-${CARGO_TARGET_DIR:-target}/release/chc-bench}
limit=${CHC_RUN_TIMEOUT:-300}
[ -x "$bin" ] || cargo build -q --release -p chc-bench -p chc-dataplane -p chc-store
for s in $scenarios; do
  ok=0
  failed=""
  hung=""
  for seed in $(seq 1 "$runs"); do
    out=$(timeout -k 10 "$limit" "$bin" coe --trace "$trace" --scenario "$s" --seed "$seed" \
      ${CHC_COE_BACKEND:+--backend "$CHC_COE_BACKEND"} ${CHC_COE_EAL:+--eal="$CHC_COE_EAL"} \
      2>/dev/null)
    rc=$?
    first=${out%%$'\n'*}
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      hung="$hung $seed"
    elif [[ $first == EQUIVALENT* ]]; then
      ok=$((ok + 1))
    else
      failed="$failed $seed"
    fi
    printf '\r%s: %d/%d' "$s" "$seed" "$runs" >&2
  done
  printf '\r' >&2
  echo "$s on $(basename "$trace"): $ok of $runs equivalent${failed:+ (failed seeds:$failed)}${hung:+ (hung seeds, stopped after ${limit}s:$hung)}"
done

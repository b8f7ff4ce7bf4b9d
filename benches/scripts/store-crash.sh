#!/bin/bash
# Crash safety at scale: kills a loaded `chc-store serve --fsync always` with SIGKILL N times
# (default 1000) at random points, restarting it each time, and checks after every restart that
# no acknowledged write was lost and every key holds a prefix of its operations (the test
# store/tests/crash.rs with CHC_CRASH_ROUNDS=N).
#   usage: benches/scripts/store-crash.sh [N]
set -uo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}
start=$(date +%s)
CHC_CRASH_ROUNDS=$N cargo test --release -p chc-store --test crash -- --nocapture 2>&1 \
  | grep -E "kills|panicked|test result|round"
rc=${PIPESTATUS[0]}
echo "store-crash: $N kills in $(( $(date +%s) - start )) s, exit $rc"
exit "$rc"

#!/usr/bin/env bash
# DPDK binding layer, end to end (the cargo tests of chc-dpdk ran before this):
#  1. the build without DPDK: chc-dpdk compiles to stubs with the same API, which say why;
#  2. the forwarding baseline harness runs (testpmd vs chc-dpdk on net_ring, one short rep);
#  3. deploy/: setup-host.sh --dry-run prints every step and rejects bad input; units parse.
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"

echo "-- chc-dpdk without DPDK (CHC_DPDK_DISABLE=1, own target dir)"
CHC_DPDK_DISABLE=1 CARGO_TARGET_DIR="$target/dpdk-stub" CARGO_PROFILE_DEV_DEBUG=0 \
  cargo test -q --locked -p chc-dpdk --test api 2>&1 | tail -3

if pkg-config --exists libdpdk && command -v dpdk-testpmd >/dev/null; then
  echo "-- forwarding baseline harness (1 rep, 64 B)"
  bench="$target/release/examples/fwd_bench"
  [ -x "$bench" ] || cargo build -q --release --locked -p chc-dpdk --example fwd_bench
  out="$(mktemp)"
  "$bench" compare --reps 1 --seconds 1 --sizes 64 --json "$out"
  python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["experiment"] == "dpdk-forwarding-baseline", r
rows = r["rows"]
assert len(rows) == 4, rows
for row in rows:
    assert row["ours"] > 0 and row["baseline"] > 0, row
    assert row["better"] in ("higher", "lower"), row
print(f"fwd_bench: {len(rows)} rows, all with figures")
PY
  rm -f "$out"
else
  echo "-- DPDK or dpdk-testpmd missing: forwarding harness skipped"
fi

echo "-- deploy/setup-host.sh --dry-run"
dry="$(deploy/setup-host.sh --dry-run --nic 0000:3b:00.0 --hugepages 64 --persist --install-units)"
for step in "nr_hugepages" "modprobe vfio-pci" "dpdk-devbind.py --bind=vfio-pci 0000:3b:00.0" \
            "mkdir -p /etc/chc /var/lib/chc-store" "systemctl daemon-reload" "80-chc-hugepages.conf"; do
  grep -qF -- "$step" <<<"$dry" || { echo "dry run lacks step: $step"; echo "$dry"; exit 1; }
done
if deploy/setup-host.sh --dry-run --nic eth0 >/dev/null 2>&1; then
  echo "setup-host.sh accepted a non-PCI address"; exit 1
fi
if deploy/setup-host.sh --dry-run --hugepage-size 3M >/dev/null 2>&1; then
  echo "setup-host.sh accepted a bad page size"; exit 1
fi

if command -v systemd-analyze >/dev/null; then
  echo "-- systemd units"
  # The binaries are not installed here; every other complaint is an error in the unit.
  errs="$(systemd-analyze verify deploy/systemd/*.service 2>&1 | grep -v 'is not executable' || true)"
  [ -z "$errs" ] || { echo "$errs"; exit 1; }
fi
echo "dpdk: ok"

#!/usr/bin/env bash
# The project's test command: installs what the tests need, builds the workspace once in
# release mode, runs every test, then the end-to-end suites in scripts/test.d/.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/install-deps.sh
export CARGO_TERM_COLOR=never
echo "== build (release, all targets)"
cargo build --release --workspace --all-targets --locked
echo "== unit, property and end-to-end tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --workspace --locked --no-fail-fast
else
  cargo test --release --workspace --locked --no-fail-fast
fi
cargo test --release --workspace --doc --locked
for s in scripts/test.d/*.sh; do
  [ -e "$s" ] || continue
  echo "== $s"
  bash "$s"
done
echo "== all tests passed in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# The main job on the embedded default: synthesise a trace, run the paper's chain over it with
# the state store in-process, and leave the output pcap and the events log in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p chc-dataplane -p chc-bench
mkdir -p out
target/release/chc-bench synth --packets 200000 --connections 5000 --out out/demo.pcap
target/release/chc-dataplane run --pcap-in out/demo.pcap --pcap-out out/demo.out.pcap --events out/demo.events.jsonl

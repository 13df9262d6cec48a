#!/usr/bin/env bash
# Runs the benchmarks and writes their JSON reports under target/bench/. Numbers belong in
# docs/BENCHMARKS.md with the machine they came from; tests never assert them.
#
# Usage: scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { echo "bench.sh: needs chromium (apt-get install chromium)" >&2; exit 1; }
mkdir -p target/bench
cargo bench -p webrtc-worker --bench transport -- --bench | tee target/bench/transport.json

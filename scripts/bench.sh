#!/usr/bin/env bash
# Runs the benchmarks and writes their JSON reports under target/bench/. Numbers belong in
# docs/BENCHMARKS.md with the machine they came from; tests never assert them.
#
# Usage: scripts/bench.sh [transport|signaling|gossip|reliability|files]   (default: all five)
#   transport: webrtc-worker connections against Chromium's libwebrtc (needs chromium)
#   signaling: the proxy's WebSocket signaling against a Node.js `ws` relay (needs node, npm)
#   gossip:    the seeded gossip simulation, N = 1000 (MESH_BENCH_SEEDS, default 100; ~8 min)
#   reliability: failure detection and rejoin with real workers (MESH_BENCH_RUNS, default 20)
#   files:     a 256 MiB file between two workers, against the raw DataChannel and Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/bench
which="${1:-all}"

if [[ "$which" == all || "$which" == transport ]]; then
  command -v chromium >/dev/null || { echo "bench.sh: needs chromium (apt-get install chromium)" >&2; exit 1; }
  cargo bench -p webrtc-worker --bench transport -- --bench | tee target/bench/transport.json
fi

if [[ "$which" == all || "$which" == signaling ]]; then
  command -v node >/dev/null || { echo "bench.sh: needs node (Node.js 20)" >&2; exit 1; }
  (cd services/signaling-proxy/benches/node-relay && { [ -d node_modules/ws ] || npm ci --no-audit --no-fund; })
  # 10,000 client connections in this process and in each server: lift the descriptor limit.
  ulimit -n "$(ulimit -Hn)"
  cargo bench -p signaling-proxy --bench signaling -- --bench | tee target/bench/signaling.json
fi

if [[ "$which" == all || "$which" == gossip ]]; then
  MESH_BENCH_SEEDS="${MESH_BENCH_SEEDS:-100}" cargo bench -p mesh-gossip --bench spread | tee target/bench/gossip.md
fi

if [[ "$which" == all || "$which" == reliability ]]; then
  MESH_BENCH_RUNS="${MESH_BENCH_RUNS:-20}" cargo bench -p webrtc-worker --bench reliability -- --bench | tee target/bench/reliability.json
fi

if [[ "$which" == all || "$which" == files ]]; then
  command -v chromium >/dev/null || { echo "bench.sh: needs chromium (apt-get install chromium)" >&2; exit 1; }
  cargo build --release -p webrtc-worker --bin webrtc-worker
  cargo bench -p webrtc-worker --bench files -- --bench | tee target/bench/files.json
fi

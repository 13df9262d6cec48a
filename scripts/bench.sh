#!/usr/bin/env bash
# Runs the benchmarks and writes their JSON reports under target/bench/. Numbers belong in
# docs/BENCHMARKS.md with the machine they came from; tests never assert them.
#
# Usage: scripts/bench.sh [transport|signaling|gossip|reliability|files|idle]   (default: all six)
#   transport: webrtc-worker connections against Chromium's libwebrtc (needs chromium)
#   signaling: the proxy's WebSocket signaling against a Node.js `ws` relay (needs node, npm)
#   gossip:    the seeded gossip simulation, N = 1000 (MESH_BENCH_SEEDS, default 100; ~8 min)
#   reliability: failure detection and rejoin with real workers (MESH_BENCH_RUNS, default 20)
#   files:     a 256 MiB file between two workers, against the raw DataChannel and Chromium
#   idle:      the main job's idle cost: `meshctl up --peers N` (N = 3, 10, 20; MESH_BENCH_PEERS),
#              CPU, RSS and a profile by part (needs perf), against the 200-link worker measured
#              in the same sitting; instructions per gossip round per peer (needs valgrind) and
#              a round's envelopes and bytes at N = 20 and 1,000. MESH_BENCH_BEFORE=<meshctl>
#              measures an older build alternately with this one (before/after). ~15 minutes.
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

if [[ "$which" == all || "$which" == idle ]]; then
  command -v perf >/dev/null || { echo "bench.sh: needs perf (apt-get install linux-perf)" >&2; exit 1; }
  command -v valgrind >/dev/null || { echo "bench.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
  cargo build --release -p meshctl
  binaries=(--binary after=target/release/meshctl)
  if [[ -n "${MESH_BENCH_BEFORE:-}" ]]; then binaries+=(--binary "before=$MESH_BENCH_BEFORE"); fi
  python3 scripts/bench_idle.py "${binaries[@]}" --peers "${MESH_BENCH_PEERS:-3,10,20}" \
    --rounds "${MESH_BENCH_ROUNDS:-2}" --warmup "${MESH_BENCH_WARMUP:-60}" --profile \
    --out target/bench/idle.json
  echo "the 200-link worker, its pings answered (the per-link-end reference):"
  MESH_BENCH_PHASE=worker cargo bench -q -p webrtc-worker --bench transport -- --bench | tee target/bench/idle-worker200.json
  # Instructions per gossip round per peer at N = 20: two callgrind runs of the real nodes that
  # differ only in 10 measured rounds after 30 settling ones; the difference over 10 x 20.
  bin=$(cargo bench -q -p mesh-gossip --bench rounds --no-run --message-format=json \
    | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "rounds" and m.get("executable")][0])')
  instr() {
    MESH_ROUNDS="20,30,$1,${2:-0}" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" 2>&1 \
      | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
  }
  for changes in 0 1; do
    base=$(instr 0 "$changes"); more=$(instr 10 "$changes")
    echo "instructions per gossip round per peer, N = 20, $changes news a round: $(( (more - base) / 200 ))" \
      | tee -a target/bench/idle-rounds.md
  done
  cargo bench -q -p mesh-gossip --bench rounds | tee -a target/bench/idle-rounds.md
fi

#!/usr/bin/env bash
# Runs every test in the workspace, the way CI does.
#
# The Firestore store tests run against the real Google emulator. Unless FIRESTORE_EMULATOR_HOST
# already names one, this starts the emulator on a free loopback port in its own process group
# and stops the whole group on exit: the emulator's Java child outlives the gcloud wrapper, so
# killing only the wrapper would leave it running. If the emulator cannot start, this fails; the
# Firestore tests are never skipped.
#
# Before the tests, the checks of the code's shape and the docs' paths (scripts/check-imports.py,
# scripts/check-docs.sh); after them, the checks of deploy/ (Node's test runner, no cloud needed).
#
# Usage: scripts/test.sh [extra cargo-nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

emulator_pgid=""
stop_emulator() {
  if [ -n "$emulator_pgid" ]; then
    kill -TERM -- "-$emulator_pgid" 2>/dev/null || true
    for _ in $(seq 1 20); do
      kill -0 -- "-$emulator_pgid" 2>/dev/null || return 0
      sleep 0.25
    done
    kill -KILL -- "-$emulator_pgid" 2>/dev/null || true
  fi
}
trap stop_emulator EXIT
trap 'exit 130' INT TERM

if [ -z "${FIRESTORE_EMULATOR_HOST:-}" ]; then
  if ! command -v gcloud >/dev/null; then
    echo "test.sh: gcloud is not installed; the Firestore emulator is needed for the store tests" >&2
    exit 1
  fi
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p target
  log=target/firestore-emulator.log
  # setsid: the emulator and its Java child get a process group of their own (pgid = $!).
  setsid gcloud emulators firestore start --host-port="127.0.0.1:$port" --quiet >"$log" 2>&1 &
  emulator_pgid=$!
  ready=""
  for _ in $(seq 1 240); do
    if curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; then ready=1; break; fi
    if ! kill -0 "$emulator_pgid" 2>/dev/null; then break; fi
    sleep 0.5
  done
  if [ -z "$ready" ]; then
    echo "test.sh: the Firestore emulator did not start; its log follows" >&2
    cat "$log" >&2
    exit 1
  fi
  export FIRESTORE_EMULATOR_HOST="127.0.0.1:$port"
  echo "test.sh: Firestore emulator ready at $FIRESTORE_EMULATOR_HOST (store tests run against it)"
else
  echo "test.sh: using the Firestore emulator at $FIRESTORE_EMULATOR_HOST"
fi

# The shape docs/ARCHITECTURE.md promises (its invariants): no import cycle among a crate's
# modules, the worker's link core and rejoin naming no `Worker`, and every path the docs name.
python3 -m unittest discover -s scripts -p 'check_imports_test.py'
python3 scripts/check-imports.py crates/* services/gossip-push services/meshctl \
  services/signaling-proxy \
  services/webrtc-worker --features links,rejoin,queue,gossip,files,file_channel,inbox
scripts/check-docs.sh

cargo nextest run --workspace --profile ci "$@"

# deploy/: the deploy script's dry run, the Cloud Run manifests against the Knative schema, the
# systemd units (Node's test runner; packages pinned in deploy/test/package-lock.json).
npm ci --prefix deploy/test --no-audit --no-fund --loglevel=error
node --test deploy/test/

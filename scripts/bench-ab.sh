#!/usr/bin/env bash
# Compares two revisions with one benchmark, alternating them run by run in one sitting (A B A B
# ...), so the machine's drift over minutes falls on both alike. Each revision is checked out in
# its own worktree under target/ab/ (or AB_TREE_A / AB_TREE_B, checkouts you made) and built with
# one shared target directory (target/ab/target, or CARGO_TARGET_DIR): the dependencies once.
# Each run's JSON goes to target/ab/<bench>-<n>-<A|B>.json, and a line per run to stdout.
#
# Usage: scripts/bench-ab.sh REV_A REV_B transport|throughput|files [ROUNDS]   (default 2)
#   transport:  the whole transport benchmark (needs chromium)
#   throughput: its throughput phase only (3 runs each of 64 KiB and 1 KiB messages)
#   files:      MESH_BENCH_PHASE=files, the worker-to-worker transfers only (3 runs of 256 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
rev_a=$1 rev_b=$2 bench=$3 rounds=${4:-2}
case "$bench" in
  transport) target=transport phase="" ;;
  throughput) target=transport phase=throughput ;;
  files) target=files phase=files ;;
  *) echo "bench-ab.sh: no benchmark '$bench' (transport, throughput or files)" >&2; exit 2 ;;
esac

root=$PWD
out=$root/target/ab
mkdir -p "$out"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$out/target}

tree() {
  case "$1" in
    A) echo "${AB_TREE_A:-$out/tree-A}" ;;
    B) echo "${AB_TREE_B:-$out/tree-B}" ;;
  esac
}
for side in A B; do
  rev=$rev_a
  [ "$side" = B ] && rev=$rev_b
  dir=$(tree "$side")
  if [ -e "$dir/.git" ]; then
    git -C "$dir" checkout -q --detach "$rev"
  else
    git worktree add -q --detach "$dir" "$rev"
  fi
  echo "bench-ab: $side = $(git -C "$dir" log --oneline -1)"
  (cd "$dir" && cargo bench -p webrtc-worker --bench "$target" --no-run)
done

for n in $(seq 1 "$rounds"); do
  for side in A B; do
    report=$out/$bench-$n-$side.json
    (cd "$(tree "$side")" && MESH_BENCH_PHASE=$phase cargo bench -q -p webrtc-worker --bench "$target" -- --bench) >"$report"
    echo "bench-ab: round $n $side: $(tr -d '\n ' <"$report" | cut -c1-400)"
  done
done

#!/bin/bash
# Profiles validator 0 under the closed-loop peak load: runs cairn-bench for
# 40 s and, 12 s into the load, `perf record` on the first node for 20 s.
# Usage (from the repository, after `cargo build --release`):
#   docs/profiles/profile.sh OUTDIR [more cairn-bench flags]
# Then:
#   perf script -i OUTDIR/perf.data | inferno-collapse-perf > OUTDIR/folded.txt
#   inferno-flamegraph --minwidth 0.5 < OUTDIR/folded.txt > flame.svg
#   python3 docs/profiles/categorize.py OUTDIR/folded.txt
# Needs perf (Debian: linux-perf) and inferno (cargo install inferno).
set -u
OUT=$1; shift
rm -rf "$OUT"; mkdir -p "$OUT"
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
./target/release/cairn-bench --duration 40 --out "$OUT/bench" "$@" \
    > "$OUT/bench.stdout" 2> "$OUT/bench.stderr" &
BENCH=$!
for _ in $(seq 1 120); do
  sleep 1
  grep -q "starting the load" "$OUT/bench.stderr" 2>/dev/null && break
done
sleep 12
NODES=$(pgrep -P $BENCH -f cairn-node | tr '\n' ' ')
echo "bench $BENCH nodes $NODES" > "$OUT/pids"
FIRST=$(echo $NODES | cut -d' ' -f1)
perf record -F 197 --call-graph dwarf,8192 -p "$FIRST" -o "$OUT/perf.data" -- sleep 20 \
    2> "$OUT/perf.stderr"
wait $BENCH

#!/bin/bash
# Usage: profile.sh OUTDIR [bench args...]  — closed-loop bench with perf on node 0 for 20 s.
set -u
OUT=$1; shift
rm -rf $OUT; mkdir -p $OUT
cd /work/main
./target/release/cairn-bench --duration 40 --out $OUT/bench "$@" > $OUT/bench.stdout 2> $OUT/bench.stderr &
BP=$!
# wait for nodes to start and load to begin
for i in $(seq 1 120); do
  sleep 1
  N0=$(pgrep -P $BP -f "cairn-node" | head -1)
  [ -n "$N0" ] && grep -q "warm\|window\|committed" $OUT/bench.stderr $OUT/bench.stdout 2>/dev/null && break
done
sleep 12
PIDS=$(pgrep -P $BP -f cairn-node | tr '\n' ' ')
echo "bench $BP nodes $PIDS" > $OUT/pids
N0=$(echo $PIDS | cut -d' ' -f1)
perf record -F 197 --call-graph dwarf,8192 -p $N0 -o $OUT/perf.data -- sleep 20 2> $OUT/perf.stderr
wait $BP
echo done

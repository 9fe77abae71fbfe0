#!/usr/bin/env bash
# on the lent GPU machine, from the repository root (after bench/gpu_bundle.sh here): full-frame stream benchmark (bench.fullframe) on one H200, GPU backends on
set -uo pipefail
source .gpu/setup.sh
mkdir -p $OUT
export AST3_DETECTION__BACKEND=cupy AST3_REDUCTION__BACKEND=cupy AST3_SUBTRACTION__BACKEND=cupy
export AST3STREAM_GIL_PROBE_S=2.0   # the worker logs every GIL hold >= 2 s (and dumps the first ten's stacks)
timeout ${FF_TIMEOUT:-555} python -m bench.fullframe --scale 1.0 ${FF_ARGS:---fields 1 --paced 3 --cadence 40 --burst 2 --timeout 300} \
  --out /tmp/ff --cache /tmp/ffcache > $OUT/fullframe.log 2>&1; echo "fullframe rc $?"
cp /tmp/ff/summary.json $OUT/ 2>/dev/null
cp /tmp/ff/run/ast3stream.db $OUT/ 2>/dev/null   # the stage runs, also when the bench ran out of time
for log in /tmp/ff/run/logs/worker*.log; do   # every worker's events, GIL holds and tail
  [ -f "$log" ] || continue
  w=$(basename "$log" .log)
  grep -E "warmed|loaded in|preparing template| (reduction|subtraction): |gave back|GIL probe|keepalive|rebalanc|waits|gave up|Traceback|Error" "$log" | head -300 > $OUT/$w.events
  echo "$w: $(grep -c "GIL probe" "$log") GIL probes, $(grep -c "keepalive" "$log") keepalives"
  python -m bench.gil_dumps "$log" | head -c 60000 > $OUT/$w.gil_dumps.txt   # the busy threads only
  tail -c 4000 "$log" > $OUT/$w.tail
done
head -c 4000 $OUT/fullframe.log; echo; tail -c 5000 $OUT/fullframe.log

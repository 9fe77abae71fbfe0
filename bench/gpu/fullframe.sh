#!/usr/bin/env bash
# on the lent GPU machine, from the repository root (after bench/gpu_bundle.sh here): full-frame stream benchmark (bench.fullframe) on one H200, GPU backends on
set -uo pipefail
source .gpu/setup.sh
mkdir -p $OUT
export AST3_DETECTION__BACKEND=cupy AST3_REDUCTION__BACKEND=cupy AST3_SUBTRACTION__BACKEND=cupy
timeout 560 python -m bench.fullframe --scale 1.0 --fields 2 --paced 2 --cadence 15 --burst 3 --timeout 240 \
  --out /tmp/ff --cache /tmp/ffcache > $OUT/fullframe.log 2>&1; echo "fullframe rc $?"
cp /tmp/ff/summary.json $OUT/ 2>/dev/null
ls /tmp/ff/run/logs 2>/dev/null | head; for f in $(ls /tmp/ff/run/logs/* 2>/dev/null | head -4); do tail -c 3000 "$f" > "$OUT/$(basename $f).tail"; done 2>/dev/null
head -c 6000 $OUT/fullframe.log; echo; tail -c 4000 $OUT/fullframe.log

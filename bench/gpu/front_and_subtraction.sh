#!/usr/bin/env bash
# on the lent GPU machine, from the repository root (after bench/gpu_bundle.sh here): front half + detection (bench.reduce, CPU strips + GPU backends) and subtraction (QIP/DIP, CPU vs GPU)
set -uo pipefail
source .gpu/setup.sh
mkdir -p $OUT
nproc; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 240 python -m bench.reduce --scale 1.0 --repeat 2 --gpu --dir /tmp/ast3_bench_reduce_1 --out "$OUT" > $OUT/reduce.log 2>&1; echo "reduce rc $?"
tail -40 $OUT/reduce.log
timeout 250 python -m bench.subtraction --sizes qip,dip --backend cupy --no-packet --repeat 2 --json $OUT/subtraction.json > $OUT/subtraction.log 2>&1; echo "subtraction rc $?"
tail -30 $OUT/subtraction.log

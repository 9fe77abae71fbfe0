#!/usr/bin/env bash
# Real/bogus training on the lent GPU. From the repo root, with the sets under shared/sets/ (made here by
# `classify build-set --from-alerts` / `--from-images`, see the README "Real/bogus on the real sky"):
#   source .gpu/setup.sh && bash bench/gpu/train_rb.sh          (results: $OUT/models/, $OUT/train_rb.log)
# Cross-validates the network (ARCH="resnet18 braai" compares the seed's ResNet-18 with the braai-like CNN
# on the same folds and keeps the better ZTF AUC) by ZTF night/object and image field/night, trains the
# shipped network on everything, fits the hybrid combiner (network margin + stamp features, boosted trees)
# on the out-of-fold margins, Platt-calibrates it, sets the alert threshold at 1 % FPR on the real images'
# bogus, and writes rb_{qip,dip}.{pt,json}, eval.json, eval.png and crossval.npz (the out-of-fold margins).
# Needs only torch, numpy, scipy, matplotlib. ARCH/DEVICE/EPOCHS/N_SYNTH/WIDTH/MAX_SECONDS override the
# defaults (DEVICE=cpu EPOCHS=1 N_SYNTH=20 WIDTH=8 checks the script on a CPU).
set -euo pipefail
OUT=${OUT:-/tmp/rbout}; mkdir -p "$OUT"
SETS=${SETS:-shared/sets}
THREADS=${THREADS:-$(nproc)}
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
time python -c 'import sys; from ast3stream.cli import main; sys.exit(main())' classify train-real \
    --alerts "$SETS/alerts.npz" --images "$SETS/images.npz" --out-dir "$OUT/models" \
    --arch ${ARCH:-braai} --width "${WIDTH:-32}" --folds 3 --epochs "${EPOCHS:-40}" --max-seconds "${MAX_SECONDS:-45}" \
    --n-synth "${N_SYNTH:-3000}" --batch-size 256 --lr 2e-3 --device "${DEVICE:-cuda}" \
    --threads "$THREADS" --workers "$THREADS" 2>&1 | tee "$OUT/train_rb.log"
ls -la "$OUT/models"

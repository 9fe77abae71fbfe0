#!/usr/bin/env bash
# Real/bogus training on the lent GPU. From the repo root, with the sets under shared/sets/ (made here by
# `classify build-set --from-alerts` / `--from-images`, see the README "Real/bogus on the real sky"):
#   source .gpu/setup.sh && bash bench/gpu/train_rb.sh          (results: $OUT/models/, $OUT/train_rb.log)
# Cross-validates the seed's rotation-invariant ResNet-18 (h-swish) and the braai-like CNN on the same
# ZTF night/object folds, ships the better ZTF AUC (fold-0 network), Platt-calibrates it on the
# validation pool, sets the alert threshold at 1 % FPR on subtraction bogus, and writes rb_{qip,dip}.{pt,json},
# eval.json and eval.png. Needs only torch, numpy, scipy, matplotlib. ARCH/DEVICE/EPOCHS/N_SYNTH/WIDTH/
# MAX_SECONDS override the defaults (DEVICE=cpu EPOCHS=1 N_SYNTH=20 WIDTH=8 checks the script on a CPU).
set -euo pipefail
OUT=${OUT:-/tmp/rbout}; mkdir -p "$OUT"
SETS=${SETS:-shared/sets}
THREADS=${THREADS:-$(nproc)}
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
time python -c 'import sys; from ast3stream.cli import main; sys.exit(main())' classify train-real \
    --alerts "$SETS/alerts.npz" --images "$SETS/images.npz" --out-dir "$OUT/models" \
    --arch ${ARCH:-resnet18 braai} --width "${WIDTH:-32}" --folds 3 --epochs "${EPOCHS:-40}" --max-seconds "${MAX_SECONDS:-80}" \
    --n-synth "${N_SYNTH:-3000}" --batch-size 256 --lr 2e-3 --device "${DEVICE:-cuda}" \
    --threads "$THREADS" --workers "$THREADS" 2>&1 | tee "$OUT/train_rb.log"
ls -la "$OUT/models"

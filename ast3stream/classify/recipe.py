"""The shipped real/bogus recipe: simulator + fakes in real frames + real alerts, cross-validated.

Training data, all as model inputs of :mod:`.stamps` (one network serves both lanes, since the
stamps are in PSF and noise units):

* simulator stamps of both lanes (:mod:`.synth`; the pipeline's own night);
* PSF fakes injected into real frames and the real subtraction's bogus (:mod:`.images`), every
  field but ``heldout_field``;
* real alerts of other surveys with weak labels (:mod:`.alertset`): ZTF (by night/object fold)
  and PGIR; Rubin, ATLAS, WINTER and DECam alerts are never trained on (generalisation tests).

Each source carries a fixed share of the loss (``SHARES``), split evenly between its real and its
bogus stamps (:func:`balanced_weights`), so that 10^4 simulator stamps do not drown 600 ZTF alerts
and ZTF's 4:1 real:bogus ratio does not set the prior. Several architectures (``--arch``) are
cross-validated on the same folds; the one with the higher pooled out-of-fold ZTF AUC is shipped.

:func:`crossval` trains one network per ZTF fold and scores the fold's held-out alerts (night and
object unseen). The shipped network is fold 0's. Its calibration (Platt scaling of the logit
margin) is fitted on a validation pool of fold 0's held-out ZTF alerts, the held-out field's
fakes and bogus and a fresh simulator set; its alert ``threshold`` is the calibrated score where
the false-positive rate on the pool's *subtraction* bogus (held-out field and simulator) is
``target_fpr``: the weakly labelled ZTF "bogus" (drb < 0.5, a pipeline score that is itself wrong
for a few per cent of alerts) would set the threshold on label noise rather than on bogus.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch

from .alertset import folds
from .dataset import build_synthetic, concat
from .evaluate import fnr_at_fpr
from .model import RotationInvariantBraai, RotationInvariantResNet
from .realbogus import logit_margin
from .train import fit, pick_device

TRAIN_SURVEYS = ("ztf", "pgir")


def synthetic_inputs(n_real: int, n_bogus: int, seed: int, lanes=("qip", "dip"),
                     snr_range=(5.0, 300.0), workers: int = 1) -> dict[str, np.ndarray]:
    """Simulator stamps of each lane as model inputs (:func:`.dataset.build_synthetic`)."""
    return concat(*(build_synthetic(lane, n_real, n_bogus, seed * 7 + i, snr_range, workers=workers, chunk=250)
                    for i, lane in enumerate(lanes)))


ARCHES = {"braai": lambda width: RotationInvariantBraai("dip", width=width),
          "resnet18": lambda width: RotationInvariantResNet("dip", width=width, stem=(3, 1))}
SHARES = {"synth": 0.55, "images": 0.15, "alerts": 0.3}   #: share of the training weight per source


def balanced_weights(label: np.ndarray, weight: np.ndarray, share: float, n_total: int) -> np.ndarray:
    """Per-stamp weights of one source: its real and its bogus stamps each carry half of
    ``share * n_total`` (in proportion to ``weight``), so that neither the source's size nor its
    class ratio (ZTF alerts: 4 real to 1 bogus) sets the loss."""
    out = np.zeros(len(label), np.float32)
    for c in (0, 1):
        sel = label == c
        if sel.any():
            out[sel] = weight[sel] * (share * n_total / 2) / weight[sel].sum()
    return out


def _train(x, y, w, *, epochs, seed, width, arch="braai", device="cpu", batch_size=128, lr=3e-3,
           max_seconds=None, log=print):
    """One network; the learning rate decays geometrically to 2 % of ``lr`` over ``epochs``."""
    model = ARCHES[arch](width)
    hist = fit(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, gamma=0.02 ** (1 / max(epochs, 1)),
               weight_decay=1e-3, seed=seed, device=device, weight=w, max_seconds=max_seconds, log=lambda s: None)
    log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in hist[-1].items()}))
    return model.eval(), hist


def platt(margin: np.ndarray, y: np.ndarray, l2: float = 0.1, iters: int = 50) -> tuple[float, float]:
    """``(a, b)`` of ``P = sigmoid(a m + b)`` (Platt 1999): logistic regression of the labels on
    the margins, by Newton's method with a ridge ``l2 a^2 / 2`` (scikit-learn's C = 1 / l2 = 10)."""
    m, y = np.asarray(margin, float), np.asarray(y, float)
    X = np.column_stack([m, np.ones_like(m)])
    beta = np.zeros(2)
    ridge = np.diag([l2, 0.0])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X @ beta)))
        grad = X.T @ (p - y) + ridge @ beta
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def crossval(alerts: dict, images: dict, synth: dict, synth_val: dict, *, k: int = 3, epochs: int = 12, width: int = 16,
             seed: int = 0, heldout_field: int = 0, target_fpr: float = 0.01, arch: str = "braai",
             device: str = "cpu", batch_size: int = 128, lr: float = 3e-3, max_seconds: float | None = None,
             log=print) -> dict:
    """Out-of-fold scores of every ZTF alert, fold-0 model, its calibration and threshold.

    ``heldout_field``: the image ``group`` (field/night) never trained on; ``max_seconds`` caps
    each fold's training (the epoch that passes it is the last)."""
    fold, heldout = folds(alerts, k)
    ok = np.isfinite(alerts["ref"])
    train_alert = ok & np.isin(alerts["survey"], TRAIN_SURVEYS)
    img_train = images["group"] != heldout_field
    oof = np.full(len(fold), np.nan)
    models, dev = [], pick_device(device)
    t0 = time.perf_counter()
    for f in range(k):
        tr = train_alert & (fold != f)
        parts = ((synth["label"], np.ones(len(synth["label"]), np.float32), SHARES["synth"]),
                 (images["label"][img_train], np.ones(img_train.sum(), np.float32), SHARES["images"]),
                 (alerts["label"][tr], alerts["weight"][tr], SHARES["alerts"]))
        n = sum(len(p[0]) for p in parts)
        x = np.concatenate([synth["stamps"], images["stamps"][img_train], alerts["stamps"][tr]])
        y = np.concatenate([p[0] for p in parts]).astype(int)
        w = np.concatenate([balanced_weights(p[0], p[1], p[2], n) for p in parts])
        model, _ = _train(x, y, w, epochs=epochs, seed=seed + f, width=width, arch=arch, device=device,
                          batch_size=batch_size, lr=lr, max_seconds=max_seconds, log=log)
        models.append(model)
        te = (fold == f) & (alerts["survey"] == "ztf")
        oof[te] = logit_margin(model, alerts["stamps"][te], dev)
        log(f"{arch} fold {f}: trained on {len(y)} stamps ({tr.sum()} alerts), {time.perf_counter() - t0:.0f} s")
    m0 = models[0]
    val = (fold == 0) & heldout & ok & (alerts["survey"] == "ztf")
    img_val = ~img_train
    sub_m = np.concatenate([logit_margin(m0, images["stamps"][img_val], dev), logit_margin(m0, synth_val["stamps"], dev)])
    sub_y = np.concatenate([images["label"][img_val], synth_val["label"]]).astype(int)
    val_m, val_y = np.concatenate([oof[val], sub_m]), np.concatenate([alerts["label"][val], sub_y]).astype(int)
    a, b = platt(val_m, val_y)
    _, thr = fnr_at_fpr(sub_y, 1 / (1 + np.exp(-(a * sub_m + b))), target_fpr)
    return dict(fold=fold, heldout=heldout, oof_margin=oof, model=m0, models=models, a=a, b=b,
                threshold=float(thr), n_val=int(len(val_y)), n_val_bogus=int((val_y == 0).sum()))

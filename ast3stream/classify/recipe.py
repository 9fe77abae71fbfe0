"""The shipped real/bogus recipe: simulator + fakes in real frames + real alerts, cross-validated.

Training data, all as model inputs of :mod:`.stamps` (one network serves both lanes, since the
stamps are in PSF and noise units):

* simulator stamps of both lanes (:mod:`.synth`; the pipeline's own night);
* PSF fakes injected into real frames and the real subtraction's bogus (:mod:`.images`), held out
  by field/night with the alert folds (:func:`image_folds`);
* real alerts of other surveys with weak labels (:mod:`.alertset`): ZTF (by night/object fold)
  and PGIR; Rubin, ATLAS, WINTER and DECam alerts are never trained on (generalisation tests).

Each source carries a fixed share of the loss (``SHARES``), split evenly between its real and its
bogus stamps (:func:`balanced_weights`), so that 10^4 simulator stamps do not drown 600 ZTF alerts
and ZTF's 4:1 real:bogus ratio does not set the prior. Several architectures (``--arch``) can be
cross-validated on the same folds; the one with the higher pooled out-of-fold ZTF AUC is shipped.

:func:`crossval` trains one network per fold (alerts of the fold's nights and image stamps of its
fields/nights held out; an alert whose object appears in another fold is left out of the held-out
figures) and scores the held-out stamps, then one network on everything: the shipped one. The
out-of-fold margins feed the hybrid combiner, its calibration and its threshold (:mod:`.hybrid`).
"""
from __future__ import annotations

import json
import time

import numpy as np

from .alertset import folds
from .dataset import build_synthetic, concat
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


def image_folds(images: dict, k: int) -> np.ndarray:
    """Fold of each image stamp: its (field, night) ``group``'s rank modulo ``k``, so fold ``f``
    of :func:`crossval` also holds out whole fields/nights of the real-image fakes and bogus."""
    return np.searchsorted(np.unique(images["group"]), images["group"]) % k


def crossval(alerts: dict, images: dict, synth: dict, *, k: int = 3, epochs: int = 12, width: int = 16,
             seed: int = 0, arch: str = "braai", device: str = "cpu", batch_size: int = 128, lr: float = 3e-3,
             max_seconds: float | None = None, log=print) -> dict:
    """Out-of-fold network margins of every alert and image stamp, and the network to ship.

    Fold ``f`` trains on the alerts of the other folds' nights and the image stamps of the other
    folds' fields/nights (:func:`image_folds`) and scores the held-out ones; a last network trains
    on everything (the shipped one). ``max_seconds`` caps each training (the epoch that passes it is
    the last)."""
    fold, heldout = folds(alerts, k)
    ifold = image_folds(images, k)
    train_alert = np.isfinite(alerts["ref"]) & np.isin(alerts["survey"], TRAIN_SURVEYS)
    oof_alert, oof_image = np.full(len(fold), np.nan), np.full(len(ifold), np.nan)
    dev = pick_device(device)
    t0 = time.perf_counter()
    for f in range(k + 1):                         # f == k: every stamp, the shipped network
        tr, itr = train_alert & (fold != f), ifold != f
        parts = ((synth["label"], np.ones(len(synth["label"]), np.float32), SHARES["synth"]),
                 (images["label"][itr], np.ones(itr.sum(), np.float32), SHARES["images"]),
                 (alerts["label"][tr], alerts["weight"][tr], SHARES["alerts"]))
        n = sum(len(p[0]) for p in parts)
        x = np.concatenate([synth["stamps"], images["stamps"][itr], alerts["stamps"][tr]])
        y = np.concatenate([p[0] for p in parts]).astype(int)
        w = np.concatenate([balanced_weights(p[0], p[1], p[2], n) for p in parts])
        model, _ = _train(x, y, w, epochs=epochs, seed=seed + f, width=width, arch=arch, device=device,
                          batch_size=batch_size, lr=lr, max_seconds=max_seconds, log=log)
        if f < k:
            oof_alert[fold == f] = logit_margin(model, alerts["stamps"][fold == f], dev)
            oof_image[ifold == f] = logit_margin(model, images["stamps"][ifold == f], dev)
        log(f"{arch} {'fold %d' % f if f < k else 'final'}: trained on {len(y)} stamps ({tr.sum()} alerts, "
            f"{itr.sum()} image stamps), {time.perf_counter() - t0:.0f} s")
    return dict(fold=fold, heldout=heldout, image_fold=ifold, oof_alert=oof_alert, oof_image=oof_image,
                model=model)

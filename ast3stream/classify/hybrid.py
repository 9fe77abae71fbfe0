"""The hybrid real/bogus score: the network's margin plus stamp features, combined by boosted trees.

Inputs of the combiner are ``[network margin, stamp_features(x)]`` (:mod:`.features`) of the one
model stamp (:mod:`.stamps`), so training, the pipeline's candidates and foreign alerts go
through the same two functions. It is fitted (:mod:`.boost`) on *out-of-fold* margins of
:func:`.recipe.crossval` (alerts of unseen nights and objects, image stamps of unseen
fields/nights) and on a simulator set the networks never saw, with the sources' ``SHARES``, and
cross-validated on the same folds. Its out-of-fold margins are Platt-calibrated. The alert
threshold is per lane (:func:`simulator_thresholds`): the shipped model's scores of a fresh
simulator set of that lane (the pipeline's own candidates; no network or combiner saw it), at
the highest balanced accuracy with FPR <= ``target_fpr`` (:func:`.evaluate.best_threshold`).
Out-of-fold combiners are weaker than the shipped one: their 1 % FPR point (QIP 0.890) lost
8 % of the shipped model's simulator reals. The real images' subtraction bogus of unseen fields
cannot set it: with ~80 of them, 1 % FPR is "above the highest", which on 2026-12-04's networks
also rejected 94 % of the unseen fields' fakes and half of the simulator; the FPR the lane
thresholds give on those bogus and on ZTF's weakly labelled bogus is reported.
"""
from __future__ import annotations

import numpy as np

from .boost import boost_margin, fit_boost
from .evaluate import best_threshold, fnr_at_fpr, roc_auc, versus_baseline
from .features import NAMES, stamp_features
from .recipe import SHARES, TRAIN_SURVEYS, balanced_weights, platt, synthetic_inputs

BOOST = dict(n_trees=400, depth=4, rate=0.05, n_bins=32, l2=1.0)
INPUTS = ("cnn_margin",) + NAMES


def hybrid_inputs(margin: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Combiner inputs (N, len(INPUTS)): the network margin and the stamp features of ``x``."""
    return np.column_stack([np.asarray(margin, float), stamp_features(x)])


def _sources(alerts, images, sim, cv, sim_margin, k):
    """Per source: combiner inputs, label, training weight basis, fold and trainable mask."""
    train_alert = np.isfinite(alerts["ref"]) & np.isin(alerts["survey"], TRAIN_SURVEYS)
    return dict(
        alerts=(hybrid_inputs(cv["oof_alert"], alerts["stamps"]), alerts["label"].astype(int),
                alerts["weight"].astype(float), cv["fold"], train_alert),
        images=(hybrid_inputs(cv["oof_image"], images["stamps"]), images["label"].astype(int),
                np.ones(len(images["label"])), cv["image_fold"], np.ones(len(images["label"]), bool)),
        synth=(hybrid_inputs(sim_margin, sim["stamps"]), sim["label"].astype(int), np.ones(len(sim["label"])),
               np.arange(len(sim["label"])) % k, np.ones(len(sim["label"]), bool)))


def _fit(src, keep, seed, columns):
    X, y, w = [], [], []
    n = sum(int(keep[name].sum()) for name in src)
    for name, (Xs, ys, ws, _, _) in src.items():
        sel = keep[name]
        X.append(Xs[sel][:, columns])
        y.append(ys[sel])
        w.append(balanced_weights(ys[sel], ws[sel], SHARES[name], n))
    return fit_boost(np.concatenate(X), np.concatenate(y), np.concatenate(w), seed=seed, **BOOST)


def fit_hybrid(alerts: dict, images: dict, sim: dict, cv: dict, sim_margin: np.ndarray, *, k: int,
               seed: int = 0) -> dict:
    """Cross-validated combiner, the final one (all rows) and its calibration.

    ``sim`` carries ``lane`` per stamp. Returns ``boost`` (the final model), ``a``, ``b`` and the
    out-of-fold calibrated scores ``oof`` per source (also ``oof_features_only``: the same without
    the network's margin, for context)."""
    src = _sources(alerts, images, sim, cv, sim_margin, k)
    all_cols, feat_cols = np.arange(len(INPUTS)), np.arange(1, len(INPUTS))
    oof = {name: np.full(len(s[1]), np.nan) for name, s in src.items()}
    oof_feat = {name: np.full(len(s[1]), np.nan) for name, s in src.items()}
    for f in range(k):
        keep = {name: s[4] & (s[3] != f) for name, s in src.items()}
        for cols, out in ((all_cols, oof), (feat_cols, oof_feat)):
            model = _fit(src, keep, seed + f, cols)
            for name, s in src.items():
                out[name][s[3] == f] = boost_margin(model, s[0][s[3] == f][:, cols])
    final = _fit(src, {name: s[4] for name, s in src.items()}, seed + k, all_cols)
    # calibration on the out-of-fold margins of every trainable row
    m = np.concatenate([oof[name][s[4]] for name, s in src.items()])
    yy = np.concatenate([s[1][s[4]] for s in src.values()])
    a, b = platt(m, yy)

    def prob(x):
        return 1 / (1 + np.exp(-(a * x + b)))

    return dict(boost=final, a=a, b=b, oof={name: prob(v) for name, v in oof.items()}, oof_features_only=oof_feat,
                prob=prob)


def simulator_thresholds(score: dict, *, target_fpr: float, n: int, seed: int,
                         snr_range: tuple[float, float], workers: int = 1) -> dict:
    """Per lane, the alert threshold of :func:`.evaluate.best_threshold` on ``score[lane](x)`` (the
    shipped model's calibrated P(real) of model inputs) of a fresh simulator set of that lane,
    ``n`` real + ``n`` bogus stamps with SNR in ``snr_range``; returns ``{lane: dict(threshold,
    accuracy, fpr, fnr)}`` and the set's recipe under ``"set"``."""
    out = dict(set=dict(n_real=n, n_bogus=n, seed=seed, snr_range=list(snr_range), target_fpr=target_fpr,
                        rule="ast3stream.classify.evaluate.best_threshold"))
    lanes = tuple(score)
    sim = synthetic_inputs(n, n, seed, lanes=lanes, snr_range=snr_range, workers=workers)
    lane = np.repeat(lanes, 2 * n)
    for name in lanes:
        sel = lane == name
        thr, fig = best_threshold(sim["label"][sel], score[name](sim["stamps"][sel]), target_fpr)
        out[name] = dict(threshold=thr, **fig)
    return out


def simulator_figures(sim_test: dict, p: np.ndarray, thresholds: dict) -> dict:
    """Per lane of ``sim_test`` (``lane`` per stamp): ROC AUC (and the peak-SNR baseline's) of the
    final scores ``p`` and the accuracy at the lane's threshold, overall and for SNR >= 8 / 10."""
    sims = {}
    for lane in np.unique(sim_test["lane"]):
        sel = sim_test["lane"] == lane
        ys, ps, snr = sim_test["label"][sel].astype(int), p[sel], sim_test["snr"][sel]
        ok = (ps >= thresholds[str(lane)]) == (ys == 1)
        sims[str(lane)] = dict(n=int(sel.sum()), roc_auc=roc_auc(ys, ps), baseline_roc_auc=roc_auc(ys, snr),
                               accuracy_at_threshold=float(ok.mean()),
                               accuracy_at_threshold_snr8=float(ok[snr >= 8].mean()),
                               accuracy_at_threshold_snr10=float(ok[snr >= 10].mean()),
                               accuracy_at_half=float(((ps >= 0.5) == (ys == 1)).mean()))
    return sims


def _fold_table(y, p, base, fold, k):
    rows = []
    for f in range(k):
        sel = fold == f
        r = versus_baseline(y[sel], p[sel], base[sel])
        rows.append(dict(fold=f, n_bogus=int((y[sel] == 0).sum()), **r))
    return rows


def report(alerts: dict, images: dict, cv: dict, hyb: dict, *, k: int, thresholds: dict, sim_test: dict,
           sim_test_p: np.ndarray, untrained_p: np.ndarray) -> dict:
    """Held-out figures per source with the peak-SNR baseline (README "Real/bogus on the real sky").

    ``sim_test``/``sim_test_p``: a fresh simulator set of both lanes (``lane`` per stamp) and its
    final scores, decided at each lane's threshold; the real-sky figures at a threshold use the
    stricter lane's; ``untrained_p``: final scores of every alert (reported for surveys never trained on)."""
    prob = hyb["prob"]
    thr = max(thresholds.values())           # the stricter lane's, for the real-sky figures
    out = dict(thresholds=thresholds)
    ztf = (alerts["survey"] == "ztf") & np.isfinite(alerts["ref"]) & cv["heldout"]
    y, base = alerts["label"][ztf].astype(int), alerts["peak_snr"][ztf]
    p, fold = hyb["oof"]["alerts"][ztf], cv["fold"][ztf]
    out["ztf_crossval"] = dict(versus_baseline(y, p, base), per_fold=_fold_table(y, p, base, fold, k),
                               network_only=versus_baseline(y, prob(cv["oof_alert"][ztf]), base),
                               features_only=versus_baseline(y, hyb["oof_features_only"]["alerts"][ztf], base),
                               fpr_at_threshold=float(np.mean(p[y == 0] >= thr)),
                               tpr_at_threshold=float(np.mean(p[y == 1] >= thr)))
    for s in np.unique(alerts["survey"]):
        if s in TRAIN_SURVEYS:
            continue
        sel = (alerts["survey"] == s) & np.isfinite(alerts["ref"])
        out[str(s)] = versus_baseline(alerts["label"][sel], untrained_p[sel], alerts["peak_snr"][sel])
    out["image_bogus_fpr_at_thresholds"] = {lane: float(np.mean(hyb["oof"]["images"][images["label"] == 0] >= t))
                                            for lane, t in thresholds.items()}
    fields = []
    groups = np.unique(images["group"])
    for g in groups:
        sel = images["group"] == g
        yi, pi, snr = images["label"][sel].astype(int), hyb["oof"]["images"][sel], images["snr"][sel]
        bright = (yi == 1) & (snr >= 8)
        r = dict(group=int(g), n_fakes=int(yi.sum()), n_bogus=int((yi == 0).sum()), n_snr8_fakes=int(bright.sum()),
                 **versus_baseline(yi, pi, snr))
        if 0 < yi.sum() < len(yi):
            _, field_thr = fnr_at_fpr(yi, pi, 0.01)
            r.update(frac_snr8_fakes_above_threshold=float(np.mean(pi[bright] >= thr)) if bright.any() else None,
                     field_threshold=field_thr,
                     frac_snr8_fakes_above_field_threshold=float(np.mean(pi[bright] >= field_thr)) if bright.any()
                     else None, fpr_at_threshold=float(np.mean(pi[yi == 0] >= thr)))
        fields.append(r)
    out["image_fields_heldout"] = fields
    out["simulator"] = simulator_figures(sim_test, sim_test_p, thresholds)
    return out

"""Classifier metrics (seed paper Table 3 plus the field's ROC/DET figures) as JSON and PNG.

Accuracy, precision, recall, F1 at the operating threshold; ROC AUC; the false-negative rate
at the threshold where the false-positive rate is 1 % (``fnr_at_fpr1``); and DET curves
(Martin et al. 1997: FNR vs FPR on normal-deviate axes) per candidate-SNR bin. ROC curve and AUC
(Mann-Whitney U / (n_real n_bogus), ties counted half) are NumPy, so training and the real-sky
evaluation run where scikit-learn is absent (the lent GPU); the rest uses scikit-learn.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

SNR_BINS = (0.0, 10.0, 20.0, 50.0, np.inf)


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``: one point per distinct score (called real when ``score >= t``),
    starting at ``t = inf`` (nothing called real)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, float)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return (np.r_[0, fp] / max(fp[-1], 1), np.r_[0, tp] / max(tp[-1], 1), np.r_[np.inf, s[last]])


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, ``P(score_real > score_bogus)`` with ties counted half."""
    y = np.asarray(labels).astype(bool)
    r = rankdata(np.asarray(scores, float))
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def fnr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr_max: float = 0.01) -> tuple[float, float]:
    """Lowest FNR reachable with FPR <= ``fpr_max``, and the score threshold that gives it."""
    fpr, tpr, thr = roc_curve(labels, scores)
    ok = fpr <= fpr_max
    i = np.argmax(np.where(ok, tpr, -1))
    return float(1 - tpr[i]), float(thr[i])


def best_threshold(labels: np.ndarray, scores: np.ndarray, fpr_max: float = 0.01) -> tuple[float, dict]:
    """The score threshold with the highest balanced accuracy ``(TPR + TNR) / 2`` (Youden's J) among
    those whose FPR is <= ``fpr_max``, and its ``accuracy``, ``fpr``, ``fnr``. Unlike the lowest
    threshold reaching ``fpr_max`` (:func:`fnr_at_fpr`), it does not spend the FPR budget when that
    loses more bogus than it gains real ones."""
    fpr, tpr, thr = roc_curve(labels, scores)
    i = int(np.argmax(np.where(fpr <= fpr_max, tpr - fpr, -np.inf)))
    return float(thr[i]), dict(accuracy=float((tpr[i] + 1 - fpr[i]) / 2), fpr=float(fpr[i]), fnr=float(1 - tpr[i]))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    from sklearn import metrics

    labels = np.asarray(labels).astype(int)
    pred = (np.asarray(scores) >= threshold).astype(int)      # the alert stage: rb >= threshold
    out = dict(n=int(len(labels)), n_real=int(labels.sum()), n_bogus=int((labels == 0).sum()),
               threshold=threshold,
               accuracy=float(metrics.accuracy_score(labels, pred)),
               precision=float(metrics.precision_score(labels, pred, zero_division=0)),
               recall=float(metrics.recall_score(labels, pred, zero_division=0)),
               f1=float(metrics.f1_score(labels, pred, zero_division=0)))
    if 0 < labels.sum() < len(labels):
        out["roc_auc"] = roc_auc(labels, scores)
        out["fnr_at_fpr1"], out["threshold_at_fpr1"] = fnr_at_fpr(labels, scores, 0.01)
    return out


def evaluate(labels: np.ndarray, scores: np.ndarray, snr: np.ndarray | None = None,
             kind: np.ndarray | None = None, kinds: list[str] | None = None, threshold: float = 0.5,
             out_json: str | Path | None = None, out_png: str | Path | None = None,
             title: str = "", **extra) -> dict:
    """All metrics, per SNR bin and per kind; writes ``out_json`` and the ROC + DET ``out_png``."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    result = dict(binary_metrics(labels, scores, threshold), **extra)
    bins = []
    if snr is not None:
        snr = np.asarray(snr)
        for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:]):
            sel = (snr >= lo) & (snr < hi)
            if sel.any():
                bins.append(dict(snr_min=lo, snr_max=None if np.isinf(hi) else hi,
                                 **binary_metrics(labels[sel], scores[sel], threshold)))
        result["snr_bins"] = bins
    if kind is not None and kinds is not None:
        result["accuracy_by_kind"] = {
            kinds[k]: float(np.mean((scores[kind == k] >= threshold) == (labels[kind == k] == 1)))
            for k in np.unique(kind)}
    if out_png is not None:
        _plot(labels, scores, snr, result, Path(out_png), title)
        result["png"] = str(out_png)
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=1))
    return result


def _plot(labels, scores, snr, result, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm
    from sklearn import metrics

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    groups = [("all", np.ones(len(labels), bool))]
    if snr is not None:
        groups += [(f"SNR {lo:g}–{hi:g}", (snr >= lo) & (snr < hi)) for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:])]
    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5])
    eps = 1e-4
    for name, sel in groups:
        if not (0 < labels[sel].sum() < sel.sum()):
            continue
        fpr, tpr, _ = roc_curve(labels[sel], scores[sel])
        ax1.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(labels[sel], scores[sel]):.4f})")
        dfpr, dfnr, _ = metrics.det_curve(labels[sel], scores[sel])
        ax2.plot(norm.ppf(np.clip(dfpr, eps, 1 - eps)), norm.ppf(np.clip(dfnr, eps, 1 - eps)), label=name)
    ax1.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate",
            title="ROC")
    ax1.axvline(0.01, color="0.6", lw=0.8, ls="--")
    ax1.legend(fontsize=7, loc="lower right")
    ax2.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax2.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax2.set(xlim=norm.ppf([eps, 0.5]), ylim=norm.ppf([eps, 0.5]), xlabel="false-positive rate",
            ylabel="false-negative rate", title="DET per SNR bin")
    ax2.axvline(norm.ppf(0.01), color="0.6", lw=0.8, ls="--")
    ax2.axhline(norm.ppf(0.01), color="0.6", lw=0.8, ls="--")
    ax2.legend(fontsize=7)
    fig.suptitle(f"{title}  acc {result['accuracy']:.4f}  FNR@FPR1% {result.get('fnr_at_fpr1', np.nan):.4f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def versus_baseline(labels: np.ndarray, scores: np.ndarray, baseline: np.ndarray) -> dict:
    """ROC AUC and FNR at 1 % FPR of ``scores`` and of a trivial ``baseline`` against ``labels``."""
    labels = np.asarray(labels).astype(int)
    out = dict(n=int(len(labels)), n_real=int(labels.sum()))
    if 0 < labels.sum() < len(labels):
        for name, s in (("", scores), ("baseline_", baseline)):
            out[name + "roc_auc"] = roc_auc(labels, s)
            out[name + "fnr_at_fpr1"] = fnr_at_fpr(labels, s, 0.01)[0]
    return out


def plot_real(groups: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> None:
    """ROC of model (solid) and peak-SNR baseline (dashed) per group ``name: (labels, P, baseline)``,
    and the reliability diagram of the calibrated P per group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    for i, (name, (y, p, base)) in enumerate(groups.items()):
        y = np.asarray(y).astype(int)
        if not 0 < y.sum() < len(y):
            continue
        col = f"C{i}"
        fpr, tpr, _ = roc_curve(y, p)
        ax1.plot(fpr, tpr, color=col, label=f"{name} AUC {roc_auc(y, p):.3f}")
        fpr, tpr, _ = roc_curve(y, base)
        ax1.plot(fpr, tpr, color=col, ls="--", lw=0.8, label=f"  peak SNR {roc_auc(y, base):.3f}")
        edges = np.linspace(0, 1, 11)
        k = np.clip(np.digitize(p, edges) - 1, 0, 9)
        n = np.bincount(k, minlength=10)
        frac = np.bincount(k, weights=y, minlength=10) / np.maximum(n, 1)
        ax2.plot(((edges[1:] + edges[:-1]) / 2)[n > 0], frac[n > 0], "o-", color=col, label=name)
    ax1.set(xscale="log", xlim=(1e-3, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate",
            title="ROC vs the producers' scores > 0.5")
    ax1.axvline(0.01, color="0.6", lw=0.8, ls="--")
    ax1.legend(fontsize=6, loc="lower right")
    ax2.plot([0, 1], [0, 1], color="0.6", lw=0.8)
    ax2.set(xlabel="calibrated score", ylabel="fraction with reference > 0.5", title="reliability")
    ax2.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)

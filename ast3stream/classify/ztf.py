"""Generalisation check on real stamps: ZTF alert triplets against ZTF's own ``drb`` scores.

ZTF cutouts are 63x63 (1.01"/px). Each is resampled to the lane's stamp size (91 or 31 px) so
that the PSF *in pixels* resembles ours (ZTF FWHM ~2 px -> ~2.9 px at 91, ~1 px at 31), with
linear interpolation after a Gaussian anti-alias filter when shrinking. The SNR channel is the
resampled difference over its robust (1.4826 MAD) sigma. Negative detections (``isdiffpos``
false) are turned into positive ones: the difference is negated and science and template swap.
``drb`` is a pipeline score, not a label: we report how often the two classifiers agree.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats
from scipy.ndimage import gaussian_filter, zoom


def resample(img: np.ndarray, size: int) -> np.ndarray:
    """Resample a square stamp to (size, size), anti-aliased when shrinking; NaNs become the median."""
    img = np.where(np.isfinite(img), img, np.nanmedian(img))
    f = size / img.shape[0]
    if f < 1:
        img = gaussian_filter(img, sigma=(1 / f - 1) / 2)
    return zoom(img, f, order=1, grid_mode=True, mode="nearest").astype(np.float32)


def triplet_to_stamp(science: np.ndarray, template: np.ndarray, difference: np.ndarray, size: int,
                     positive: bool = True) -> np.ndarray:
    """(4, size, size) raw stamp (difference, template, science, SNR) from a ZTF-style triplet."""
    if not positive:
        science, template, difference = template, science, -difference
    d, t, s = (resample(a, size) for a in (difference, template, science))
    sigma = 1.4826 * np.median(np.abs(d - np.median(d)))
    return np.stack([d, t, s, d / max(sigma, 1e-12)])


def load_ztf(source: str | Path, size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Stamps (N, 4, size, size) and ``candid``, ``drb``, ``rb`` of every ZTF alert with 3 square cutouts."""
    from ..alerts.cutouts import read_cutout
    from ..alerts.reader import read_alerts

    stamps, meta = [], {"candid": [], "drb": [], "rb": []}
    for v in read_alerts(source):
        if v.survey != "ztf" or len(v.cutouts) < 3:
            continue
        sci, tmp, dif = (read_cutout(v.cutouts[k])[0] for k in ("science", "template", "difference"))
        if not (sci.shape == tmp.shape == dif.shape and sci.shape[0] == sci.shape[1]):
            continue
        c = v.record["candidate"]
        stamps.append(triplet_to_stamp(sci, tmp, dif, size, v.isdiffpos))
        meta["candid"].append(v.candid)
        meta["drb"].append(np.nan if c.get("drb") is None else c["drb"])
        meta["rb"].append(np.nan if c.get("rb") is None else c["rb"])
    if not stamps:
        return np.zeros((0, 4, size, size), np.float32), {k: np.array(x) for k, x in meta.items()}
    return np.stack(stamps), {k: np.array(x) for k, x in meta.items()}


def agreement(scores: np.ndarray, reference: np.ndarray, threshold: float = 0.5) -> dict:
    """How our scores agree with a reference score: same side of ``threshold``, correlations, AUC."""
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(reference)
    s, r = scores[ok], reference[ok]
    ref_real = r > threshold
    out = dict(n=int(ok.sum()), n_ref_real=int(ref_real.sum()),
               agree=float(np.mean((s > threshold) == ref_real)),
               spearman=float(stats.spearmanr(s, r).statistic), pearson=float(stats.pearsonr(s, r).statistic))
    if 0 < ref_real.sum() < len(r):
        out["auc_vs_ref_label"] = float(roc_auc_score(ref_real, s))
    return out

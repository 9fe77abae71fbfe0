"""Real alert stamps of any survey as a weakly labelled set, split by night and object.

Labels are the producers' own pipeline scores, not human vetting: ``ref`` is ZTF ``drb`` (its
deep real/bogus, ``rb`` where an alert has no ``drb``), Rubin/DECam ``reliability``, ATLAS the
real share of its classifier votes. ``label = ref > 0.5``; ``weight = clip(|2 ref - 1|, 0.2, 1)``
says how sure the producer was (a ``drb`` of 0.55 weighs 0.2 in training, one of 0.99 weighs 1).
Alerts are de-duplicated by (survey, candid). ``peak_snr`` is the trivial baseline: the largest
SNR-channel value within one FWHM of the centre of the model stamp.

:func:`folds` splits by night and by object: fold ``k`` holds the alerts of the nights hashed to
``k``; an alert whose object also appears on another fold's night is dropped from the held-out
side (``heldout``), so a held-out alert's object and night are both unseen in training.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .stamps import PX_PER_FWHM, SIZE, alert_stamp

REF_ORDER = ("drb", "rb", "reliability", "atlas_real")


def reference(scores: dict) -> float:
    """The producer's real/bogus score used as the weak label (module docstring)."""
    return float(next((scores[k] for k in REF_ORDER if scores.get(k) is not None), np.nan))


def peak_snr(x: np.ndarray) -> np.ndarray:
    """Baseline score: max of the SNR channel within one FWHM of the stamp centre."""
    c = (SIZE - 1) / 2
    yy, xx = np.indices((SIZE, SIZE))
    core = np.hypot(yy - c, xx - c) <= PX_PER_FWHM
    return x[:, 3][:, core].max(axis=1)


def load_alert_set(sources, surveys: tuple[str, ...] | None = None, log=None) -> dict[str, np.ndarray]:
    """Model inputs and metadata of every alert with science+difference stamps below ``sources``."""
    from ..alerts.reader import read_alerts, stamp_triplet

    rows, seen = [], set()
    for source in sources:
        for v in read_alerts(source):
            if (surveys and v.survey not in surveys) or (v.survey, v.candid) in seen:
                continue
            seen.add((v.survey, v.candid))
            t = stamp_triplet(v)
            if t is None:
                continue
            rows.append((alert_stamp(t), v.survey, v.object_id, v.candid, v.mjd, reference(v.scores),
                         v.scores.get("rb", np.nan)))
    if log:
        log(f"{len(rows)} alert stamps from {', '.join(map(str, sources))}")
    x = np.stack([r[0] for r in rows]) if rows else np.zeros((0, 4, SIZE, SIZE), np.float32)
    ref = np.array([r[5] for r in rows], float)
    return dict(stamps=x, survey=np.array([r[1] for r in rows]), object_id=np.array([r[2] for r in rows]),
                candid=np.array([r[3] for r in rows], np.int64), mjd=np.array([r[4] for r in rows], float),
                night=np.floor(np.array([r[4] for r in rows], float)).astype(int), ref=ref,
                rb=np.array([r[6] for r in rows], float),
                label=(ref > 0.5).astype(np.int8), weight=np.clip(np.abs(2 * ref - 1), 0.2, 1.0).astype(np.float32),
                peak_snr=peak_snr(x) if len(x) else np.zeros(0))


def _hash_fold(key: str, k: int) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % k


def folds(data: dict[str, np.ndarray], k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``(fold, heldout)`` per alert: fold by night; ``heldout`` False where the object has
    alerts on nights of other folds (module docstring)."""
    fold = np.array([_hash_fold(f"{s}:{n}", k) for s, n in zip(data["survey"], data["night"])])
    heldout = np.ones(len(fold), bool)
    for oid in np.unique(data["object_id"]):
        sel = data["object_id"] == oid
        if len(np.unique(fold[sel])) > 1:
            heldout[sel] = False
    return fold, heldout

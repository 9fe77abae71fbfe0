"""Frame quality: Pearson r against the catalogue (eq. 4), thumbnail, cloud verdict and flags.

The cloud CNN sees the thumbnail and the catalogue stars' transparency map
(:mod:`.transparency`).

eq. 4: ``r = sum (m - <m>)(m_ref - <m_ref>) / sqrt(sum (m - <m>)^2 sum (m_ref - <m_ref>)^2)`` over
the clean stars matched to the catalogue in ``[mag_min, mag_max]`` (calibrated ``mag`` after the
spatial residual, *all* of them: the zero-point's outlier rejection is not applied, so patchy
cloud lowers r).

Flags: ``bad_wcs`` (no solution or ``rms_arcsec > astrometry.max_rms_arcsec``), ``low_pcc``
(``pcc < quality.pcc_min`` or no pcc), ``cloudy`` (the classifier's ``cloud_prob >=
quality.cloud_threshold`` when ``quality.cloud_cnn_flags``, or the zero point
``quality.cloudy_zp_deficit`` mag below the clear-sky one (:func:`~.transparency.clear_zero_point`:
``detector.zeropoint`` at the exposure time and airmass), or the zero-point scatter above
``quality.cloudy_zp_rms``).
"""
from __future__ import annotations

import importlib

import numpy as np
from astropy.table import Table

from ..config import DetectorConfig, PhotometryConfig, QualityConfig
from ..image import Frame
from .thumbnail import thumbnail, write_thumbnail
from .transparency import clear_zero_point, transparency_map


def pearson_r(m: np.ndarray, m_ref: np.ndarray) -> float:
    """eq. 4 (NaN with fewer than 3 pairs)."""
    ok = np.isfinite(m) & np.isfinite(m_ref)
    if ok.sum() < 3:
        return float("nan")
    a, b = m[ok] - m[ok].mean(), m_ref[ok] - m_ref[ok].mean()
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


def cloud_probability(thumb: np.ndarray, transparency: np.ndarray | None = None) -> float | None:
    """``ast3stream.classify.cloud.predict_cloudy(thumb, transparency)`` when that module exists, else None."""
    try:
        module = importlib.import_module("ast3stream.classify.cloud")
    except ImportError:
        return None
    try:
        p = module.predict_cloudy(thumb, transparency)
    except (FileNotFoundError, OSError, RuntimeError):
        return None
    return None if p is None else float(p)


def assess(frame: Frame, sources: Table, stats: dict, params: QualityConfig, *, photometry: PhotometryConfig,
           detector: DetectorConfig, max_rms_arcsec: float, thumbnail_dir=None) -> dict:
    """Quality of a calibrated frame; writes the keywords into ``frame.primary`` and returns them.

    ``sources`` is the table from :func:`ast3stream.photometry.calibrate` (``mag``, ``ref_mag``,
    ``clean``); ``stats`` the astrometry/photometry numbers (``rms_arcsec``, ``zp``, ``zp_rms`` ...);
    ``max_rms_arcsec`` the astrometric rms above which the frame is flagged ``bad_wcs``.
    """
    qc, pc = params, photometry
    out: dict = {"flags": []}
    pcc = float("nan")
    if sources is not None and "ref_mag" in sources.colnames and "mag" in sources.colnames:
        ref = np.asarray(sources["ref_mag"], float)
        sel = np.isfinite(ref) & (ref >= pc.mag_min) & (ref <= pc.mag_max)
        if "clean" in sources.colnames:
            sel &= np.asarray(sources["clean"], bool)
        pcc = pearson_r(np.asarray(sources["mag"], float)[sel], ref[sel])
        out["n_pcc"] = int(sel.sum())
    out["pcc"] = pcc

    thumb = out["thumbnail_image"] = thumbnail(frame, qc.thumbnail_size)
    if thumbnail_dir is not None:
        name = str(frame.primary.get("EXPID", "frame"))
        out.update(write_thumbnail(thumb, thumbnail_dir, name))
    zp_clear = clear_zero_point(frame.primary, detector, qc.extinction_k)
    out["cloud_prob"] = cloud_probability(thumb, transparency_map(sources, frame.shape, zp_clear, qc, pc))

    rms = stats.get("rms_arcsec")
    if rms is None or not np.isfinite(rms) or rms > max_rms_arcsec:
        out["flags"].append("bad_wcs")
    if not np.isfinite(pcc) or pcc < qc.pcc_min:
        out["flags"].append("low_pcc")
    zp = stats.get("zp")
    deficit = zp_clear - zp if zp is not None and np.isfinite(zp) else None
    out["zp_deficit"] = deficit
    cloudy = qc.cloud_cnn_flags and out["cloud_prob"] is not None and out["cloud_prob"] >= qc.cloud_threshold
    cloudy |= deficit is not None and deficit > qc.cloudy_zp_deficit
    cloudy |= (stats.get("zp_rms") or 0.0) > qc.cloudy_zp_rms
    if cloudy:
        out["flags"].append("cloudy")

    hdr = frame.primary
    hdr["PCC"] = (pcc if np.isfinite(pcc) else -1.0, "Pearson r, calibrated vs reference mag (eq. 4)")
    hdr["CLOUDP"] = (out["cloud_prob"] if out["cloud_prob"] is not None else -1.0, "cloud probability (-1: none)")
    hdr["QFLAGS"] = (",".join(out["flags"]), "quality flags")
    return out

"""The clean star list for astrometry and photometry (the paper's cuts) and the image FWHM.

Cuts, in order: ``flag == 0``; ``flux / fluxerr > snr_min`` (FLUX_AUTO/FLUXERR_AUTO > 20);
``mag_inst < 99``; iterative ``clip_sigma`` clipping of ``fwhm`` and ``elongation`` about their
medians (sigma = 1.4826 MAD, at least 2 % of the median); then the ``drop_least_stellar`` fraction with the lowest
:func:`~ast3stream.sources.extract.stellarity` is dropped.
"""
from __future__ import annotations

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table

from ..config import SourcesConfig


def clean_star_list(table: Table, params: SourcesConfig) -> Table:
    """The subset of ``table`` that passes the paper's cuts (rows keep their ``id``)."""
    sc = params
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(table["fluxerr"] > 0, table["flux"] / table["fluxerr"], 0.0)
    keep = (table["flag"] == 0) & (snr > sc.snr_min) & (table["mag_inst"] < 99)
    for col in ("fwhm", "elongation"):
        values = np.asarray(table[col], float)
        for _ in range(5):
            if keep.sum() <= 5:
                break
            centre = np.median(values[keep])
            spread = max(mad_std(values[keep]), 0.02 * abs(centre))
            new = keep & (np.abs(values - centre) <= sc.clip_sigma * spread)
            if new.sum() == keep.sum():
                break
            keep = new
    clean = table[keep]
    stell = np.nan_to_num(np.asarray(clean["stellarity"], float), nan=1.0)
    n_drop = int(np.floor(sc.drop_least_stellar * len(clean)))
    if n_drop:
        clean = clean[np.sort(np.argsort(stell, kind="stable")[n_drop:])]
    return clean


def image_fwhm(clean: Table) -> float:
    """Image FWHM [px]: the median ``fwhm`` of the clean star list (NaN if empty)."""
    return float(np.median(clean["fwhm"])) if len(clean) else float("nan")

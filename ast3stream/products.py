"""Per-exposure products: one tile-compressed multi-HDU FITS per exposure and lane, and retention.

``<products>/<namespace>/<exposure_id>/<lane>/<exposure_id>_<lane>.fits`` holds

``PRIMARY``  summary header (exposure, lane, quality, zero point, limits, subtraction check)
``DIFF``     difference image (Rice tile compression, float quantised at noise/16)
``SCI``      science image resampled onto the template grid
``TMPL``     template image
``MASK``     mask of the difference (lossless)
``CANDS``    candidate table (with real/bogus scores and cross-matches)

Retention is the product store's (:meth:`agents.store.ProductStore.prune`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

def write_bundle(path: Path, summary: dict, diff, science, template, candidates: Table) -> Path:
    """Write the exposure's bundle atomically; ``summary`` becomes the primary header."""
    primary = fits.PrimaryHDU()
    for key, value in summary.items():
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            continue
        primary.header[key[:8].upper()] = value
    quant = 16
    hdus = [primary,
            fits.CompImageHDU(diff.diff.astype(np.float32, copy=False), diff.header, name="DIFF",
                              compression_type="RICE_1", quantize_level=quant),
            fits.CompImageHDU(science.data.astype(np.float32, copy=False), science.header, name="SCI",
                              compression_type="RICE_1", quantize_level=quant),
            fits.CompImageHDU(template.data.astype(np.float32, copy=False), template.header, name="TMPL",
                              compression_type="RICE_1", quantize_level=quant),
            fits.CompImageHDU(_int16(diff.mask), name="MASK", compression_type="RICE_1"),
            fits.BinTableHDU(_fits_table(candidates), name="CANDS")]
    tmp = path.with_name(path.name + ".part")
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    tmp.replace(path)
    return path


def _int16(mask: np.ndarray) -> np.ndarray:
    """The mask as int16 for FITS without a copy (its bits are below 2**15)."""
    return mask.view(np.int16) if mask.dtype == np.uint16 else mask.astype(np.int16, copy=False)


def _fits_table(table: Table) -> Table:
    out = Table(table, copy=True)
    for name in out.colnames:
        if out[name].dtype.kind == "O":
            out[name] = out[name].astype(str)
    return out

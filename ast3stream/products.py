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

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

def write_bundle(path: Path, summary: dict, diff, science, template, candidates: Table) -> Path:
    """Write the exposure's bundle atomically; ``summary`` becomes the primary header.

    The image HDUs are compressed at the same time, one thread each (cfitsio's quantiser and
    Rice coder release the GIL): a full-size DIP bundle (four 154-Mpix planes) takes 15 s instead
    of 37 s in one ``writeto`` on the H200 (``bench.bundle``), and the exposure's message is
    committed only once it is written.
    """
    primary = fits.PrimaryHDU()
    for key, value in summary.items():
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            continue
        primary.header[key[:8].upper()] = value
    quant = 16
    hdus = [fits.CompImageHDU(diff.diff.astype(np.float32, copy=False), diff.header, name="DIFF",
                              compression_type="RICE_1", quantize_level=quant),
            fits.CompImageHDU(science.data.astype(np.float32, copy=False), science.header, name="SCI",
                              compression_type="RICE_1", quantize_level=quant),
            fits.CompImageHDU(template.data.astype(np.float32, copy=False), template.header, name="TMPL",
                              compression_type="RICE_1", quantize_level=quant),
            fits.CompImageHDU(_int16(diff.mask), name="MASK", compression_type="RICE_1"),
            fits.BinTableHDU(_fits_table(candidates), name="CANDS")]
    with ThreadPoolExecutor(len(hdus)) as pool:
        extensions = list(pool.map(_extension_bytes, hdus))
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        primary.writeto(f)
        for block in extensions:
            f.write(block)
    tmp.replace(path)
    return path


def _extension_bytes(hdu) -> bytes:
    """``hdu`` as it is written after a primary HDU: its header and (compressed) data blocks."""
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    raw = buf.getvalue()
    start = len(fits.PrimaryHDU().header.tostring())  # padded to whole 2880-byte blocks
    assert raw[start:start + 8] == b"XTENSION", "the primary HDU of the buffer has no data"
    return raw[start:]


def _int16(mask: np.ndarray) -> np.ndarray:
    """The mask as int16 for FITS without a copy (its bits are below 2**15)."""
    return mask.view(np.int16) if mask.dtype == np.uint16 else mask.astype(np.int16, copy=False)


def _fits_table(table: Table) -> Table:
    out = Table(table, copy=True)
    for name in out.colnames:
        if out[name].dtype.kind == "O":
            out[name] = out[name].astype(str)
    return out

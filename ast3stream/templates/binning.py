"""n x n binning of a Frame (the QIP template and science images) with its WCS adjusted.

Pixels are summed (flux and electrons conserved; variances add), masks OR-ed; a partial last row/column
is dropped. For binned pixel coordinates (1-based FITS) ``x' = (x - 0.5) / n + 0.5``, so

    CRPIX' = (CRPIX - 0.5) / n + 0.5,   CD' = n CD,   CDELT' = n CDELT (with PC),
    A'_pq = A_pq n^(p+q-1)   (likewise B, AP, BP),

which leaves sky positions unchanged (TPV ``PV`` terms act on intermediate world
coordinates and are unchanged).
"""
from __future__ import annotations

import functools
import re

import numpy as np
from astropy.io import fits

from ..image import Frame

_SIP = re.compile(r"^(A|B|AP|BP)_(\d+)_(\d+)$")


def bin_array(data, n: int, reduce=np.add):
    """Combine ``n x n`` blocks with the binary ufunc ``reduce`` (sum for data, OR for masks);
    NumPy or CuPy arrays."""
    ny, nx = (s // n * n for s in data.shape)
    return functools.reduce(reduce, (data[i:ny:n, j:nx:n] for i in range(n) for j in range(n)))


def bin_header(header: fits.Header, n: int) -> fits.Header:
    """Header with the WCS (incl. SIP) rescaled for ``n x n`` binning; see the module docstring."""
    h = header.copy()
    for ax in (1, 2):
        if f"CRPIX{ax}" in h:
            h[f"CRPIX{ax}"] = (h[f"CRPIX{ax}"] - 0.5) / n + 0.5
        if f"CDELT{ax}" in h:
            h[f"CDELT{ax}"] = h[f"CDELT{ax}"] * n
        for bx in (1, 2):
            if f"CD{ax}_{bx}" in h:
                h[f"CD{ax}_{bx}"] = h[f"CD{ax}_{bx}"] * n
    for key in list(h):
        m = _SIP.match(key)
        if m:
            h[key] = h[key] * float(n) ** (int(m[2]) + int(m[3]) - 1)
    for key in ("FWHM", "SEEING_PX"):
        if key in h:
            h[key] = h[key] / n
    h["BINNING"] = (n, "n x n binned (summed) by ast3stream.templates")
    return h


def bin_frame(frame: Frame, n: int) -> Frame:
    """``n x n`` binned copy of ``frame``: data and variance summed, mask OR-ed, WCS adjusted, no source table."""
    return Frame(
        data=bin_array(np.asarray(frame.data, np.float32), n).astype(np.float32),
        mask=bin_array(np.asarray(frame.mask, np.uint16), n, np.bitwise_or).astype(np.uint16),
        header=bin_header(frame.header, n),
        primary=frame.primary.copy(),
        var=None if frame.var is None else bin_array(np.asarray(frame.var, np.float32), n).astype(np.float32),
    )

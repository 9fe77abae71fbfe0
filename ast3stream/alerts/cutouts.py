"""Postage stamps for alerts: gzipped FITS with the WCS of the stamp, as in ZTF alerts."""
from __future__ import annotations

import gzip
import io
import warnings

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

#: header keywords copied from the image into every stamp when present
KEEP = ("MJD-OBS", "DATE-OBS", "EXPTIME", "FILTER", "EXPID", "FIELD", "BUNIT", "GAIN", "MAGZP")


def make_cutout(data: np.ndarray, header: fits.Header, x: float, y: float, size: int) -> bytes:
    """A ``size`` x ``size`` stamp centred on 0-based pixel (``x``, ``y``) as gzipped FITS.

    Pixels off the image are NaN. The stamp's header holds the image WCS shifted to the
    stamp (SIP kept), so ``WCS(header).pixel_to_world`` works on the stamp directly. The
    bytes are deterministic (gzip mtime 0).
    """
    cut = Cutout2D(np.asarray(data, dtype=np.float32), (x, y), (size, size), wcs=WCS(header),
                   mode="partial", fill_value=np.nan, copy=True)
    hdr = cut.wcs.to_header(relax=True)
    for key in KEEP:
        if key in header:
            hdr[key] = header[key]
    hdr["XCEN"] = (float(x), "0-based x of the stamp centre in the image")
    hdr["YCEN"] = (float(y), "0-based y of the stamp centre in the image")
    buf = io.BytesIO()
    fits.PrimaryHDU(cut.data.astype(np.float32), hdr).writeto(buf)
    return gzip.compress(buf.getvalue(), mtime=0)


def read_cutout(stamp: bytes) -> tuple[np.ndarray, fits.Header]:
    """Pixels and header of a (gzipped or plain) FITS stamp, ours or ZTF/PGIR/WINTER's.

    (ZTF's stamps have a non-standard SIMPLE card; astropy's warning about it is silenced.)
    """
    if stamp[:2] == b"\x1f\x8b":
        stamp = gzip.decompress(stamp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        with fits.open(io.BytesIO(stamp)) as hdul:
            hdu = next(h for h in hdul if h.data is not None)
            return np.asarray(hdu.data, dtype=np.float32), hdu.header.copy()

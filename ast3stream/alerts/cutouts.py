"""Postage stamps for alerts: gzipped FITS with the WCS of the stamp, as in ZTF alerts."""
from __future__ import annotations

import gzip
import io
import warnings

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.nddata.utils import NoOverlapError, overlap_slices
from astropy.wcs import WCS

from ..detection.stamps import to_host

#: header keywords copied from the image into every stamp when present
KEEP = ("MJD-OBS", "DATE-OBS", "EXPTIME", "FILTER", "EXPID", "FIELD", "BUNIT", "GAIN", "MAGZP")


class CutoutMaker:
    """Stamps of one image. Its WCS is parsed once (``WCS(header)`` with SIP takes ~10 ms) and each
    stamp's FITS header is rendered from cards made once per stamp size: only ``CRPIX1/2`` (the
    image WCS shifted to the stamp), ``XCEN`` and ``YCEN`` are new cards (astropy's ``Header``
    bookkeeping cost ~8 ms a stamp)."""

    _VARYING = ("CRPIX1", "CRPIX2")

    def __init__(self, data: np.ndarray, header: fits.Header):
        self.data = data
        wcs = WCS(header).to_header(relax=True)
        self.crpix = tuple(float(wcs.get(k, 0.0)) for k in self._VARYING)
        self.has_crpix = "CRPIX1" in wcs
        for key in self._VARYING:
            wcs.remove(key, ignore_missing=True)
        for key in KEEP:
            if key in header:
                wcs[key] = header[key]
        self.header = wcs
        self._prefix: dict[int, str] = {}

    def _cards(self, size: int) -> str:
        if size not in self._prefix:
            hdr = fits.PrimaryHDU(np.zeros((size, size), np.float32), self.header).header
            self._prefix[size] = "".join(card.image for card in hdr.cards)
        return self._prefix[size]

    def __call__(self, x: float, y: float, size: int) -> bytes:
        """A ``size`` x ``size`` stamp centred on 0-based pixel (``x``, ``y``) as gzipped FITS.

        Pixels off the image are NaN. The stamp's header holds the image WCS shifted to the
        stamp (SIP kept), so ``WCS(header).pixel_to_world`` works on the stamp directly. The
        bytes are deterministic (gzip mtime 0).
        """
        stamp = np.full((size, size), np.nan, ">f4")
        try:
            big, small = overlap_slices(self.data.shape, (size, size), (y, x), mode="partial")
            stamp[small] = to_host(self.data[big])     # the image may be on a GPU (CuPy)
            y0, x0 = big[0].start - small[0].start, big[1].start - small[1].start
        except NoOverlapError:
            y0, x0 = int(round(y)) - size // 2, int(round(x)) - size // 2
        cards = [fits.Card(k, v - o).image for k, v, o in zip(self._VARYING, self.crpix, (x0, y0))] \
            if self.has_crpix else []
        cards += [fits.Card("XCEN", float(x), "0-based x of the stamp centre in the image").image,
                  fits.Card("YCEN", float(y), "0-based y of the stamp centre in the image").image]
        text = self._cards(size) + "".join(cards) + f"{'END':80s}"
        text += " " * (-len(text) % 2880)
        body = stamp.tobytes()
        return gzip.compress(text.encode("ascii") + body + b"\0" * (-len(body) % 2880), compresslevel=6, mtime=0)


def make_cutout(data: np.ndarray, header: fits.Header, x: float, y: float, size: int) -> bytes:
    """One stamp (:class:`CutoutMaker`; for many stamps of one image make the maker once)."""
    return CutoutMaker(data, header)(x, y, size)


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

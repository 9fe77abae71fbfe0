"""The image that travels between stages: pixels, a bit-flag mask, a header, and tables.

A reduced exposure is one FITS file with these HDUs (names are the contract):

``PRIMARY``  empty data; summary header (EXPID, FIELD, MJD-OBS, quality keywords ...)
``SCI``      float32 image in electrons, with the WCS once astrometry has run
``MASK``     bit flags (int16 on disk, uint16 in memory), see :class:`MaskBits`
``SRC``      (optional) source table from the sources stage, 0-based ``x``, ``y``
``VAR``      (optional) float32 per-pixel variance in the image's units squared (a stacked
             template's, or a plane given with the image); without it the noise is modelled
             from the pixels (:mod:`ast3stream.subtraction.noise`)

Pixel convention: ``data[y, x]``, 0-based (see :mod:`ast3stream.config`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS


class MaskBits(enum.IntFlag):
    """Bit flags of the ``MASK`` plane. A pixel is usable when its mask is 0."""

    BAD = 1          #: dead/hot/bad column from the bad-pixel map
    SATURATED = 2
    COSMIC = 4       #: cosmic-ray hit (astroscrappy)
    TRAIL = 8        #: satellite or aircraft trail
    EDGE = 16        #: outside the overlap after resampling, or off the detector
    INTERP = 32      #: value interpolated


@dataclass
class Frame:
    """An image with its mask, header and optional source table."""

    data: np.ndarray
    mask: np.ndarray
    header: fits.Header = field(default_factory=fits.Header)
    primary: fits.Header = field(default_factory=fits.Header)
    sources: Table | None = None
    var: np.ndarray | None = None   #: per-pixel variance (``VAR`` HDU), None when modelled from the pixels

    @property
    def wcs(self) -> WCS:
        return WCS(self.header)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    def write(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write atomically (temporary name, then rename) so readers never see half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        hdus = [
            fits.PrimaryHDU(header=self.primary),
            fits.ImageHDU(self.data.astype(np.float32, copy=False), self.header, name="SCI"),
            fits.ImageHDU(self.mask.astype(np.int16, copy=False), name="MASK"),  # bits < 2**15: no BZERO
        ]
        if self.sources is not None:
            hdus.append(fits.BinTableHDU(self.sources, name="SRC"))
        if self.var is not None:
            hdus.append(fits.ImageHDU(self.var.astype(np.float32, copy=False), name="VAR"))
        tmp = path.with_name(path.name + ".part")
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Frame":
        with fits.open(path, memmap=False) as hdul:
            sources = Table(hdul["SRC"].data) if "SRC" in hdul else None
            return cls(
                data=np.asarray(hdul["SCI"].data, dtype=np.float32),
                mask=np.asarray(hdul["MASK"].data, dtype=np.uint16),
                header=hdul["SCI"].header.copy(),
                primary=hdul[0].header.copy(),
                sources=sources,
                var=np.asarray(hdul["VAR"].data, dtype=np.float32) if "VAR" in hdul else None,
            )

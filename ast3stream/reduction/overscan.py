"""Reading raw frames: overscan subtraction, trimming and amplifier assembly.

The overscan level is the per-row median of the ``BIASSEC`` columns, subtracted row by row
(``ccdproc.subtract_overscan(median=True, overscan_axis=1)``); that follows the row-correlated
bias of CMOS read-outs. An overscan strip of rows (a section spanning all data columns but
not all rows) is handled the same way per column. Multi-extension frames (one HDU per
amplifier with ``DATASEC``/``BIASSEC``/``DETSEC``, e.g. LCO) are corrected per amplifier,
scaled by each amplifier's gain and placed at ``DETSEC / CCDSUM`` into one image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from astropy.io import fits

from ..config import Settings
from .sections import parse_section, section_flips, section_slices


class BadFrameError(ValueError):
    """The raw file cannot be reduced (wrong size, missing data, corrupt); ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class RawImage:
    """An overscan-corrected, trimmed raw image (not yet bias/flat corrected)."""

    data: np.ndarray        #: float32, in ``1/gain`` electrons (ADU, or e- when assembled)
    saturated: np.ndarray   #: bool, raw value at or above the saturation level
    header: fits.Header     #: primary header merged with the image header (pre-trim WCS)
    gain: float             #: e- per unit of ``data``
    read_noise: float       #: e- rms
    saturation: float       #: saturation level in units of ``data`` (before bias subtraction)
    trimsec: str            #: region of the raw image kept, 1-based (single-HDU frames)


@numba.njit(parallel=True, cache=True)
def _trim(raw, y0, x0, row_level, col_level, saturation, data, saturated):
    for y in numba.prange(data.shape[0]):
        for x in range(data.shape[1]):
            v = raw[y0 + y, x0 + x]
            saturated[y, x] = v >= saturation
            data[y, x] = v - row_level[y] - col_level[x]


def subtract_overscan(raw: np.ndarray, biassec: str, trimsec: str,
                      saturation: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Trimmed float32 image minus the per-row (or per-column) median of the overscan, and the
    boolean map of trimmed pixels whose raw value is ``>= saturation`` (one pass over the frame)."""
    by, bx = section_slices(biassec)
    ty, tx = section_slices(trimsec)
    if by.stop > raw.shape[0] or bx.stop > raw.shape[1] or ty.stop > raw.shape[0] or tx.stop > raw.shape[1]:
        raise BadFrameError(f"sections {trimsec}/{biassec} do not fit a {raw.shape[1]}x{raw.shape[0]} frame")
    shape = (ty.stop - ty.start, tx.stop - tx.start)
    row_level, col_level = np.zeros(shape[0], np.float32), np.zeros(shape[1], np.float32)
    if by.start <= ty.start and by.stop >= ty.stop:          # overscan columns: one level per row
        row_level[:] = np.median(raw[ty, bx], axis=1)
    elif bx.start <= tx.start and bx.stop >= tx.stop:        # overscan rows: one level per column
        col_level[:] = np.median(raw[by, tx], axis=0)
    else:
        raise BadFrameError(f"overscan {biassec} covers neither all rows nor all columns of {trimsec}")
    data, saturated = np.empty(shape, np.float32), np.empty(shape, bool)
    _trim(np.require(raw, raw.dtype.newbyteorder("="), "C"), ty.start, tx.start, row_level, col_level,
          float(saturation), data, saturated)
    return data, saturated


def _image_hdus(hdul: fits.HDUList) -> list:
    return [h for h in hdul if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
            and h.header.get("NAXIS", 0) == 2 and h.header.get("NAXIS1", 0) > 0 and h.header.get("NAXIS2", 0) > 0]


def read_raw(path, cfg: Settings) -> RawImage:
    """Open a raw frame, subtract the overscan and trim it; raise :class:`BadFrameError` if unusable."""
    det = cfg.detector
    try:
        with fits.open(path, memmap=False) as hdul:
            hdus = _image_hdus(hdul)
            if not hdus:
                raise BadFrameError(f"{path}: no 2-D image HDU")
            if len(hdus) > 1 and all("DETSEC" in h.header and "BIASSEC" in h.header for h in hdus):
                return _assemble(hdul[0].header, hdus, cfg)
            hdu = hdus[0]
            header = hdul[0].header.copy() if hdu is not hdul[0] else fits.Header()
            header.update(hdu.header)
            raw = hdu.data
            if raw is None:
                raise BadFrameError(f"{path}: image HDU holds no data")
            trimsec = header.get("TRIMSEC", header.get("DATASEC"))
            biassec = header.get("BIASSEC")
            if trimsec is None or biassec is None:
                if raw.shape != (det.ny_raw, det.nx_raw):
                    raise BadFrameError(f"{path}: {raw.shape[1]}x{raw.shape[0]} frame without TRIMSEC/BIASSEC; "
                                        f"{det.name} frames are {det.nx_raw}x{det.ny_raw}")
                trimsec, biassec = det.trimsec, det.biassec
            gain = float(header.get("GAIN", det.gain))
            saturation = float(header.get("SATURATE", det.saturation))
            data, saturated = subtract_overscan(raw, biassec, trimsec, saturation)
    except BadFrameError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise BadFrameError(f"{path}: unreadable FITS ({exc})") from exc
    read_noise = float(header.get("RDNOISE", header.get("READNOIS", det.read_noise)))
    return RawImage(data, saturated, header, gain, read_noise, saturation, trimsec)


def _assemble(primary: fits.Header, hdus: list, cfg: Settings) -> RawImage:
    """Overscan-correct each amplifier, convert it to electrons and place it at its DETSEC."""
    pieces = []
    for hdu in hdus:
        h = hdu.header
        binx, biny = (int(v) for v in str(h.get("CCDSUM", primary.get("CCDSUM", "1 1"))).split()[:2])
        datasec = h.get("DATASEC", h.get("TRIMSEC"))
        gain = float(h.get("GAIN", primary.get("GAIN", cfg.detector.gain)))
        sat = float(h.get("SATURATE", primary.get("SATURATE", cfg.detector.saturation)))
        amp, saturated = subtract_overscan(hdu.data, h["BIASSEC"], datasec, sat)
        amp *= gain
        flip_y, flip_x = section_flips(h["DETSEC"])
        if flip_y:
            amp, saturated = amp[::-1], saturated[::-1]
        if flip_x:
            amp, saturated = amp[:, ::-1], saturated[:, ::-1]
        x0, x1, y0, y1 = parse_section(h["DETSEC"])
        pieces.append(((min(y0, y1) - 1) // biny, (min(x0, x1) - 1) // binx, amp, saturated, sat * gain))
    oy = min(p[0] for p in pieces)
    ox = min(p[1] for p in pieces)
    ny = max(p[0] + p[2].shape[0] for p in pieces) - oy
    nx = max(p[1] + p[2].shape[1] for p in pieces) - ox
    data = np.zeros((ny, nx), np.float32)
    saturated = np.zeros((ny, nx), bool)
    for y0, x0, amp, sat, _ in pieces:
        data[y0 - oy:y0 - oy + amp.shape[0], x0 - ox:x0 - ox + amp.shape[1]] = amp
        saturated[y0 - oy:y0 - oy + amp.shape[0], x0 - ox:x0 - ox + amp.shape[1]] = sat
    header = primary.copy()
    read_noise = float(primary.get("RDNOISE", cfg.detector.read_noise))
    return RawImage(data, saturated, header, 1.0, read_noise, min(p[4] for p in pieces), f"[1:{nx},1:{ny}]")

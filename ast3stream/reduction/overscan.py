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

from ..config import DetectorConfig
from .sections import parse_section, section_flips, section_slices


class BadFrameError(ValueError):
    """The raw file cannot be reduced (wrong size, missing data, corrupt); ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


#: the smallest trimmed frame reduced [px a side]: cosmic-ray and trail search need some room
MIN_SIDE = 32
#: frames with more of their trimmed pixels saturated are rejected
MAX_SATURATED_FRACTION = 0.5


def check_pixels(raw: np.ndarray, where: str) -> None:
    """Raise :class:`BadFrameError` unless ``raw`` is a 2-D real image with finite pixels."""
    if raw.ndim != 2:
        raise BadFrameError(f"{where}: {raw.ndim}-D pixel array, a raw frame is 2-D")
    if raw.dtype.kind not in "iuf":
        raise BadFrameError(f"{where}: pixel type {raw.dtype} is not an integer or real image")
    if raw.dtype.kind == "f":
        bad = raw.size - np.count_nonzero(np.isfinite(raw))
        if bad:
            raise BadFrameError(f"{where}: {bad} NaN or infinite pixel(s) in the raw frame (corrupt read-out)")


def check_signal(data: np.ndarray, saturated: np.ndarray, where: str) -> None:
    """Raise :class:`BadFrameError` for a trimmed frame that is too small, constant or mostly saturated."""
    if min(data.shape) < MIN_SIDE:
        raise BadFrameError(f"{where}: trimmed frame {data.shape[1]}x{data.shape[0]} is smaller than "
                            f"{MIN_SIDE}x{MIN_SIDE} px")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise BadFrameError(f"{where}: no signal, every trimmed pixel is {lo:g} after the overscan")
    fraction = np.count_nonzero(saturated) / saturated.size
    if fraction > MAX_SATURATED_FRACTION:
        raise BadFrameError(f"{where}: {100 * fraction:.0f}% of the pixels are saturated")


def header_number(header, key: str, default: float, where: str, minimum: float = 0.0,
                  inclusive: bool = False) -> float:
    """A finite header value above ``minimum`` (at or above it if ``inclusive``), else :class:`BadFrameError`."""
    value = header.get(key, default)
    try:
        number = np.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = np.nan
    if not np.isfinite(number) or number < minimum or (number == minimum and not inclusive):
        raise BadFrameError(f"{where}: {key} = {value!r} is not a number {'>=' if inclusive else '>'} {minimum:g}")
    return number


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


@numba.njit(parallel=True, cache=True, nogil=True)
def _trim(raw, y0, x0, row_level, col_level, saturation, data, saturated):
    for y in numba.prange(data.shape[0]):
        for x in range(data.shape[1]):
            v = raw[y0 + y, x0 + x]
            saturated[y, x] = v >= saturation
            data[y, x] = v - row_level[y] - col_level[x]


def subtract_overscan(raw: np.ndarray, biassec: str, trimsec: str,
                      saturation: float = np.inf, xp=np) -> tuple[np.ndarray, np.ndarray]:
    """Trimmed float32 image minus the per-row (or per-column) median of the overscan, and the
    boolean map of trimmed pixels whose raw value is ``>= saturation`` (one pass over the frame).

    With ``xp`` CuPy the raw frame goes to the GPU and both come back as CuPy arrays."""
    try:
        by, bx = section_slices(biassec)
        ty, tx = section_slices(trimsec)
    except ValueError as exc:
        raise BadFrameError(str(exc)) from None
    if min(by.start, bx.start, ty.start, tx.start) < 0:
        raise BadFrameError(f"sections {trimsec}/{biassec} start at 0; FITS sections are 1-based")
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
    if xp is not np:
        trimmed = xp.asarray(np.require(raw, raw.dtype.newbyteorder("="), "C"))[ty, tx]
        return (trimmed.astype(xp.float32) - xp.asarray(row_level)[:, None] - xp.asarray(col_level)[None, :],
                trimmed >= saturation)
    data, saturated = np.empty(shape, np.float32), np.empty(shape, bool)
    _trim(np.require(raw, raw.dtype.newbyteorder("="), "C"), ty.start, tx.start, row_level, col_level,
          float(saturation), data, saturated)
    return data, saturated


def _image_hdus(hdul: fits.HDUList) -> list:
    return [h for h in hdul if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
            and h.header.get("NAXIS", 0) == 2 and h.header.get("NAXIS1", 0) > 0 and h.header.get("NAXIS2", 0) > 0]


def read_raw(path, detector: DetectorConfig, xp=np) -> RawImage:
    """Open a raw frame, subtract the overscan and trim it; raise :class:`BadFrameError` if unusable.

    With ``xp`` CuPy a single-image frame is trimmed on the GPU (``data`` and ``saturated`` are
    CuPy arrays); amplifier mosaics are assembled on the host."""
    det = detector
    try:
        with fits.open(path, memmap=False) as hdul:
            hdus = _image_hdus(hdul)
            if not hdus:
                raise BadFrameError(f"{path}: no 2-D image HDU")
            if len(hdus) > 1 and all("DETSEC" in h.header and "BIASSEC" in h.header for h in hdus):
                image = _assemble(hdul[0].header, hdus, det, path)
                check_signal(image.data, image.saturated, path)
                return image
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
            gain = header_number(header, "GAIN", det.gain, path)
            saturation = header_number(header, "SATURATE", det.saturation, path)
            read_noise = header_number(header, "RDNOISE", header.get("READNOIS", det.read_noise), path, inclusive=True)
            check_pixels(raw, path)
            try:
                data, saturated = subtract_overscan(raw, biassec, trimsec, saturation, xp)
            except BadFrameError as exc:
                raise BadFrameError(f"{path}: {exc}") from None
    except BadFrameError:
        raise
    except Exception as exc:  # astropy and cfitsio raise many types on a damaged file
        raise BadFrameError(f"{path}: unreadable FITS ({type(exc).__name__}: {exc})") from exc
    check_signal(data, saturated, path)
    return RawImage(data, saturated, header, gain, read_noise, saturation, trimsec)


def _assemble(primary: fits.Header, hdus: list, det: DetectorConfig, path) -> RawImage:
    """Overscan-correct each amplifier, convert it to electrons and place it at its DETSEC."""
    pieces = []
    for i, hdu in enumerate(hdus):
        h = hdu.header
        where = f"{path}[{hdu.name or i}]"
        binx, biny = (int(v) for v in str(h.get("CCDSUM", primary.get("CCDSUM", "1 1"))).split()[:2])
        datasec = h.get("DATASEC", h.get("TRIMSEC"))
        gain = header_number(h, "GAIN", primary.get("GAIN", det.gain), where)
        sat = header_number(h, "SATURATE", primary.get("SATURATE", det.saturation), where)
        check_pixels(hdu.data, where)
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
    read_noise = header_number(primary, "RDNOISE", det.read_noise, path, inclusive=True)
    return RawImage(data, saturated, header, 1.0, read_noise, min(p[4] for p in pieces), f"[1:{nx},1:{ny}]")

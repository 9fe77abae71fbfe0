"""Raw frame -> reduced :class:`~ast3stream.image.Frame` in electrons with its mask plane.

``data_e = gain x (raw - overscan - bias) / flat``; then saturated, bad, cosmic-ray and trail
pixels get their :class:`~ast3stream.image.MaskBits`, cosmic-ray pixels are replaced by
L.A.Cosmic's masked median (and flagged ``INTERP``): astroscrappy on candidate cells on the host,
the array L.A.Cosmic (:func:`~ast3stream.reduction.cosmics.lacosmic`) where the frame is on the
GPU (``reduction.cosmic_method``), and the raw header's approximate WCS
moves, shifted by the trim, to the ``SCI`` header.
"""
from __future__ import annotations

import re
import time

import numba
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..config import DetectorConfig, ReductionConfig
from ..detection.stamps import array_module, to_host
from ..image import Frame, MaskBits
from ..sources.extract import STRIP_MIN_PIXELS
from ..sources.strips import n_workers, pool
from ..subtraction.backend import use_gpu
from .calibration import Calibration
from .cosmics import candidate_pixels, detect_cosmics, lacosmic
from .overscan import BadFrameError, read_raw
from .sections import section_slices
from .trails import find_trails, trail_pixels

#: header keywords that describe the raw data layout or its WCS (not carried to PRIMARY)
_LAYOUT = re.compile(r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|BZERO|BSCALE|BLANK|PCOUNT|GCOUNT|XTENSION|EXTNAME|"
                     r"TRIMSEC|BIASSEC|DATASEC|DETSEC|CCDSEC|CHECKSUM|DATASUM|WCSAXES|CTYPE\d|CRVAL\d|"
                     r"CRPIX\d|CDELT\d|CUNIT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|[AB]P?_(ORDER|\d+_\d+)|"
                     r"[AB]P?_DMAX|LONPOLE|LATPOLE|RADESYS|EQUINOX)$")


@numba.njit(parallel=True, cache=True, nogil=True)
def _flag_grown(where, mask, bit, radius):
    ny, nx = where.shape
    for y in numba.prange(ny):
        for x in range(nx):
            if where[y, x]:
                for dy in range(-radius, radius + 1):
                    r = radius - abs(dy)
                    if 0 <= y + dy < ny:
                        for dx in range(max(-r, -x), min(r, nx - 1 - x) + 1):
                            mask[y + dy, x + dx] |= bit


def flag_grown(where: np.ndarray, mask: np.ndarray, bit: int, radius: int = 0) -> None:
    """Set ``bit`` in ``mask`` within ``|dy| + |dx| <= radius`` of every true pixel of ``where``
    (``ndimage.binary_dilation(where, iterations=radius)``, done in place in one pass; CuPy
    arrays with CuPy's ``binary_dilation``)."""
    if array_module(where) is not np:
        from cupyx.scipy import ndimage

        grown = ndimage.binary_dilation(where, ndimage.generate_binary_structure(2, 1), iterations=radius) \
            if radius > 0 else where
        mask[grown] |= mask.dtype.type(bit)
        return
    _flag_grown(where, mask, mask.dtype.type(bit), int(radius))


def _approximate_wcs(header: fits.Header, trimsec: str, where) -> fits.Header:
    """The raw header's celestial WCS, shifted to the trimmed pixel grid (empty if none).

    A WCS that is there but unusable (unknown or unpaired axis types, not RA/Dec, a singular
    or non-finite matrix, a pointing off the sky) raises :class:`BadFrameError`.
    """
    if "CTYPE1" not in header:
        return fits.Header()
    import warnings
    ty, tx = section_slices(trimsec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header).celestial
            if wcs.naxis != 2 or wcs.world_axis_physical_types != ["pos.eq.ra", "pos.eq.dec"]:
                raise ValueError(f"celestial axes {list(wcs.wcs.ctype)} are not RA, Dec (in this order)")
            wcs = wcs.slice((ty, tx))
            scale = np.abs(np.linalg.det(wcs.pixel_scale_matrix))
            x, y = (tx.stop - tx.start - 1) / 2, (ty.stop - ty.start - 1) / 2
            ra, dec = wcs.all_pix2world(x, y, 0)
            back = wcs.all_world2pix(ra, dec, 0)
    except Exception as exc:  # wcslib raises its own types for each kind of nonsense
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise BadFrameError(f"{where}: unusable WCS in the raw header ({reason})") from exc
    if not (np.isfinite(scale) and scale > 0 and np.isfinite([ra, dec]).all()
            and np.hypot(back[0] - x, back[1] - y) < 1):
        raise BadFrameError(f"{where}: unusable WCS in the raw header (no finite, invertible sky position "
                            "at the frame centre)")
    return wcs.to_header(relax=True)


def reduce_raw(raw_path, calib: Calibration | None, params: ReductionConfig, detector: DetectorConfig,
               timings: dict | None = None) -> Frame:
    """Reduce one raw exposure; ``timings`` (optional) receives the seconds of each step."""
    rc = params
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    if use_gpu(rc.backend):
        import cupy as xp
    else:
        xp = np
    raw = read_raw(raw_path, detector, xp)
    header = _approximate_wcs(raw.header, raw.trimsec, raw_path)
    data = raw.data
    timings["overscan"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    xp = array_module(data)
    mask = xp.zeros(data.shape, np.uint16)
    if calib is not None:
        try:
            calib.apply(data, raw.gain, mask, MaskBits.BAD)
        except ValueError as exc:
            raise BadFrameError(f"{raw_path}: {exc}") from exc
    elif raw.gain != 1:
        data *= np.float32(raw.gain)
    flag_grown(raw.saturated, mask, MaskBits.SATURATED, rc.saturation_grow)
    timings["calibrate"] = time.perf_counter() - t0

    hits = None
    array_cosmics = rc.cosmics and (rc.cosmic_method == "lacosmic" or (rc.cosmic_method == "auto" and xp is not np))
    if array_cosmics:                               # L.A.Cosmic on the frame's own array module (the GPU's)
        t0 = time.perf_counter()
        allowed = candidate_pixels(data, mask, raw.read_noise, rc.cosmic_sigclip, rc.cosmic_tile, rc.cosmic_pad)
        hits = lacosmic(data, mask, raw.read_noise, 1e30, rc.cosmic_sigclip, objlim=rc.cosmic_objlim,
                        niter=rc.cosmic_niter, allowed=allowed)
        timings["cosmics"] = time.perf_counter() - t0
    if xp is not np:
        t0 = time.perf_counter()
        data, mask, hits = to_host(data), to_host(mask), None if hits is None else to_host(hits)
        timings["to host"] = time.perf_counter() - t0   # trails (and astroscrappy's cells) run on the host
    if rc.cosmics and not array_cosmics:
        t0 = time.perf_counter()
        n = n_workers(rc.workers) if data.size >= STRIP_MIN_PIXELS else 1
        hits = detect_cosmics(data, mask, raw.read_noise, 1e30, rc.cosmic_sigclip, rc.cosmic_objlim,
                              rc.cosmic_niter, rc.cosmic_tile, rc.cosmic_pad, workers=pool(n))
        timings["cosmics"] = time.perf_counter() - t0
    ncosmic = 0 if hits is None else len(hits)
    if ncosmic:
        mask[hits[:, 0], hits[:, 1]] |= np.uint16(MaskBits.COSMIC | MaskBits.INTERP)

    trails = []
    if rc.trails:
        t0 = time.perf_counter()
        trails = find_trails(data, mask, rc.trail_threshold, rc.trail_min_length_px, rc.trail_bin)
        mask[trail_pixels(data.shape, trails)] |= np.uint16(MaskBits.TRAIL)
        timings["trails"] = time.perf_counter() - t0

    primary = fits.Header([card for card in raw.header.cards
                           if card.keyword and not _LAYOUT.match(card.keyword)
                           and card.keyword not in ("COMMENT", "HISTORY", "")])
    primary["REDVER"] = (rc.version, "ast3stream reduction version")
    primary["NCOSMIC"] = (ncosmic, "pixels flagged as cosmic rays")
    primary["NTRAILS"] = (len(trails), "satellite/aircraft trail segments masked")
    if calib is not None:
        primary["NBADPIX"] = (int(calib.meta.get("NBADPIX", calib.bpm.sum())), "bad pixels from the calibration")
    header["BUNIT"] = "electron"
    header["GAIN"] = (1.0, "e-/unit: the image is in electrons")
    header["RDNOISE"] = (raw.read_noise, "[e-] read noise")
    header["SATURATE"] = (raw.saturation * raw.gain, "[e-] saturation before bias subtraction")
    header["TRIMSEC"] = (str(raw.trimsec).replace(" ", ""), "raw region kept")
    for i, tr in enumerate(trails):
        header[f"TRAIL{i}"] = (f"{tr.x0:.0f},{tr.y0:.0f},{tr.x1:.0f},{tr.y1:.0f},{tr.half_width:.1f}",
                               "trail x0,y0,x1,y1,half-width (0-based px)")
    return Frame(data=data, mask=mask, header=header, primary=primary)

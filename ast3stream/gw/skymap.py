"""HEALPix sky maps, always held as a multi-order (NUNIQ) table.

A map is an astropy :class:`~astropy.table.Table` with ``UNIQ`` and ``PROBDENSITY``
[sr^-1] (and ``DISTMU``, ``DISTSIGMA``, ``DISTNORM`` when the map has a distance layer), as
LVK's ``*.multiorder.fits`` files. Flat maps (RING or NESTED, one probability per pixel)
are converted on reading: ``UNIQ = 4 nside^2 + ipix_nested`` and
``PROBDENSITY = PROB / pixel_area``. Multi-order conventions follow Singer & Price,
"ligo.skymap" (NUNIQ: Górski et al. 2005; Fernique et al. 2015 for MOC).
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy_healpix import HEALPix, level_ipix_to_uniq, uniq_to_level_ipix

DISTANCE_COLUMNS = ("DISTMU", "DISTSIGMA", "DISTNORM")


class BadSkymap(ValueError):
    """Bytes or a file that are not a usable HEALPix probability map; the message says why."""


def read_skymap(source: str | Path | bytes) -> Table:
    """A multi-order map from a FITS file or FITS bytes (gzipped or not; flat or NUNIQ).

    Raises :class:`BadSkymap` for anything but a HEALPix map of finite, non-negative
    probabilities that add up to 1 (within 1 %).
    """
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        with fits.open(io.BytesIO(data)) as hdul:
            hdu = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
            if hdu is None:
                raise BadSkymap("no binary table HDU")
            header, cols = hdu.header, hdu.columns.names
            table = {name: np.asarray(hdu.data[name]).ravel() for name in cols}
    except BadSkymap:
        raise
    except Exception as exc:  # gzip, zlib and astropy raise many types on damaged bytes
        raise BadSkymap(f"not a FITS sky map ({type(exc).__name__}: {exc})") from exc
    meta = {k: header[k] for k in ("OBJECT", "DATE-OBS", "MJD-OBS", "CREATOR", "DISTMEAN", "DISTSTD",
                                   "INSTRUME", "ORDERING") if k in header}
    if str(header.get("ORDERING", "")).upper() == "NUNIQ":
        if not {"UNIQ", "PROBDENSITY"} <= set(table):
            raise BadSkymap(f"NUNIQ map without UNIQ and PROBDENSITY columns (has {cols})")
        out = Table({k: table[k] for k in ("UNIQ", "PROBDENSITY", *DISTANCE_COLUMNS) if k in table}, meta=meta)
        uniq = np.asarray(out["UNIQ"])
        if uniq.dtype.kind not in "iu" or len(uniq) == 0 or uniq.min() < 4 or uniq.max() >= 16 * 4**29:
            raise BadSkymap("UNIQ values are not NUNIQ indices of HEALPix orders 0-29")
    else:
        out = _from_flat(table, cols, header, meta)
    out["UNIQ"] = out["UNIQ"].astype(np.int64)
    density = np.asarray(out["PROBDENSITY"])
    if density.dtype.kind not in "iuf" or not np.isfinite(density).all() or (density < 0).any():
        raise BadSkymap("probabilities are not all finite and non-negative")
    total = float(probabilities(out).sum())
    if abs(total - 1) > 0.01:
        raise BadSkymap(f"probabilities add up to {total:.4g}, not 1")
    return out


def _from_flat(table: dict, cols: list[str], header: fits.Header, meta: dict) -> Table:
    nside = header.get("NSIDE")
    if not isinstance(nside, int) or isinstance(nside, bool) or not 1 <= nside <= 2**29 or nside & (nside - 1):
        raise BadSkymap(f"NSIDE = {nside!r} is not a power of 2")
    if table[cols[0]].dtype.kind not in "iuf":
        raise BadSkymap(f"the first column of a flat map is not a probability (columns {cols})")
    prob = table[cols[0]].astype(np.float64)          # PROB / PROBABILITY: probability per pixel
    if prob.size != 12 * nside**2:
        raise BadSkymap(f"flat map has {prob.size} pixels, NSIDE = {nside} needs {12 * nside**2}")
    ordering = str(header.get("ORDERING", "RING")).upper()
    if ordering not in ("RING", "NESTED"):
        raise BadSkymap(f"ORDERING = {ordering!r} is not RING, NESTED or NUNIQ")
    if not np.isfinite(prob).all() or (prob < 0).any():
        raise BadSkymap("probabilities are not all finite and non-negative")
    ipix = np.arange(prob.size, dtype=np.int64)
    if ordering == "RING":
        ipix = HEALPix(nside, order="ring").ring_to_nested(ipix)
    keep = prob > 0
    level = int(np.log2(nside))
    area = 4 * np.pi / (12 * nside**2)
    columns = {"UNIQ": level_ipix_to_uniq(level, ipix[keep]), "PROBDENSITY": prob[keep] / area}
    columns.update({k: table[k][keep].astype(np.float64) for k in DISTANCE_COLUMNS if k in table})
    return Table(columns, meta=meta)


def pixel_area(skymap: Table) -> np.ndarray:
    """Solid angle of each pixel [sr]."""
    level, _ = uniq_to_level_ipix(np.asarray(skymap["UNIQ"]))
    return 4 * np.pi / (12 * 4.0**level)


def probabilities(skymap: Table) -> np.ndarray:
    """Probability in each pixel: PROBDENSITY x area (sums to 1 for a normalised map)."""
    return np.asarray(skymap["PROBDENSITY"], dtype=np.float64) * pixel_area(skymap)


def max_order(skymap: Table) -> int:
    return int(uniq_to_level_ipix(np.asarray(skymap["UNIQ"]))[0].max())


def pixel_index(skymap: Table, ipix: np.ndarray, order: int) -> np.ndarray:
    """Row of the map pixel containing each NESTED pixel ``ipix`` of ``order`` (-1 if none).

    Each map pixel of level ``l <= order`` covers the order-``order`` range
    ``[i 4^(order-l), (i+1) 4^(order-l))``; a sorted search finds it. Map pixels finer than
    ``order`` cannot contain a pixel of ``order``: where the map is finer, the answer is -1.
    """
    level, idx = uniq_to_level_ipix(np.asarray(skymap["UNIQ"]))
    shift = 2 * (order - level)
    usable = np.flatnonzero(shift >= 0)
    perm = usable[np.argsort(idx[usable] << shift[usable])]
    start, stop = idx[perm] << shift[perm], (idx[perm] + 1) << shift[perm]
    pos = np.clip(np.searchsorted(start, ipix, side="right") - 1, 0, None)
    ok = (start[pos] <= ipix) & (ipix < stop[pos])
    return np.where(ok, perm[pos], -1)


def rows_at(skymap: Table, ra, dec) -> np.ndarray:
    """Map row holding each position (deg); -1 outside the map's coverage."""
    order = max_order(skymap)
    ipix = HEALPix(2**order, order="nested").lonlat_to_healpix(np.atleast_1d(ra) * u.deg, np.atleast_1d(dec) * u.deg)
    return pixel_index(skymap, ipix, order)


def probdensity_at(skymap: Table, ra, dec) -> np.ndarray:
    """Probability density at positions [deg^-2]."""
    rows = rows_at(skymap, ra, dec)
    dens = np.where(rows >= 0, np.asarray(skymap["PROBDENSITY"])[rows], 0.0)
    return dens * (np.pi / 180) ** 2


def credible_levels(skymap: Table) -> np.ndarray:
    """Greedy credible level of every pixel: the probability of all pixels at least as dense."""
    order = np.argsort(-np.asarray(skymap["PROBDENSITY"]), kind="stable")
    levels = np.empty(len(skymap))
    levels[order] = np.cumsum(probabilities(skymap)[order])
    return levels


def credible_level_at(skymap: Table, ra, dec) -> np.ndarray:
    """Smallest credible region holding each position (1 outside the map)."""
    rows = rows_at(skymap, ra, dec)
    return np.where(rows >= 0, credible_levels(skymap)[rows], 1.0)


def credible_area(skymap: Table, level: float = 0.9) -> float:
    """Area of the ``level`` credible region [deg^2]."""
    inside = credible_levels(skymap) <= level
    return float(pixel_area(skymap)[inside].sum() * (180 / np.pi) ** 2)


def write_skymap(skymap: Table, path: str | Path) -> Path:
    """Write a map as a multi-order FITS file (``ORDERING = NUNIQ``, as LVK's ``*.multiorder.fits``),
    whole: written beside ``path`` and renamed over it, so a reader (the worker's coverage timer)
    sees the old map or the new one, never a part (a notice delivered twice rewrites its map)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = Table(skymap, copy=False)
    out.meta = {**skymap.meta, "ORDERING": "NUNIQ", "INDXSCHM": "EXPLICIT"}
    tmp = path.with_name(path.name + ".part")
    out.write(tmp, format="fits", overwrite=True)
    tmp.replace(path)
    return path

"""Reference stars through one interface, read from local files (FITS, CSV, ECSV).

Columns are normalised to ``ra``, ``dec`` [deg], ``mag``, ``mag_err``. Recognised layouts:

* the simulator's ``refcat.fits``: ``ra, dec, g, g_err``;
* Gaia (DR2/DR3 tables, legacypipe chunks): ``ra, dec, phot_g_mean_mag`` and
  ``phot_g_mean_flux_over_error`` (``mag_err = 2.5 / ln 10 / (S/N)``);
* Pan-STARRS1: ``raMean, decMean, gMeanPSFMag, gMeanPSFMagErr`` (or ``ra, dec, gmag, e_gmag``).

``RefCat.from_file`` takes one path or several (e.g. the Gaia chunks of a legacypipe test case,
concatenated); :meth:`RefCat.cone` returns the stars within a radius, using a 3-D KD-tree.
A catalogue too large for memory is partitioned once on HEALPix pixels (:func:`open_refcat`);
``open_refcat(...).field(ra, dec, radius)`` is then the :class:`RefCat` of one field.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table, vstack
from scipy.spatial import cKDTree

from .sky import META, SkyCatalog, cache_path, chord
from .sky import unit_vectors as _unit_vectors

_LAYOUTS = (  # (ra, dec, mag, mag_err or flux_over_error marked with a leading '/')
    ("ra", "dec", "g", "g_err"),
    ("ra", "dec", "phot_g_mean_mag", "/phot_g_mean_flux_over_error"),
    ("raMean", "decMean", "gMeanPSFMag", "gMeanPSFMagErr"),
    ("ra", "dec", "gmag", "e_gmag"),
    ("ra", "dec", "mag", "mag_err"),
)


def normalise(table: Table) -> Table:
    """A table with ``ra, dec, mag, mag_err`` (plus the original columns) from a known layout."""
    cols = set(table.colnames)
    for ra, dec, mag, err in _LAYOUTS:
        if {ra, dec, mag, err.lstrip("/")} <= cols:
            out = Table(table, copy=False)
            out["ra"] = np.asarray(table[ra], float)
            out["dec"] = np.asarray(table[dec], float)
            out["mag"] = np.asarray(table[mag], float)
            if err.startswith("/"):
                snr = np.asarray(table[err[1:]], float)
                out["mag_err"] = 2.5 / np.log(10) / np.where(snr > 0, snr, np.nan)
            else:
                out["mag_err"] = np.asarray(table[err], float)
            good = np.isfinite(out["ra"]) & np.isfinite(out["dec"]) & np.isfinite(out["mag"])
            return out[good]
    raise ValueError(f"no known reference-catalogue layout in columns {sorted(cols)[:12]}...")


class RefCat:
    """Reference stars in memory with a cone search."""

    def __init__(self, table: Table):
        self.table = normalise(table)
        self._tree = cKDTree(_unit_vectors(self.table["ra"], self.table["dec"]))

    def __len__(self) -> int:
        return len(self.table)

    @classmethod
    def from_file(cls, paths) -> "RefCat":
        """Read one file or several (concatenated)."""
        return cls(_read(paths))

    def cone(self, ra: float, dec: float, radius_deg: float) -> Table:
        """Stars within ``radius_deg`` of (ra, dec), brightest first."""
        idx = self._tree.query_ball_point(_unit_vectors([ra], [dec])[0], chord(radius_deg))
        out = self.table[np.asarray(idx, int)]
        return out[np.argsort(out["mag"], kind="stable")]


def _read(paths) -> Table:
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    tables = [normalise(Table.read(p, format="ascii.csv" if str(p).endswith(".csv") else None)) for p in paths]
    return tables[0] if len(tables) == 1 else vstack(tables, metadata_conflicts="silent")


class RefCatalog:
    """A reference catalogue partitioned on HEALPix pixels (in memory or memory-mapped)."""

    COLUMNS = ("ra", "dec", "mag", "mag_err")

    def __init__(self, sky: SkyCatalog):
        self.sky = sky

    def __len__(self) -> int:
        return len(self.sky)

    def field(self, ra: float, dec: float, radius_deg: float) -> RefCat:
        """The stars within ``radius_deg`` of a field centre, as an in-memory :class:`RefCat`."""
        tab = self.sky.cone(ra, dec, radius_deg)
        del tab["sep_deg"]
        return RefCat(tab)


def open_refcat(paths, cache_dir: str | Path | None = None, nside: int = 32) -> RefCatalog:
    """A partitioned folder as it is; else the file(s) read, partitioned (``ra, dec, mag,
    mag_err``) and, with ``cache_dir``, written there once so later opens map it from disk."""
    if isinstance(paths, (str, Path)) and (Path(paths) / META).exists():
        return RefCatalog(SkyCatalog.open(paths))
    target = cache_path(paths, cache_dir, f"refcat{nside}") if cache_dir is not None else None
    if target is not None and (target / META).exists():
        return RefCatalog(SkyCatalog.open(target))
    tab = _read(paths)
    sky = SkyCatalog.from_columns({k: np.asarray(tab[k], float) for k in RefCatalog.COLUMNS}, nside)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        sky = SkyCatalog.open(sky.write(target))
    return RefCatalog(sky)


def as_refcat(refcat) -> RefCat:
    """Accept a :class:`RefCat`, an astropy ``Table`` or path(s)."""
    if isinstance(refcat, RefCat):
        return refcat
    if isinstance(refcat, Table):
        return RefCat(refcat)
    return RefCat.from_file(refcat)

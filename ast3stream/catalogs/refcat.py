"""Reference stars through one interface, read from local files (FITS, CSV, ECSV).

Columns are normalised to ``ra``, ``dec`` [deg], ``mag``, ``mag_err``. Recognised layouts:

* the simulator's ``refcat.fits``: ``ra, dec, g, g_err``;
* Gaia (DR2/DR3 tables, legacypipe chunks): ``ra, dec, phot_g_mean_mag`` and
  ``phot_g_mean_flux_over_error`` (``mag_err = 2.5 / ln 10 / (S/N)``);
* Pan-STARRS1: ``raMean, decMean, gMeanPSFMag, gMeanPSFMagErr`` (or ``ra, dec, gmag, e_gmag``).

``RefCat.from_file`` takes one path or several (e.g. the Gaia chunks of a legacypipe test case,
concatenated); :meth:`RefCat.cone` returns the stars within a radius, using a 3-D KD-tree.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table, vstack
from scipy.spatial import cKDTree

_LAYOUTS = (  # (ra, dec, mag, mag_err or flux_over_error marked with a leading '/')
    ("ra", "dec", "g", "g_err"),
    ("ra", "dec", "phot_g_mean_mag", "/phot_g_mean_flux_over_error"),
    ("raMean", "decMean", "gMeanPSFMag", "gMeanPSFMagErr"),
    ("ra", "dec", "gmag", "e_gmag"),
    ("ra", "dec", "mag", "mag_err"),
)


def _unit_vectors(ra, dec) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


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
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        tables = [normalise(Table.read(p, format="ascii.csv" if str(p).endswith(".csv") else None))
                  for p in paths]
        return cls(tables[0] if len(tables) == 1 else vstack(tables, metadata_conflicts="silent"))

    def cone(self, ra: float, dec: float, radius_deg: float) -> Table:
        """Stars within ``radius_deg`` of (ra, dec), brightest first."""
        chord = 2 * np.sin(np.radians(min(radius_deg, 180.0)) / 2)
        idx = self._tree.query_ball_point(_unit_vectors([ra], [dec])[0], chord)
        out = self.table[np.asarray(idx, int)]
        return out[np.argsort(out["mag"], kind="stable")]


def as_refcat(refcat) -> RefCat:
    """Accept a :class:`RefCat`, an astropy ``Table`` or path(s)."""
    if isinstance(refcat, RefCat):
        return refcat
    if isinstance(refcat, Table):
        return RefCat(refcat)
    return RefCat.from_file(refcat)

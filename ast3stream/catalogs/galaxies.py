"""GLADE+-style galaxy catalogue from a local CSV (GLADE+ column names or simple lower-case ones)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

#: accepted column names, first match wins
_ID = ("GLADE no", "GLADE_no", "glade_no", "id", "name", "GWGC name")
_RA = ("RA", "ra")
_DEC = ("DEC", "Dec", "dec")
_DIST = ("d_L", "dist_mpc", "distmpc", "dist", "d_l")


def _column(tab: Table, names) -> str:
    for name in names:
        if name in tab.colnames:
            return name
    raise KeyError(f"none of the columns {names} in {tab.colnames[:12]}...")


@dataclass
class GalaxyCatalog:
    """Galaxies with ``id``, ``ra``, ``dec`` [deg] and luminosity distance ``dist_mpc``."""

    table: Table

    @classmethod
    def from_csv(cls, path: str | Path) -> "GalaxyCatalog":
        raw = Table.read(path, format="ascii.csv", fill_values=[("null", "0"), ("", "0")])
        dist = _column(raw, _DIST)
        tab = Table(dict(id=[str(v) for v in raw[_column(raw, _ID)]],
                         ra=np.asarray(raw[_column(raw, _RA)], float),
                         dec=np.asarray(raw[_column(raw, _DEC)], float),
                         dist_mpc=np.ma.filled(np.ma.asarray(raw[dist], float), np.nan)))
        return cls(tab)

    def nearest(self, ra, dec, radius_arcsec: float) -> Table:
        """Nearest galaxy to each position within the radius: ``host_id``, ``host_sep_arcsec``,
        ``host_dist_mpc`` ("" / NaN when none)."""
        n = len(np.atleast_1d(ra))
        out = Table(dict(host_id=np.full(n, "", dtype=object), host_sep_arcsec=np.full(n, np.nan),
                         host_dist_mpc=np.full(n, np.nan)))
        if n == 0 or len(self.table) == 0:
            return out
        pos = SkyCoord(np.atleast_1d(ra) * u.deg, np.atleast_1d(dec) * u.deg)
        cat = SkyCoord(self.table["ra"] * u.deg, self.table["dec"] * u.deg)
        idx, sep, _ = pos.match_to_catalog_sky(cat)
        hit = sep.arcsec <= radius_arcsec
        out["host_id"][hit] = np.asarray(self.table["id"])[idx[hit]]
        out["host_sep_arcsec"][hit] = sep.arcsec[hit]
        out["host_dist_mpc"][hit] = np.asarray(self.table["dist_mpc"])[idx[hit]]
        out["host_id"] = out["host_id"].astype(str)
        return out

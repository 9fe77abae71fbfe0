"""Association of candidates into transient objects by sky position."""
from __future__ import annotations

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table


def associate(cands: Table, objects: Table, radius_arcsec: float) -> np.ndarray:
    """Index into ``objects`` (``ra``, ``dec``) of the nearest object within ``radius_arcsec``
    of each candidate, ``-1`` where there is none (a new object)."""
    out = np.full(len(cands), -1, dtype=int)
    if len(cands) == 0 or objects is None or len(objects) == 0:
        return out
    pos = SkyCoord(np.asarray(cands["ra"]) * u.deg, np.asarray(cands["dec"]) * u.deg)
    cat = SkyCoord(np.asarray(objects["ra"]) * u.deg, np.asarray(objects["dec"]) * u.deg)
    idx, sep, _ = pos.match_to_catalog_sky(cat)
    hit = sep.arcsec <= radius_arcsec
    out[hit] = idx[hit]
    return out

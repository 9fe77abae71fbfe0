"""Association of candidates into transient objects by sky position."""
from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..catalogs.sky import match


def associate(cands: Table, objects: Table, radius_arcsec: float) -> np.ndarray:
    """Index into ``objects`` (``ra``, ``dec``) of the nearest object within ``radius_arcsec``
    of each candidate, ``-1`` where there is none (a new object)."""
    if len(cands) == 0 or objects is None or len(objects) == 0:
        return np.full(len(cands), -1, dtype=int)
    return match(np.asarray(cands["ra"], float), np.asarray(cands["dec"], float),
                 np.asarray(objects["ra"], float), np.asarray(objects["dec"], float), radius_arcsec)[0]

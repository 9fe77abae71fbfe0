"""Known variable stars (GCVS) and known transients (TNS) from their Parquet tables, as
in-memory :class:`~.sky.SkyCatalog` objects (tens of thousands of rows: read once per worker).

GCVS: ``ra``, ``dec``, ``VarType`` (the row number stands in for the name when there is none).
TNS (its public CSV/Parquet dump): ``ra``, ``declination``, ``fullname`` (else ``name_prefix``
+ ``name``), ``type``, ``redshift``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .sky import SkyCatalog


def _read(path: str | Path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


def _text(values) -> np.ndarray:
    return np.array(["" if v is None else str(v).strip() for v in values])


def open_variable_stars(path: str | Path, nside: int = 32) -> SkyCatalog:
    """GCVS: ``ra, dec, name, var_type``."""
    t = _read(path)
    n = len(t["ra"])
    names = _text(t["name"]) if "name" in t else np.array([f"GCVS {i + 1}" for i in range(n)])
    return SkyCatalog.from_columns({"ra": np.asarray(t["ra"], float), "dec": np.asarray(t["dec"], float),
                                    "name": names, "var_type": _text(t.get("VarType", [""] * n))}, nside)


def open_transients(path: str | Path, nside: int = 32) -> SkyCatalog:
    """TNS: ``ra, dec, name, type, redshift``."""
    t = _read(path)
    n = len(t["ra"])
    if "fullname" in t:
        names = _text(t["fullname"])
    else:
        names = np.array([f"{p or ''} {m}".strip() for p, m in zip(t.get("name_prefix", [""] * n), t["name"])])
    z = np.array([np.nan if v is None else float(v) for v in t.get("redshift", [None] * n)])
    return SkyCatalog.from_columns({"ra": np.asarray(t["ra"], float), "dec": np.asarray(t["declination"], float),
                                    "name": names, "type": _text(t.get("type", [""] * n)), "redshift": z}, nside)

"""Catalogues partitioned on HEALPix pixels: rows sorted by their (nested) pixel with per-pixel
offsets, so a cone reads only the few pixels it touches. On disk a catalogue is a folder of one
``.npy`` per column plus ``offsets.npy`` and ``sky.json``, opened memory-mapped (nothing is
loaded or built per call); small catalogues are the same object in memory.

:func:`match` is the one positional matcher of the package (nearest neighbour on unit vectors).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Mapping

import astropy.units as u
import numpy as np
from astropy.table import Table
from astropy_healpix import HEALPix
from scipy.spatial import cKDTree

META = "sky.json"


def unit_vectors(ra, dec) -> np.ndarray:
    """(n, 3) unit vectors of positions in degrees."""
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def chord(radius_deg: float) -> float:
    return 2 * np.sin(np.radians(min(radius_deg, 180.0)) / 2)


def separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation [deg] (haversine, broadcasting)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


WIDE_DEG = 20.0   #: cones wider than this read every pixel (the pixel search is slower than the rows)


def pixel_rows(hp: HEALPix, offsets: np.ndarray, ra: float, dec: float, radius_deg: float) -> np.ndarray:
    """Row indices of the pixels touching a cone, for rows sorted by pixel with ``offsets``."""
    if radius_deg >= WIDE_DEG:
        return np.arange(offsets[-1], dtype=np.int64)
    pix = np.sort(hp.cone_search_lonlat(ra * u.deg, dec * u.deg, radius_deg * u.deg))
    lo, hi = offsets[pix], offsets[pix + 1]
    n = hi - lo
    return (np.repeat(lo - np.cumsum(n) + n, n) + np.arange(n.sum())).astype(np.int64)


def enclosing(ra, dec) -> tuple[float, float, float]:
    """(ra, dec) of the mean direction of the positions and the distance [deg] to the farthest."""
    ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
    v = unit_vectors(ra, dec).sum(0)
    c_ra = float(np.degrees(np.arctan2(v[1], v[0])) % 360)
    c_dec = float(np.degrees(np.arcsin(v[2] / np.linalg.norm(v))))
    return c_ra, c_dec, float(separation_deg(c_ra, c_dec, ra, dec).max())


def match(ra, dec, cat_ra, cat_dec, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """For each position the index of the nearest catalogue position within ``radius_arcsec``
    (``-1`` where none) and its separation [arcsec] (NaN where none)."""
    n = len(np.atleast_1d(ra))
    idx, sep = np.full(n, -1, int), np.full(n, np.nan)
    if n == 0 or len(np.atleast_1d(cat_ra)) == 0:
        return idx, sep
    d, i = cKDTree(unit_vectors(cat_ra, cat_dec)).query(unit_vectors(ra, dec), distance_upper_bound=chord(radius_arcsec / 3600))
    hit = np.isfinite(d)
    idx[hit] = i[hit]
    sep[hit] = np.degrees(2 * np.arcsin(d[hit] / 2)) * 3600
    return idx, sep


class SkyCatalog:
    """Columns (``ra``, ``dec`` [deg] and any others) sorted by nested HEALPix pixel at ``nside``;
    rows of pixel ``p`` are ``offsets[p]:offsets[p + 1]``."""

    def __init__(self, columns: Mapping[str, np.ndarray], offsets: np.ndarray, nside: int, meta: dict | None = None):
        self.columns, self.offsets, self.nside = dict(columns), offsets, int(nside)
        self.meta = dict(meta or {})
        self._hp = HEALPix(nside=self.nside, order="nested")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def from_columns(cls, columns: Mapping[str, np.ndarray], nside: int = 64, meta: dict | None = None) -> "SkyCatalog":
        """Partition in-memory columns (must include ``ra`` and ``dec``)."""
        ra, dec = np.asarray(columns["ra"], float), np.asarray(columns["dec"], float)
        good = np.isfinite(ra) & np.isfinite(dec)
        hp = HEALPix(nside=nside, order="nested")
        pix = hp.lonlat_to_healpix(ra[good] * u.deg, dec[good] * u.deg)
        order = np.argsort(pix, kind="stable")
        cols = {k: np.asarray(v)[good][order] for k, v in columns.items()}
        offsets = np.searchsorted(pix[order], np.arange(hp.npix + 1)).astype(np.int64)
        return cls(cols, offsets, nside, meta)

    @classmethod
    def from_table(cls, table: Table, nside: int = 64) -> "SkyCatalog":
        return cls.from_columns({k: np.asarray(table[k]) for k in table.colnames}, nside, dict(table.meta))

    def write(self, path: str | Path) -> Path:
        """Write the folder (atomically: a temporary folder renamed into place)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, col in self.columns.items():
            np.save(tmp / f"{name}.npy", col)
        np.save(tmp / "offsets.npy", self.offsets)
        (tmp / META).write_text(json.dumps({"nside": self.nside, "columns": list(self.columns), "meta": self.meta}))
        if path.exists():
            import shutil
            shutil.rmtree(path)
        tmp.rename(path)
        return path

    @classmethod
    def open(cls, path: str | Path) -> "SkyCatalog":
        """Open a written folder, memory-mapped."""
        path = Path(path)
        meta = json.loads((path / META).read_text())
        cols = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in meta["columns"]}
        return cls(cols, np.load(path / "offsets.npy"), meta["nside"], meta.get("meta"))

    def _rows(self, ra: float, dec: float, radius_deg: float) -> np.ndarray:
        return pixel_rows(self._hp, self.offsets, ra, dec, radius_deg)

    def cone(self, ra: float, dec: float, radius_deg: float) -> Table:
        """The rows within ``radius_deg`` of (ra, dec), with their separation ``sep_deg``."""
        rows = self._rows(ra, dec, radius_deg)
        sep = separation_deg(ra, dec, self.columns["ra"][rows], self.columns["dec"][rows])
        rows, sep = rows[sep <= radius_deg], sep[sep <= radius_deg]
        out = Table({k: np.asarray(v[rows]) for k, v in self.columns.items()}, meta=self.meta)
        out["sep_deg"] = sep
        return out

    def around(self, ra, dec, margin_deg: float) -> Table:
        """The rows near any of the positions: one cone about their centre reaching ``margin_deg``
        past the farthest."""
        c_ra, c_dec, radius = enclosing(ra, dec)
        return self.cone(c_ra, c_dec, radius + margin_deg)

    def nearest(self, ra, dec, radius_arcsec: float) -> tuple[Table, np.ndarray, np.ndarray]:
        """``(rows, idx, sep_arcsec)``: the catalogue rows near the positions and, per position,
        the index into them of the nearest within ``radius_arcsec`` (``-1``/NaN where none)."""
        if len(np.atleast_1d(ra)) == 0:
            return Table({k: v[:0] for k, v in self.columns.items()}), np.array([], int), np.array([])
        near = self.around(ra, dec, radius_arcsec / 3600)
        idx, sep = match(ra, dec, near["ra"], near["dec"], radius_arcsec)
        return near, idx, sep


def cache_path(sources, cache_dir: str | Path | None, tag: str) -> Path:
    """Where the partitioned copy of ``sources`` (one path or several) lives: ``cache_dir``
    (default: beside the first source), named by the first source and keyed by the sources'
    names, sizes and modification times (a changed file gets a new copy)."""
    paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(p) for p in sources]
    key = hashlib.sha1("|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths).encode()
                       + tag.encode()).hexdigest()[:10]
    return Path(cache_dir or paths[0].parent) / f"{paths[0].stem}-{tag}-{key}.sky"


def build(chunks: Iterable[Mapping[str, np.ndarray]], path: str | Path, nside: int = 64, meta: dict | None = None) -> SkyCatalog:
    """Build an on-disk catalogue from column chunks (e.g. a large CSV read piecewise)."""
    parts: dict[str, list] = {}
    for chunk in chunks:
        for k, v in chunk.items():
            parts.setdefault(k, []).append(np.asarray(v))
    if not parts:
        raise ValueError(f"no rows to build {path}")
    cat = SkyCatalog.from_columns({k: np.concatenate(v) for k, v in parts.items()}, nside, meta)
    cat.write(path)
    return SkyCatalog.open(path)

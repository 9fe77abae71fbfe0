"""GLADE+-style galaxy catalogue as a HEALPix-partitioned :class:`~.sky.SkyCatalog` with
``id``, ``ra``, ``dec`` [deg] and luminosity distance ``dist_mpc``.

Sources: a CSV with a header (GLADE+ column names, or simple lower-case ones), or the GLADE+
release text file (``GLADE+.txt``: space-separated, no header; columns 1, 9, 10 and 33 are
GLADE no, RA, Dec and d_L), streamed in blocks so the 23 M-row file fits in memory once, sorted.
The partitioned copy is built once into ``cache_dir`` and re-opened memory-mapped after that.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .sky import META, SkyCatalog, build, cache_path

#: accepted column names, first match wins
_ID = ("GLADE no", "GLADE_no", "glade_no", "id", "name", "GWGC name")
_RA = ("RA", "ra")
_DEC = ("DEC", "Dec", "dec")
_DIST = ("d_L", "dist_mpc", "distmpc", "dist", "d_l")
_GLADE_TXT = {"id": 0, "ra": 8, "dec": 9, "dist_mpc": 32}   #: 0-based columns of GLADE+.txt


def _column(names, wanted) -> str:
    for name in wanted:
        if name in names:
            return name
    raise KeyError(f"none of the columns {wanted} in {list(names)[:12]}...")


def _ids(values) -> np.ndarray:
    ids = np.asarray(values)
    return ids.astype(np.int64) if ids.dtype.kind in "iu" else np.asarray([str(v) for v in ids])


def read_chunks(path: str | Path, block_bytes: int = 256 << 20) -> Iterator[dict[str, np.ndarray]]:
    """``id, ra, dec, dist_mpc`` column chunks of a galaxy file (CSV with header or GLADE+.txt),
    streamed with pyarrow's CSV reader."""
    from pyarrow import csv

    path = Path(path)
    with open(path, encoding="latin-1") as fh:
        first = fh.readline()
    if "," in first:
        header = [h.strip().strip('"') for h in first.rstrip("\r\n").split(",")]
        cols = [_column(header, w) for w in (_ID, _RA, _DEC, _DIST)]
        read = csv.ReadOptions(block_size=block_bytes)
        parse = csv.ParseOptions()
    else:
        cols = [f"f{i}" for i in _GLADE_TXT.values()]
        read = csv.ReadOptions(block_size=block_bytes, column_names=[f"f{i}" for i in range(len(first.split()))])
        parse = csv.ParseOptions(delimiter=" ")
    types = {c: t for c, t in zip(cols[1:], ("float64",) * 3)}
    conv = csv.ConvertOptions(include_columns=cols, null_values=["null", ""], column_types=types,
                              strings_can_be_null=True)
    for batch in csv.open_csv(path, read_options=read, parse_options=parse, convert_options=conv):
        ids, ra, dec, dist = (batch.column(batch.schema.get_field_index(c)) for c in cols)
        yield {"id": _ids(ids.to_numpy(zero_copy_only=False)), "ra": ra.to_numpy(zero_copy_only=False),
               "dec": dec.to_numpy(zero_copy_only=False), "dist_mpc": dist.to_numpy(zero_copy_only=False)}


def open_galaxies(path: str | Path, cache_dir: str | Path | None = None, nside: int = 64) -> SkyCatalog:
    """The galaxy catalogue at ``path``: a partitioned folder as it is, else a file partitioned
    once into ``cache_dir`` (default: beside the file), keyed by the file's name, size and time."""
    path = Path(path)
    if (path / META).exists():
        return SkyCatalog.open(path)
    if not path.is_file():
        raise FileNotFoundError(f"no galaxy catalogue at {path}")
    target = cache_path(path, cache_dir, f"galaxies{nside}")
    if (target / META).exists():
        return SkyCatalog.open(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return build(read_chunks(path), target, nside, meta={"source": str(path)})

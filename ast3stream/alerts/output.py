"""What a subscriber sees: a terminal table row, a JSON line, or files with PNG cutouts.

Table and JSON need only the light install; PNG cutouts (``write_files``) need the
``[pipeline]`` extra (astropy, matplotlib).
"""
from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from pathlib import Path

from ast3stream.alerts.reader import AlertView, view

COLUMNS = (("survey", 10), ("object", 24), ("candid", 20), ("mjd", 12), ("ra", 10), ("dec", 10),
           ("mag", 6), ("err", 5), ("filt", 5), ("score", 5), ("host", 4), ("sso", 10), ("gw", 10))


def table_header() -> str:
    """Column titles for :func:`table_row`."""
    return " ".join(f"{name:>{width}}" for name, width in COLUMNS)


def table_row(alert: Mapping | AlertView) -> str:
    """One fixed-width line per alert, for streaming to a terminal."""
    v = alert if isinstance(alert, AlertView) else view(alert)
    cells = (v.survey, v.object_id, v.candid, f"{v.mjd:.5f}", f"{v.ra:.5f}", f"{v.dec:+.5f}",
             _num(v.mag, 2), _num(v.mag_err, 2), v.filter, _num(v.score, 2),
             {True: "y", False: "n", None: "-"}[v.has_host], v.ssnamenr or "-", v.gw_event or "-")
    return " ".join(f"{str(c)[:w]:>{w}}" for c, (_, w) in zip(cells, COLUMNS))


def to_json(alert: Mapping, cutouts: bool = False) -> str:
    """The alert record as one JSON line; stamps as base64 when ``cutouts`` else left out."""
    def default(obj):
        if isinstance(obj, bytes):
            return base64.b64encode(obj).decode() if cutouts else None
        if hasattr(obj, "item"):   # numpy scalars
            return obj.item()
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
    return json.dumps(_finite(dict(alert)), default=default, separators=(",", ":"))


def write_files(alert: Mapping, out_dir: str | Path) -> list[Path]:
    """``<out>/<object>/<candid>.json`` (no stamps) and one zscale PNG per cutout."""
    import matplotlib.image
    import numpy as np
    from astropy.visualization import ZScaleInterval

    from ast3stream.alerts.cutouts import read_cutout
    from ast3stream.paths import inside

    v = view(alert)
    folder = inside(out_dir, str(v.object_id), what="objectId")   # a foreign alert names the folder
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{int(v.candid)}.json"]
    paths[0].write_text(to_json(alert) + "\n")
    for kind, stamp in v.cutouts.items():
        data, _ = read_cutout(stamp)
        finite = data[np.isfinite(data)]
        vmin, vmax = ZScaleInterval().get_limits(finite) if finite.size else (0, 1)
        path = folder / f"{int(v.candid)}_{kind}.png"
        matplotlib.image.imsave(path, np.nan_to_num(data, nan=vmin), cmap="gray", vmin=vmin, vmax=vmax, origin="lower")
        paths.append(path)
    return paths


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _finite(obj):
    """NaN/inf (which JSON lacks) to null, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj

"""From a GW notice to a ranked Target-of-Opportunity field list (what the database stores)."""
from __future__ import annotations

import re

import numpy as np
from astropy.table import Table

from ast3stream.gw.fields import field_probabilities
from ast3stream.gw.notices import GWNotice


def field_size(cfg) -> tuple[float, float]:
    """Field width and height [deg]: ``gw.field_*_deg`` or the detector's trimmed size x pixel scale."""
    if cfg.gw.field_width_deg and cfg.gw.field_height_deg:
        return cfg.gw.field_width_deg, cfg.gw.field_height_deg
    x0, x1, y0, y1 = (int(n) for n in re.findall(r"\d+", cfg.detector.trimsec))
    scale = cfg.detector.pixel_scale / 3600
    return (x1 - x0 + 1) * scale, (y1 - y0 + 1) * scale


def too_fields(notice: GWNotice, fields: Table, cfg, galaxies: Table | None = None) -> Table:
    """The ranked ToO list of a (non-retraction) notice: fields with ``prob`` >=
    ``gw.min_field_probability``, at most ``gw.max_fields``, with ``event_id``."""
    if notice.is_retraction:
        raise ValueError(f"{notice.superevent_id} is a retraction: remove its fields instead")
    if notice.skymap is None:
        raise ValueError(f"{notice.superevent_id}: no sky map (VOEvent map file not found locally?)")
    width, height = field_size(cfg)
    ranked = field_probabilities(notice.skymap, fields, width, height, galaxies=galaxies,
                                 order=cfg.gw.order, rank_by=cfg.gw.rank_by)
    keep = np.asarray(ranked["prob"]) >= cfg.gw.min_field_probability
    if cfg.gw.rank_by != "prob" and galaxies is not None:
        keep |= np.nan_to_num(np.asarray(ranked["galaxy_score"])) >= cfg.gw.min_field_probability
    out = ranked[keep][: cfg.gw.max_fields]
    out["event_id"] = notice.superevent_id
    return out


def ingest(source, db, cfg, fields: Table | None = None, galaxies: Table | None = None,
           skymap_dir=None) -> tuple[GWNotice, Table | None]:
    """Read a notice (path or bytes) and update the database's ToO list: store the ranked
    fields, or remove them for a RETRACTION (then the table is None).

    ``fields`` default to ``paths.fields``; ``galaxies`` to ``paths.galaxies`` when it exists.
    """
    from ast3stream.gw.notices import read_notice

    notice = read_notice(source, skymap_dir or cfg.gw.skymap_dir)
    if notice.is_retraction:
        db.retract_too(notice.superevent_id)
        return notice, None
    if fields is None:
        fields = Table.read(cfg.fields_path, format="ascii.csv")
    if galaxies is None and cfg.galaxies_path.exists():
        galaxies = Table.read(cfg.galaxies_path, format="ascii.csv")
    table = too_fields(notice, fields, cfg, galaxies=galaxies)
    db.store_too_fields(notice.superevent_id, table)
    return notice, table

"""From a GW notice to a ranked Target-of-Opportunity field list (what the database stores)."""
from __future__ import annotations

import re

import numpy as np
from astropy.table import Table

from ast3stream.gw.fields import field_probabilities, make_grid, probability_bound
from ast3stream.gw.notices import GWNotice


def field_size(detector, gw) -> tuple[float, float]:
    """Field width and height [deg]: ``gw.field_*_deg`` or the detector's trimmed size x pixel scale."""
    if gw.field_width_deg and gw.field_height_deg:
        return gw.field_width_deg, gw.field_height_deg
    x0, x1, y0, y1 = (int(n) for n in re.findall(r"\d+", detector.trimsec))
    scale = detector.pixel_scale / 3600
    return (x1 - x0 + 1) * scale, (y1 - y0 + 1) * scale


def default_grid(detector, gw) -> Table:
    """The whole-sky survey grid of the camera: overlapping fields (``gw.grid_overlap``) in
    declination bands, ids ``00000``... (what ``too ingest`` writes on first use)."""
    return make_grid(*field_size(detector, gw), overlap=gw.grid_overlap)


def too_fields(notice: GWNotice, fields: Table, gw, width: float, height: float,
               galaxies: Table | None = None) -> Table:
    """The ranked ToO list of a (non-retraction) notice for fields of ``width`` x ``height`` deg:
    fields with ``prob`` >= ``gw.min_field_probability``, at most ``gw.max_fields``, with ``event_id``."""
    if notice.is_retraction:
        raise ValueError(f"{notice.superevent_id} is a retraction: remove its fields instead")
    if notice.skymap is None:
        raise ValueError(f"{notice.superevent_id}: no sky map (VOEvent map file not found locally?)")
    if gw.rank_by == "prob":      # only fields that can reach the threshold are integrated
        fields = fields[probability_bound(notice.skymap, fields, width, height) >= gw.min_field_probability]
    ranked = field_probabilities(notice.skymap, fields, width, height, galaxies=galaxies,
                                 order=gw.order, rank_by=gw.rank_by)
    keep = np.asarray(ranked["prob"]) >= gw.min_field_probability
    if gw.rank_by != "prob" and galaxies is not None:
        keep |= np.nan_to_num(np.asarray(ranked["galaxy_score"])) >= gw.min_field_probability
    out = ranked[keep][: gw.max_fields]
    out["event_id"] = notice.superevent_id
    return out

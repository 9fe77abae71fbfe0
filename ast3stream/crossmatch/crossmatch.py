"""Attach host galaxies, known asteroids, variable stars and known transients to candidates."""
from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..catalogs.asteroids import AsteroidTable
from ..catalogs.sky import SkyCatalog, enclosing, match

#: (output column, catalogue column, fill) per catalogue, and the columns of the separations
_HOST = (("host_id", "id", ""), ("host_dist_mpc", "dist_mpc", np.nan))
_VAR = (("var_name", "name", ""), ("var_type", "var_type", ""))
_TNS = (("tns_name", "name", ""), ("tns_type", "type", ""), ("tns_redshift", "redshift", np.nan))


def _attach(out: Table, rows: Table | None, idx: np.ndarray, sep: np.ndarray, cols, sep_col: str) -> None:
    hit = idx >= 0
    for name, src, fill in cols:
        if rows is None or not hit.any():
            out[name] = np.full(len(out), fill, dtype="U1" if isinstance(fill, str) else float)
            continue
        vals = np.asarray(rows[src])[np.where(hit, idx, 0)]
        out[name] = np.where(hit, vals.astype(str), "") if isinstance(fill, str) else np.where(hit, vals.astype(float), np.nan)
    out[sep_col] = sep


def _nearest(cat: SkyCatalog | None, ra, dec, radius_arcsec: float):
    if cat is None or len(ra) == 0:
        return None, np.full(len(ra), -1), np.full(len(ra), np.nan)
    return cat.nearest(ra, dec, radius_arcsec)


def crossmatch(cands: Table, mjd: float, params, site: tuple[float, float, float], *,
               galaxies: SkyCatalog | None = None, asteroids: AsteroidTable | None = None,
               variable_stars: SkyCatalog | None = None, transients: SkyCatalog | None = None) -> Table:
    """Copy of ``cands`` (``ra``, ``dec``) with, for the nearest match in each catalogue given
    (``params``: a :class:`~ast3stream.config.CrossmatchConfig`; empty / NaN where none):

    * galaxy within ``galaxy_radius_arcsec``: ``host_id``, ``host_dist_mpc``, ``host_sep_arcsec``;
    * known asteroid within ``asteroid_radius_arcsec`` at ``mjd`` (mid-exposure, UTC) seen from
      ``site = (lon_deg, lat_deg, height_m)``: ``ssnamenr``, ``ss_mag``, ``ss_sep_arcsec``;
    * variable star within ``variable_radius_arcsec``: ``var_name``, ``var_type``, ``var_sep_arcsec``;
    * known transient within ``transient_radius_arcsec``: ``tns_name``, ``tns_type``,
      ``tns_redshift``, ``tns_sep_arcsec``.
    """
    out = cands.copy()
    ra, dec = np.asarray(out["ra"], float), np.asarray(out["dec"], float)
    _attach(out, *_nearest(galaxies, ra, dec, params.galaxy_radius_arcsec), _HOST, "host_sep_arcsec")
    field, idx, sep = None, np.full(len(out), -1), np.full(len(out), np.nan)
    if asteroids is not None and len(out):
        c_ra, c_dec, radius = enclosing(ra, dec)
        field = asteroids.field(mjd, c_ra, c_dec, radius + params.asteroid_radius_arcsec / 3600, site)
        idx, sep = match(ra, dec, field["ra"], field["dec"], params.asteroid_radius_arcsec)
    _attach(out, field, idx, sep, (("ssnamenr", "designation", ""), ("ss_mag", "mag", np.nan)), "ss_sep_arcsec")
    _attach(out, *_nearest(variable_stars, ra, dec, params.variable_radius_arcsec), _VAR, "var_sep_arcsec")
    _attach(out, *_nearest(transients, ra, dec, params.transient_radius_arcsec), _TNS, "tns_sep_arcsec")
    return out

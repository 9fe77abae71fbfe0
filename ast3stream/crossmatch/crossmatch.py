"""Attach host galaxies and known asteroids to difference-image candidates."""
from __future__ import annotations

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from ..catalogs.galaxies import GalaxyCatalog
from ..catalogs.mpcorb import asteroids_in_field


def crossmatch(cands: Table, mjd: float, cfg, galaxies: GalaxyCatalog | None = None,
               asteroids: list | Table | None = None) -> Table:
    """Copy of ``cands`` with ``host_id``, ``host_sep_arcsec``, ``host_dist_mpc`` (nearest galaxy
    within ``galaxy_radius_arcsec``) and ``ssnamenr``, ``ss_sep_arcsec``, ``ss_mag`` (nearest known
    asteroid within ``asteroid_radius_arcsec`` at ``mjd``, the mid-exposure time).

    ``asteroids`` is either a list of :class:`~ast3stream.catalogs.mpcorb.Orbit` (positions are
    computed around the candidates' centre) or a Table already from ``asteroids_in_field``.
    """
    xc = cfg.crossmatch
    out = cands.copy()
    n = len(out)
    hosts = galaxies.nearest(out["ra"], out["dec"], xc.galaxy_radius_arcsec) if galaxies is not None and n \
        else Table(dict(host_id=np.full(n, "", dtype="<U1"), host_sep_arcsec=np.full(n, np.nan),
                        host_dist_mpc=np.full(n, np.nan)))
    for name in hosts.colnames:
        out[name] = hosts[name]
    out["ssnamenr"] = np.full(n, "", dtype=object)
    out["ss_sep_arcsec"] = np.full(n, np.nan)
    out["ss_mag"] = np.full(n, np.nan)
    if asteroids is not None and n:
        field = asteroids
        if not isinstance(asteroids, Table):
            centre = SkyCoord(out["ra"] * u.deg, out["dec"] * u.deg)
            ra0, dec0 = float(np.median(out["ra"])), float(np.median(out["dec"]))
            radius = max(xc.asteroid_search_deg,
                         float(centre.separation(SkyCoord(ra0 * u.deg, dec0 * u.deg)).deg.max()) + 0.1)
            site = (cfg.detector.site_lon, cfg.detector.site_lat, cfg.detector.site_height)
            field = asteroids_in_field(asteroids, mjd, ra0, dec0, radius, site=site)
        if len(field):
            pos = SkyCoord(out["ra"] * u.deg, out["dec"] * u.deg)
            idx, sep, _ = pos.match_to_catalog_sky(SkyCoord(field["ra"] * u.deg, field["dec"] * u.deg))
            hit = sep.arcsec <= xc.asteroid_radius_arcsec
            out["ssnamenr"][hit] = np.asarray(field["designation"])[idx[hit]]
            out["ss_sep_arcsec"][hit] = sep.arcsec[hit]
            out["ss_mag"][hit] = np.asarray(field["mag"])[idx[hit]]
    out["ssnamenr"] = out["ssnamenr"].astype(str)
    return out

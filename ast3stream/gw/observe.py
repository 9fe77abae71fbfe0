"""An observable ToO schedule for one night at the site (astropy only).

The night runs from the Sun's setting below ``plan.sun_alt_deg`` (astronomical twilight by
default) to its rising above it, for the local evening date ``night`` (local time = UTC +
longitude / 15 h). Time is cut into slots of ``exptime_s + overhead_s``; a field may be
observed in a slot when at the slot's middle it is above the altitude limit (``min_alt_deg``
or the local ``horizon`` profile, whichever is higher), at airmass <= ``max_airmass``, the Sun
is below ``sun_alt_deg``, and the Moon, when it is above the horizon, is at least
``moon_sep_deg + (moon_sep_full_deg - moon_sep_deg) x illuminated fraction`` away.

Greedy scheduling: each slot takes, among the observable fields that still need a visit and
whose last visit is at least ``revisit_gap_min`` ago, the one with the fewest visits so far,
then the highest priority (probability, or the galaxy-weighted score) (first visits of the whole list before revisits: the team wants
the probability covered first, then the light curve). Visits already made (``done``) count.
"""
from __future__ import annotations

from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import AltAz, EarthLocation, SkyCoord, get_body, get_sun
from astropy.table import Table
from astropy.time import Time


@dataclass(frozen=True)
class Site:
    name: str
    lat: float          #: deg N
    lon: float          #: deg E
    height: float       #: m

    @property
    def location(self) -> EarthLocation:
        return EarthLocation(lat=self.lat * u.deg, lon=self.lon * u.deg, height=self.height * u.m)


#: named sites; ``detector`` uses the settings' ``detector.site_*``
SITES = {"yaoan": Site("Yaoan", lat=25.53, lon=101.18, height=1950.0)}


def site(name: str, detector=None) -> Site:
    """A named site, or ``detector`` for the camera's configured ``site_lat/lon/height``."""
    if name == "detector":
        return Site("detector", detector.site_lat, detector.site_lon, detector.site_height)
    try:
        return SITES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown site {name!r}: one of {sorted(SITES)} or 'detector'") from None


def night_window(where: Site, night: str, sun_alt_deg: float = -18.0, step_min: float = 2.0) -> tuple[Time, Time]:
    """(start, end) of the night of local evening date ``night`` (YYYY-MM-DD) with the Sun below ``sun_alt_deg``."""
    noon = Time(f"{night}T12:00:00", scale="utc") - where.lon / 15 * u.hour
    t = noon + np.arange(0, 24 * 60 + step_min, step_min) * u.min
    alt = get_sun(t).transform_to(AltAz(obstime=t, location=where.location)).alt.deg
    dark = np.flatnonzero(alt < sun_alt_deg)
    if dark.size == 0:
        raise ValueError(f"the Sun never goes below {sun_alt_deg} deg at {where.name} on the night of {night}")
    return t[dark[0]], t[dark[-1]]


def _limit(az: np.ndarray, plan) -> np.ndarray:
    limit = np.full(az.shape, plan.min_alt_deg)
    if plan.horizon:
        h = np.array(sorted(plan.horizon), float)
        alt = np.interp(az % 360, np.r_[h[:, 0], h[0, 0] + 360], np.r_[h[:, 1], h[0, 1]])
        limit = np.maximum(limit, alt)
    return limit


def visibility(fields: Table, where: Site, times: Time, plan) -> dict[str, np.ndarray]:
    """Per field x time: ``alt``, ``airmass``, ``moon_sep`` [deg] and ``ok`` (every constraint met);
    per time: ``sun_alt``, ``moon_alt``, ``moon_illum``."""
    frame = AltAz(obstime=times, location=where.location)
    sun = get_sun(times)
    moon = get_body("moon", times, where.location)
    sun_alt = sun.transform_to(frame).alt.deg
    moon_alt = moon.transform_to(frame).alt.deg
    moon_illum = (1 - np.cos(np.radians(sun.separation(moon, origin_mismatch="ignore").deg))) / 2
    coords = SkyCoord(np.asarray(fields["ra"], float) * u.deg, np.asarray(fields["dec"], float) * u.deg)
    altaz = coords[:, None].transform_to(AltAz(obstime=times[None, :], location=where.location))
    alt, az = altaz.alt.deg, altaz.az.deg
    airmass = np.where(alt > 0, 1 / np.sin(np.radians(np.clip(alt, 1e-3, 90))), np.inf)
    moon_sep = coords[:, None].separation(moon[None, :], origin_mismatch="ignore").deg
    need = plan.moon_sep_deg + (plan.moon_sep_full_deg - plan.moon_sep_deg) * moon_illum
    ok = ((alt >= _limit(az, plan)) & (airmass <= plan.max_airmass) & (sun_alt <= plan.sun_alt_deg)[None, :]
          & ((moon_sep >= need[None, :]) | (moon_alt < 0)[None, :]))
    return dict(alt=alt, airmass=airmass, moon_sep=moon_sep, ok=ok, sun_alt=sun_alt, moon_alt=moon_alt,
                moon_illum=moon_illum)


def schedule(fields: Table, where: Site, start: Time, end: Time, plan, done: dict | None = None,
             priority: str = "prob") -> Table:
    """Time-ordered visits of ``fields`` (``field_id``, ``ra``, ``dec``, ``prob``; the best
    ``plan.max_fields`` by ``priority``: ``prob`` or ``galaxy_score``) between ``start`` and ``end``.

    ``done``: field_id -> (visits already made, time of the last one as Time) for fields
    observed before. Returns one row per visit: ``order``, ``field_id``, ``ra``, ``dec``,
    ``visit`` (1 = first), ``start`` / ``end`` (ISO UTC), ``mjd`` (mid-exposure), ``alt_deg``,
    ``airmass``, ``moon_sep_deg``, ``sun_alt_deg``, ``exptime_s``, ``prob``, ``galaxy_score`` (NaN
    when not known); ``meta`` holds the window and the site.
    """
    key = np.nan_to_num(np.asarray(fields[priority], float))
    fields = fields[np.argsort(-key, kind="stable")][: plan.max_fields]
    key = np.nan_to_num(np.asarray(fields[priority], float))
    galaxy = np.asarray(fields["galaxy_score"], float) if "galaxy_score" in fields.colnames else np.full(len(fields),
                                                                                                       np.nan)
    slot = (plan.exptime_s + plan.overhead_s) / 86400
    n_slots = max(0, int(np.floor((end.mjd - start.mjd) / slot)))
    t0 = start.mjd + np.arange(n_slots) * slot                  # slot starts
    mid = Time(t0 + plan.exptime_s / 2 / 86400, format="mjd", scale="utc")
    vis = visibility(fields, where, mid, plan) if n_slots else None
    done = done or {}
    ids = [str(f) for f in fields["field_id"]]
    visits = np.array([done.get(f, (0, None))[0] for f in ids], int)
    last = np.array([done[f][1].mjd if f in done and done[f][1] is not None else -np.inf for f in ids])
    prob = np.asarray(fields["prob"], float)
    gap = plan.revisit_gap_min / 1440
    rows = []
    for j in range(n_slots):
        cand = np.flatnonzero(vis["ok"][:, j] & (visits < plan.revisits) & (t0[j] - last >= gap))
        if cand.size == 0:
            continue
        i = cand[np.lexsort((-key[cand], visits[cand]))[0]]
        visits[i] += 1
        last[i] = t0[j]
        rows.append(dict(order=len(rows) + 1, field_id=ids[i], ra=float(fields["ra"][i]), dec=float(fields["dec"][i]),
                         visit=int(visits[i]), start=Time(t0[j], format="mjd").isot,
                         end=Time(t0[j] + plan.exptime_s / 86400, format="mjd").isot, mjd=float(mid[j].mjd),
                         alt_deg=float(vis["alt"][i, j]), airmass=float(vis["airmass"][i, j]),
                         moon_sep_deg=float(vis["moon_sep"][i, j]), sun_alt_deg=float(vis["sun_alt"][j]),
                         exptime_s=plan.exptime_s, prob=float(prob[i]), galaxy_score=float(galaxy[i])))
    names = ["order", "field_id", "ra", "dec", "visit", "start", "end", "mjd", "alt_deg", "airmass", "moon_sep_deg",
             "sun_alt_deg", "exptime_s", "prob", "galaxy_score"]
    out = Table(rows=[[r[n] for n in names] for r in rows], names=names) if rows else Table(names=names, dtype=[
        int, str, float, float, int, str, str, float, float, float, float, float, float, float, float])
    out.meta.update(site=where.name, lat=where.lat, lon=where.lon, height=where.height, night_start=start.isot,
                    night_end=end.isot, n_fields=len(fields),
                    moon_illum=float(np.mean(vis["moon_illum"])) if n_slots else None)
    return out

"""Known asteroids for a whole night from one table: every MPCORB orbit propagated (two-body,
numba, in parallel) to the night's midpoint and an hour either side, indexed on HEALPix pixels;
an exposure then looks up the orbits near its field and propagates only those to its time.

Positions are astrometric J2000 (ICRS) as seen from the site: the body at ``t - light time``
minus the observer at ``t`` (Earth from ERFA's ``epv00``, the site rotated by the Earth rotation
angle and the IAU 2006/2000A precession-nutation), the same place ``ephem`` gives as ``a_ra,
a_dec`` plus its topocentric parallax. Elements are the MPC's (J2000 ecliptic, epoch TT).
Magnitudes: the IAU H, G system (Bowell et al. 1989).

>>> table = AsteroidTable.build(mpcorb.read_elements("MPCORB.DAT"), night_midpoint(mjd, lon))  # doctest: +SKIP
>>> table.field(mjd, ra, dec, 1.1, site=(lon, lat, height))                          # doctest: +SKIP
"""
from __future__ import annotations

import math

import astropy.units as u
import erfa
import numba
import numpy as np
from astropy.table import Table
from astropy_healpix import HEALPix

from .mpcorb import Elements
from .sky import pixel_rows

K_GAUSS = 0.01720209895            #: rad/day, n = k / a^1.5
OBLIQUITY = math.radians(84381.406 / 3600)   #: J2000 mean obliquity (IAU 2006)
C_AU_DAY = 173.1446326846693      #: speed of light [AU/day]
TT_UTC_S = 69.184                 #: TT - UTC (37 leap seconds since 2017 + 32.184 s)
AU_M = 149597870700.0
SLOW_DEG_DAY = 1.0                #: faster movers (and those nearer than NEAR_AU) are checked every exposure
NEAR_AU = 0.2
RATE_STEP_D = 1 / 24              #: the night's rates are from positions this far either side of the midpoint


def night_midpoint(mjd: float, site_lon: float) -> float:
    """Local midnight (mean solar time at ``site_lon`` deg E) nearest to ``mjd``, as MJD UTC."""
    return round(mjd + site_lon / 360) - site_lon / 360


# --------------------------------------------------------------------------------------
# two-body propagation (numba)


@numba.njit(cache=True, nogil=True)
def _kepler(m, e):
    m = (m + math.pi) % (2 * math.pi) - math.pi
    ea = m if e < 0.8 else math.pi * (1.0 if m >= 0 else -1.0)
    for _ in range(50):
        f = ea - e * math.sin(ea) - m
        d = f / (1 - e * math.cos(ea))
        ea -= d
        if abs(d) < 1e-13:
            break
    return ea


@numba.njit(cache=True, nogil=True)
def _one(k, t, n, m0, epoch, a, b, e, px, py, pz, qx, qy, qz, obs, out):
    """Astrometric place of orbit ``k`` at ``t`` (TT) from ``obs`` (heliocentric ICRS, AU):
    out = ra, dec [rad], distance from the observer and from the Sun [AU]."""
    tau = 0.0
    x = y = z = dx = dy = dz = delta = 0.0
    for _ in range(3):
        ea = _kepler(m0[k] + n[k] * (t - tau - epoch[k]), e[k])
        xo, yo = a[k] * (math.cos(ea) - e[k]), b[k] * math.sin(ea)
        x = xo * px[k] + yo * qx[k]
        y = xo * py[k] + yo * qy[k]
        z = xo * pz[k] + yo * qz[k]
        dx, dy, dz = x - obs[0], y - obs[1], z - obs[2]
        delta = math.sqrt(dx * dx + dy * dy + dz * dz)
        tau = delta / C_AU_DAY
    out[0] = math.atan2(dy, dx) % (2 * math.pi)
    out[1] = math.asin(dz / delta)
    out[2] = delta
    out[3] = math.sqrt(x * x + y * y + z * z)


@numba.njit(parallel=True, cache=True, nogil=True)
def _places_parallel(idx, t, n, m0, epoch, a, b, e, px, py, pz, qx, qy, qz, obs, out):
    for j in numba.prange(idx.size):
        _one(idx[j], t, n, m0, epoch, a, b, e, px, py, pz, qx, qy, qz, obs, out[j])


@numba.njit(cache=True, nogil=True)
def _places_serial(idx, t, n, m0, epoch, a, b, e, px, py, pz, qx, qy, qz, obs, out):
    for j in range(idx.size):
        _one(idx[j], t, n, m0, epoch, a, b, e, px, py, pz, qx, qy, qz, obs, out[j])


PARALLEL_FROM = 100_000   #: fewer orbits than this run on one thread (a thread pool's start costs more)


def _earth(mjd_tt: float) -> np.ndarray:
    """Heliocentric position of the Earth's centre [AU, ICRS axes]."""
    pvh, _ = erfa.epv00(2400000.5, mjd_tt)
    return np.asarray(pvh["p"], float)


def site_vector(mjd_utc: float, site) -> np.ndarray:
    """Geocentric position of ``site = (lon_deg, lat_deg, height_m)`` [AU, ICRS axes]
    (UT1 taken as UTC; polar motion neglected)."""
    lon, lat, h = site
    itrs = erfa.gd2gc(1, math.radians(lon), math.radians(lat), h)
    era = erfa.era00(2400000.5, mjd_utc)
    c, s = math.cos(era), math.sin(era)
    tirs = np.array([c * itrs[0] - s * itrs[1], s * itrs[0] + c * itrs[1], itrs[2]])
    npb = erfa.pnm06a(2400000.5, mjd_utc + TT_UTC_S / 86400)
    return npb.T @ tirs / AU_M


def _magnitude(H, G, r, delta, r_earth):
    cos_b = np.clip((r**2 + delta**2 - r_earth**2) / (2 * r * delta), -1, 1)
    tb = np.tan(np.arccos(cos_b) / 2)
    phi1, phi2 = np.exp(-3.33 * tb**0.63), np.exp(-1.87 * tb**1.22)
    with np.errstate(divide="ignore"):
        return H + 5 * np.log10(r * delta) - 2.5 * np.log10((1 - G) * phi1 + G * phi2)


class AsteroidTable:
    """The night's table: geocentric places of all (elliptic) orbits at ``t_mid`` (MJD UTC)
    with their rates, slow movers indexed by HEALPix pixel (nested, ``nside``)."""

    def __init__(self, el: Elements, t_mid: float, *, nside: int = 64):
        keep = (np.asarray(el.e) < 1) & (np.asarray(el.a) > 0)
        self.el = el.subset(keep)
        self.t_mid, self.nside = float(t_mid), int(nside)
        a, e = self.el.a.astype(float), self.el.e.astype(float)
        i, om, w = (np.radians(getattr(self.el, f).astype(float)) for f in ("incl", "node", "peri"))
        co, so, cw, sw, ci, si = np.cos(om), np.sin(om), np.cos(w), np.sin(w), np.cos(i), np.sin(i)
        p = np.array([cw * co - sw * so * ci, cw * so + sw * co * ci, sw * si])     # ecliptic
        q = np.array([-sw * co - cw * so * ci, -sw * so + cw * co * ci, cw * si])
        ce, se = math.cos(OBLIQUITY), math.sin(OBLIQUITY)

        def equ(v):
            return [np.ascontiguousarray(v[0]), np.ascontiguousarray(ce * v[1] - se * v[2]),
                    np.ascontiguousarray(se * v[1] + ce * v[2])]

        self._orbit = (K_GAUSS / a**1.5, np.radians(self.el.M.astype(float)), self.el.epoch.astype(float),
                       a, a * np.sqrt(1 - e**2), e, *equ(p), *equ(q))
        self._all = np.arange(len(a), dtype=np.int64)
        self._hp = HEALPix(nside=self.nside, order="nested")

    @classmethod
    def build(cls, el: Elements, t_mid: float, *, nside: int = 64) -> "AsteroidTable":
        """Propagate every orbit to ``t_mid`` and ``t_mid ± RATE_STEP_D`` and index them."""
        tab = cls(el, t_mid, nside=nside)
        places = [tab._places(tab._all, t_mid + dt) for dt in (-RATE_STEP_D, 0.0, RATE_STEP_D)]
        ra, dec = places[1][:, 0], places[1][:, 1]
        v0, v1 = (np.column_stack([np.cos(p[:, 1]) * np.cos(p[:, 0]), np.cos(p[:, 1]) * np.sin(p[:, 0]),
                                   np.sin(p[:, 1])]) for p in (places[0], places[2]))
        rate = np.degrees(2 * np.arcsin(np.linalg.norm(v1 - v0, axis=1) / 2)) / (2 * RATE_STEP_D)
        fast = (rate > SLOW_DEG_DAY) | (places[1][:, 2] < NEAR_AU)
        tab.ra, tab.dec, tab.rate, tab.delta = np.degrees(ra), np.degrees(dec), rate, places[1][:, 2]
        tab.fast = np.flatnonzero(fast)
        slow = np.flatnonzero(~fast)
        pix = tab._hp.lonlat_to_healpix(tab.ra[slow] * u.deg, tab.dec[slow] * u.deg)
        order = np.argsort(pix, kind="stable")
        tab.slow = slow[order]
        tab.offsets = np.searchsorted(pix[order], np.arange(tab._hp.npix + 1))
        return tab

    def __len__(self) -> int:
        return len(self.el)

    def _places(self, idx: np.ndarray, mjd_utc: float, site=None) -> np.ndarray:
        """(n, 4): ra, dec [rad], distance from the observer and the Sun [AU] at ``mjd_utc``."""
        t = mjd_utc + TT_UTC_S / 86400
        obs = _earth(t) + (site_vector(mjd_utc, site) if site is not None else 0.0)
        out = np.empty((len(idx), 4))
        if len(idx):
            kernel = _places_parallel if len(idx) >= PARALLEL_FROM else _places_serial
            kernel(np.asarray(idx, np.int64), t, *self._orbit, obs, out)
        return out

    def candidates(self, mjd: float, ra: float, dec: float, radius_deg: float) -> np.ndarray:
        """Orbits that may be within ``radius_deg`` of (ra, dec) at ``mjd``: the slow movers of
        the pixels around it (reach widened by the time from the midpoint) and every fast one."""
        reach = radius_deg + SLOW_DEG_DAY * abs(mjd - self.t_mid) + 8.8 / 3600 / NEAR_AU + 0.05
        return np.concatenate([self.slow[pixel_rows(self._hp, self.offsets, ra, dec, reach)], self.fast])

    def field(self, mjd: float, ra: float, dec: float, radius_deg: float, site=None) -> Table:
        """Known asteroids within ``radius_deg`` of (ra, dec) at ``mjd`` (UTC) as seen from
        ``site = (lon_deg, lat_deg, height_m)`` (geocentric without): ``designation, name, ra,
        dec, mag, sep_deg, delta_au, rate_deg_day``."""
        idx = self.candidates(mjd, ra, dec, radius_deg)
        pl = self._places(idx, mjd, site)
        a_ra, a_dec = np.degrees(pl[:, 0]), np.degrees(pl[:, 1])
        c = math.cos(math.radians(dec)) * np.cos(np.radians(a_dec)) * np.cos(np.radians(a_ra - ra)) \
            + math.sin(math.radians(dec)) * np.sin(np.radians(a_dec))
        sep = np.degrees(np.arccos(np.clip(c, -1, 1)))
        inside = sep <= radius_deg
        idx, pl, a_ra, a_dec, sep = idx[inside], pl[inside], a_ra[inside], a_dec[inside], sep[inside]
        r_earth = float(np.linalg.norm(_earth(mjd + TT_UTC_S / 86400)))
        mag = _magnitude(self.el.H[idx].astype(float), self.el.G[idx].astype(float), pl[:, 3], pl[:, 2], r_earth)
        return Table({"designation": self.el.designation[idx], "name": self.el.name[idx], "ra": a_ra, "dec": a_dec,
                      "mag": mag, "sep_deg": sep, "delta_au": pl[:, 2], "rate_deg_day": self.rate[idx]})

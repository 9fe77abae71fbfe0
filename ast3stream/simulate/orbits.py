"""Asteroids built to cross the simulated fields, written as MPCORB lines and evaluated with ephem.

An orbit is constructed so that the body is at a chosen (ra, dec) at a chosen time: pick the
geocentric distance rho along the line of sight, so the heliocentric position P = E + rho u
(E: Earth, u: unit vector to the target, J2000 ecliptic); pick a, e with q <= |P| <= Q, which
fixes the true anomaly nu; pick i >= |beta_P|, which fixes the argument of latitude and so
omega and Omega; M follows from Kepler's equation. (M, Omega) are then refined with ephem (light
time, aberration, parallax) to put the body on the target within a milliarcsecond.

Positions (``radec``) are topocentric astrometric J2000: ephem's ``a_ra, a_dec`` (geocentric
astrometric) shifted by the topocentric parallax ``(ra - g_ra, dec - g_dec)`` at the site; they
differ from the geocentric ``a_ra, a_dec`` by at most 8.8"/Delta[AU].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import ephem
import numpy as np
from scipy.optimize import least_squares

from ..catalogs.mpcorb import unpack_epoch
from ..config import DetectorConfig
from .pointing import MJD_DJD, OBLIQUITY, observer

GAUSS_DEG = math.degrees(0.01720209895)   #: n = GAUSS_DEG / a^1.5 [deg/day]
DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUV"
HALF_MONTH = "ABCDEFGHJKLMNOPQRSTUVWXY"
SECOND = "ABCDEFGHJKLMNOPQRSTUVWXYZ"
MPCORB_HEADER = ("Des'n  AbsMag  G    Epoch M         Perihelion      Node       Incl.  e          n       "
                 "     a          U Reference #Obs  #Opp    Arc    rms  Perts")


def pack_epoch(year: int, month: int, day: int) -> str:
    """MPC packed date, e.g. 2025-11-21 -> ``K25BL``."""
    return "IJK"[year // 100 - 18] + f"{year % 100:02d}" + DIGITS[month] + DIGITS[day]


def provisional(year: int, month: int, day: int, k: int) -> tuple[str, str]:
    """The k-th provisional designation of the half-month: (packed, readable)."""
    half = HALF_MONTH[2 * (month - 1) + (day > 15)]
    cycle, second = divmod(k, 25)
    cyc = f"{cycle:02d}" if cycle < 100 else DIGITS[cycle // 10] + str(cycle % 10)
    return ("IJK"[year // 100 - 18] + f"{year % 100:02d}" + half + cyc + SECOND[second],
            f"{year} {half}{SECOND[second]}{cycle if cycle else ''}")


@dataclass
class Orbit:
    desig: str
    name: str
    H: float
    G: float
    epoch: str      #: packed
    M: float
    peri: float
    node: float
    incl: float
    e: float
    a: float

    def line(self) -> str:
        """One MPCORB line (the layout of MPC's MPCORB.DAT up to the perturbers, then flags and name)."""
        n = GAUSS_DEG / self.a**1.5
        return (f"{self.desig:<7s} {self.H:5.2f} {self.G:5.2f} {self.epoch} {self.M % 360:9.5f}  "
                f"{self.peri % 360:9.5f}  {self.node % 360:9.5f}  {self.incl:9.5f}  {self.e:9.7f} "
                f"{n:11.8f} {self.a:11.7f}  0 {'MPCSIM':<9s} {25:5d} {1:3d} {'8 days':>9s} 0.40 M-v 3Ek 0000 {self.name}")

    def body(self) -> ephem.EllipticalBody:
        b = ephem.EllipticalBody()
        b._inc, b._Om, b._om, b._a, b._e, b._M = self.incl, self.node, self.peri, self.a, self.e, self.M
        b._epoch_M = ephem.Date(unpack_epoch(self.epoch) - MJD_DJD)
        b._epoch = ephem.J2000
        b._H, b._G = self.H, self.G
        return b


def radec(body: ephem.EllipticalBody, det: DetectorConfig, mjd: float) -> tuple[float, float, float]:
    """Topocentric astrometric J2000 (ra, dec) in deg and V magnitude at ``mjd`` (UTC)."""
    body.compute(observer(det, mjd))
    dra = (body.ra - body.g_ra + math.pi) % (2 * math.pi) - math.pi
    return (math.degrees(body.a_ra + dra) % 360, math.degrees(body.a_dec + body.dec - body.g_dec),
            float(body.mag))


def _equ_to_ecl(v: np.ndarray) -> np.ndarray:
    c, s = math.cos(OBLIQUITY), math.sin(OBLIQUITY)
    return np.array([v[0], c * v[1] + s * v[2], -s * v[1] + c * v[2]])


def _unit(ra: float, dec: float) -> np.ndarray:
    ra, dec = math.radians(ra), math.radians(dec)
    return np.array([math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)])


def orbit_through(ra: float, dec: float, mjd: float, v_mag: float, desig: str, name: str, epoch: str,
                  det: DetectorConfig, rng: np.random.Generator, neo: bool = False) -> Orbit:
    """An orbit (main belt, or near-Earth if ``neo``) placing the body at (ra, dec) at ``mjd`` with
    V magnitude ``v_mag`` seen from the site."""
    sun = ephem.Sun()
    sun.compute(ephem.Date(mjd - MJD_DJD))
    earth = -_equ_to_ecl(_unit(math.degrees(sun.a_ra), math.degrees(sun.a_dec)) * sun.earth_distance)
    u = _equ_to_ecl(_unit(ra, dec))
    for _ in range(1000):
        rho = rng.uniform(0.04, 0.1) if neo else rng.uniform(1.2, 2.4)
        a = rng.uniform(1.2, 2.0) if neo else rng.uniform(2.2, 3.2)
        e = rng.uniform(0.3, 0.6) if neo else rng.uniform(0.03, 0.25)
        p = earth + rho * u
        r = float(np.linalg.norm(p))
        if a * (1 - e) < r < a * (1 + e):
            break
    nu = math.acos((a * (1 - e**2) / r - 1) / e) * rng.choice([-1, 1])
    lam, beta = math.atan2(p[1], p[0]), math.asin(p[2] / r)
    incl = max(math.radians(rng.uniform(3, 25) if neo else rng.uniform(1, 14)), abs(beta) + math.radians(0.5))
    uarg = math.asin(math.sin(beta) / math.sin(incl))
    if rng.random() < 0.5:
        uarg = math.pi - uarg
    node = lam - math.atan2(math.cos(incl) * math.sin(uarg), math.cos(uarg))
    ecc_anom = 2 * math.atan2(math.sqrt(1 - e) * math.sin(nu / 2), math.sqrt(1 + e) * math.cos(nu / 2))
    t_epoch = unpack_epoch(epoch)
    mean = math.degrees(ecc_anom - e * math.sin(ecc_anom)) - GAUSS_DEG / a**1.5 * (mjd - t_epoch)
    orb = Orbit(desig, name, 0.0, 0.15, epoch, mean % 360, math.degrees(uarg - nu) % 360,
                math.degrees(node) % 360, math.degrees(incl), e, a)

    def resid(p):
        orb.M, orb.node = p
        r_, d_, _ = radec(orb.body(), det, mjd)
        return [((r_ - ra + 180) % 360 - 180) * math.cos(math.radians(dec)) * 3600, (d_ - dec) * 3600]

    sol = least_squares(resid, [orb.M, orb.node], diff_step=1e-7, xtol=1e-12, ftol=1e-12)
    orb.M, orb.node = sol.x[0] % 360, sol.x[1] % 360
    orb.H = round(v_mag - radec(orb.body(), det, mjd)[2], 2)
    return orb

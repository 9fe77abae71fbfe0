"""Where the telescope points: the night's clock, the field grid, and the true and header WCS.

The true WCS is TAN-SIP: a cubic radial distortion ``dr = k r^3`` (SIP ``A_3_0 = A_1_2 = B_2_1 =
B_0_3 = k``) with ``distortion_px`` displacement at the corners. The header WCS written into raw
frames is a plain TAN with the pointing, rotation and scale perturbed, as a mount would report it.
"""
from __future__ import annotations

import math

import ephem
import numpy as np
from astropy.table import Table
from astropy.wcs import WCS, Sip

from ..config import DetectorConfig, SimulationConfig
from .detector import Layout

OBLIQUITY = math.radians(23.4392911)
MJD_DJD = 15019.5  #: MJD = ephem Dublin Julian date + this


def observer(det: DetectorConfig, mjd: float | None = None) -> ephem.Observer:
    """The site, without refraction, reporting J2000 astrometric positions."""
    obs = ephem.Observer()
    obs.lon, obs.lat, obs.elevation = str(det.site_lon), str(det.site_lat), det.site_height
    obs.pressure = 0
    obs.epoch = ephem.J2000
    if mjd is not None:
        obs.date = ephem.Date(mjd - MJD_DJD)
    return obs


def midnight_mjd(det: DetectorConfig, night: str) -> float:
    """MJD (UTC) of the Sun's lower culmination in the night starting on local date ``night``."""
    obs = observer(det)
    obs.date = ephem.Date(night.replace("-", "/") + " 12:00") - det.site_lon / 360.0
    return float(obs.next_antitransit(ephem.Sun())) + MJD_DJD


def airmass(det: DetectorConfig, ra: float, dec: float, mjd: float) -> float:
    """Airmass (Hardie 1962) of a J2000 position."""
    body = ephem.FixedBody()
    body._ra, body._dec, body._epoch = math.radians(ra), math.radians(dec), ephem.J2000
    body.compute(observer(det, mjd))
    sec = 1 / max(math.sin(body.alt), 0.05) - 1
    return 1 + sec - 0.0018167 * sec - 0.002875 * sec**2 - 0.0008083 * sec**3


def field_size_deg(lay: Layout, det: DetectorConfig) -> tuple[float, float]:
    return lay.nx * det.pixel_scale / 3600, lay.ny * det.pixel_scale / 3600


def plan_fields(n: int, lay: Layout, det: DetectorConfig, sim: SimulationConfig, mjd_mid: float) -> Table:
    """``n`` adjacent fields along RA, by default on the meridian at midnight, 2 deg north of the
    ecliptic (so main-belt asteroids are about)."""
    ra0 = sim.field_ra
    if ra0 is None:
        ra0 = math.degrees(observer(det, mjd_mid).sidereal_time())
    dec0 = sim.field_dec
    if dec0 is None:
        dec0 = math.degrees(math.atan(math.tan(OBLIQUITY) * math.sin(math.radians(ra0)))) + 2.0
    width, _ = field_size_deg(lay, det)
    step = 1.05 * width / math.cos(math.radians(dec0))
    ra = (ra0 + (np.arange(n) - (n - 1) / 2) * step) % 360
    return Table({"field_id": 1001 + np.arange(n), "ra": ra, "dec": np.full(n, dec0)})


def make_wcs(ra: float, dec: float, lay: Layout, pixel_scale: float, rotation_deg: float = 0.0,
             distortion_px: float = 0.0) -> WCS:
    """TAN(-SIP) WCS of the trimmed image, north up and east left before ``rotation_deg``."""
    w = WCS(naxis=2)
    w.wcs.crpix = [(lay.nx + 1) / 2, (lay.ny + 1) / 2]
    w.wcs.crval = [ra, dec]
    s, t = pixel_scale / 3600, math.radians(rotation_deg)
    w.wcs.cd = [[-s * math.cos(t), s * math.sin(t)], [s * math.sin(t), s * math.cos(t)]]
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.pixel_shape = (lay.nx, lay.ny)
    if distortion_px:
        k = distortion_px / math.hypot(lay.nx / 2, lay.ny / 2) ** 3
        a, b = np.zeros((4, 4)), np.zeros((4, 4))
        a[3, 0] = a[1, 2] = k
        b[2, 1] = b[0, 3] = k
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
        w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.set()
    return w


def header_wcs(ra: float, dec: float, rotation_deg: float, lay: Layout, det: DetectorConfig,
               sim: SimulationConfig, rng: np.random.Generator) -> tuple[WCS, dict]:
    """The approximate WCS a mount reports: pointing off by 0.3-1 x ``wcs_offset_arcmin``,
    rotation by up to ``wcs_rotation_deg``, scale by up to ``wcs_scale_error``."""
    off = sim.wcs_offset_arcmin * rng.uniform(0.3, 1.0) / 60
    pa = rng.uniform(0, 2 * math.pi)
    dra = off * math.sin(pa) / math.cos(math.radians(dec))
    ddec = off * math.cos(pa)
    drot = rng.uniform(-1, 1) * sim.wcs_rotation_deg
    dscale = rng.uniform(-1, 1) * sim.wcs_scale_error
    w = make_wcs(ra + dra, dec + ddec, lay, det.pixel_scale * (1 + dscale), rotation_deg + drot)
    return w, {"offset_arcmin": off * 60, "rotation_deg": drot, "scale_error": dscale}


def in_footprint(w: WCS, ra, dec, inset: float = 0.0) -> np.ndarray:
    """Whether (ra, dec) fall on the image at least ``inset`` px inside its edges."""
    x, y = w.all_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0, quiet=True)
    nx, ny = w.pixel_shape
    return (x >= inset - 0.5) & (x < nx - 0.5 - inset) & (y >= inset - 0.5) & (y < ny - 0.5 - inset)

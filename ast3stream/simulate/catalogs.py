"""The simulated sky: stars, the reference catalogue, GLADE+-like galaxies and transients.

Star counts follow ``log10 N(<g) = 0.3 g + c`` (normalised to ``star_density_g21`` per deg^2 at
g = 21). Galaxies are drawn uniformly in volume (p(z) ~ z^2) with M_B ~ N(-19.8, 1), Planck18
luminosity distances, and sizes r_e ~ 3 kpc x 10^(-0.1 (M_B + 20)). Transients sit in galaxies at
0.3-1.5 r_e from the nucleus and brighten or fade linearly in magnitude during the night.
"""
from __future__ import annotations

import math

import numpy as np
from astropy.cosmology import Planck18
from astropy.table import Table, vstack
from astropy.wcs import WCS

from .pointing import in_footprint

SLOPE = 0.3


def sky_box(fields: Table, half_width: float, half_height: float, margin: float) -> tuple[float, ...]:
    """(ra0, ra1, dec0, dec1) enclosing all fields plus ``margin`` deg (ra may exceed 360)."""
    dec0 = float(np.min(fields["dec"])) - half_height - margin
    dec1 = float(np.max(fields["dec"])) + half_height + margin
    cosd = math.cos(math.radians(max(abs(dec0), abs(dec1))))
    ra = np.unwrap(np.radians(fields["ra"]))
    ra0 = math.degrees(ra.min()) - (half_width + margin) / cosd
    ra1 = math.degrees(ra.max()) + (half_width + margin) / cosd
    return ra0, ra1, dec0, dec1


def box_area(box) -> float:
    ra0, ra1, dec0, dec1 = box
    return math.radians(ra1 - ra0) * (math.sin(math.radians(dec1)) - math.sin(math.radians(dec0))) * (180 / math.pi) ** 2


def uniform_positions(box, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ra0, ra1, dec0, dec1 = box
    ra = rng.uniform(ra0, ra1, n) % 360
    dec = np.degrees(np.arcsin(rng.uniform(math.sin(math.radians(dec0)), math.sin(math.radians(dec1)), n)))
    return ra, dec


def draw_stars(box, density_g21: float, mag_bright: float, mag_faint: float, rng: np.random.Generator) -> Table:
    """True stars: ``id``, ``ra``, ``dec``, ``g`` with dN/dg ~ 10^(0.3 g)."""
    lo, hi = 10 ** (SLOPE * (mag_bright - 21)), 10 ** (SLOPE * (mag_faint - 21))
    n = rng.poisson(density_g21 * (hi - lo) * box_area(box))
    g = 21 + np.log10(rng.uniform(lo, hi, n)) / SLOPE
    ra, dec = uniform_positions(box, n, rng)
    return Table({"id": np.arange(n), "ra": ra, "dec": dec, "g": g.astype(np.float32)})


def reference_catalogue(stars: Table, mag_limit: float, rng: np.random.Generator) -> Table:
    """What a survey catalogue lists: stars to ``mag_limit`` with errors 0.01 -> 0.05 mag at the limit."""
    s = stars[stars["g"] <= mag_limit]
    err = np.clip(0.01 + 0.04 * 10 ** (0.4 * (s["g"] - mag_limit)), 0.01, 0.05)
    return Table({
        "source_id": s["id"], "ra": s["ra"], "dec": s["dec"],
        "g": (s["g"] + rng.normal(0, err)).astype(np.float32), "g_err": err.astype(np.float32),
        "pmra": np.zeros(len(s), np.float32), "pmdec": np.zeros(len(s), np.float32),
    }, meta={"comment": "simulated reference catalogue; pm in mas/yr"})


def _galaxies(ra, dec, rng: np.random.Generator, pixel_scale: float, z_range=(0.006, 0.08)) -> Table:
    n = len(ra)
    z = (rng.uniform(z_range[0] ** 3, z_range[1] ** 3, n)) ** (1 / 3)
    d_l = Planck18.luminosity_distance(z).value
    m_b = np.clip(rng.normal(-19.8, 1.0, n), -22.5, -17.5)
    b = m_b + 5 * np.log10(d_l) + 25
    r_e_kpc = 3.0 * 10 ** (-0.1 * (m_b + 20) + rng.normal(0, 0.12, n))
    d_a = d_l / (1 + z) ** 2
    r_e_px = np.clip(r_e_kpc / (d_a * 1e3) * 206265 / pixel_scale, 1.5, 60)
    bulge = rng.random(n) < 0.35
    return Table({
        "ra": ra, "dec": dec, "z": z, "d_l": d_l, "B": b, "K": b - rng.normal(3.9, 0.3, n),
        "g": b - rng.normal(0.35, 0.1, n), "r_e_px": r_e_px, "sersic_n": np.where(bulge, 4.0, 1.0),
        "q": np.where(bulge, rng.uniform(0.6, 1.0, n), rng.uniform(0.25, 1.0, n)),
        "pa": rng.uniform(0, np.pi, n),
    })


def draw_galaxies(box, field_wcs: list[WCS], density: float, min_per_field: int, pixel_scale: float,
                  rng: np.random.Generator, inner_inset: float = 20.0, min_inner: int = 0,
                  background_density: float = 0.0) -> Table:
    """Galaxies: ``density`` per deg^2 (z < 0.08, catalogued: ``in_glade``) over the box, topped up
    to ``min_per_field`` in each field and to ``min_inner`` at least ``inner_inset`` px inside it
    (hosts seen on every visit); plus ``background_density`` per deg^2 at 0.08 < z < 0.5, drawn
    in the images but not catalogued."""
    n = rng.poisson(density * box_area(box))
    parts = [_galaxies(*uniform_positions(box, n, rng), rng, pixel_scale)]
    for w in field_wcs:
        nx, ny = w.pixel_shape
        for inset, wanted in ((inner_inset, min_inner), (20.0, min_per_field)):
            have = sum(int(np.sum(in_footprint(w, p["ra"], p["dec"], inset=inset))) for p in parts)
            extra = wanted - have
            if extra > 0:
                ra, dec = w.all_pix2world(rng.uniform(inset, nx - inset, extra), rng.uniform(inset, ny - inset, extra), 0)
                parts.append(_galaxies(ra % 360, dec, rng, pixel_scale))
    gal = vstack(parts)
    gal["in_glade"] = np.ones(len(gal), bool)
    n_bg = rng.poisson(background_density * box_area(box))
    bg = _galaxies(*uniform_positions(box, n_bg, rng), rng, pixel_scale, (0.08, 0.5))
    bg["in_glade"] = np.zeros(n_bg, bool)
    gal = vstack([gal, bg]) if n_bg else gal
    gal["GLADE_no"] = 9_000_001 + np.arange(len(gal))
    return gal


def glade_table(gal: Table) -> Table:
    """The GLADE+-like columns (``galaxies.csv``) of the catalogued galaxies."""
    gal = gal[gal["in_glade"]]
    n = len(gal)
    return Table({
        "GLADE_no": gal["GLADE_no"], "RA": np.round(gal["ra"], 6), "Dec": np.round(gal["dec"], 6),
        "B": np.round(gal["B"], 3), "B_err": np.full(n, 0.05), "K": np.round(gal["K"], 3),
        "K_err": np.full(n, 0.03), "z_helio": np.round(gal["z"], 6), "z_cmb": np.round(gal["z"], 6),
        "z_err": np.full(n, 1.5e-4), "d_L": np.round(gal["d_l"], 3),
        "d_L_err": np.round(0.05 * gal["d_l"], 3), "dist_flag": np.full(n, 1),
        "Object type flag": np.full(n, "G"),
    })


def draw_transients(gal: Table, fields: Table, field_wcs: list[WCS], visits: dict[int, list[float]],
                    n_per_field: int, mjd_ref: float, inset: float, pixel_scale: float,
                    rng: np.random.Generator) -> Table:
    """Transients in galaxies: off before ``t_on`` (between a field's first and second visit) or,
    for some, 2.5-4 mag fainter; after it ``g = m_ref + rate (t - t_ref)`` with rate in mag/day."""
    rows = []
    for fid, w in zip(fields["field_id"], field_wcs):
        hosts = np.flatnonzero(in_footprint(w, gal["ra"], gal["dec"], inset=inset) & gal["in_glade"])
        if not len(hosts):
            continue
        times = visits[int(fid)]
        t0 = times[0] + 1 / 1440
        t1 = times[1] if len(times) > 1 else times[0] + 1
        for k, h in enumerate(rng.choice(hosts, min(n_per_field, len(hosts)), replace=False)):
            r = gal["r_e_px"][h] * rng.uniform(0.3, 1.5) * pixel_scale / 3600
            phi = rng.uniform(0, 2 * np.pi)
            dec = gal["dec"][h] + r * np.cos(phi)
            ra = gal["ra"][h] + r * np.sin(phi) / np.cos(np.radians(dec))
            rows.append({
                "id": f"T{fid}_{k + 1}", "field_id": int(fid), "host": int(gal["GLADE_no"][h]),
                "ra": ra % 360, "dec": dec, "t_on": rng.uniform(t0, t1), "t_ref": mjd_ref,
                "m_ref": rng.uniform(16.6, 20.2), "rate": rng.uniform(-3, 3),
                "pre_delta": rng.uniform(2.5, 4.0) if rng.random() < 0.3 else np.inf,
            })
    return Table(rows=rows, names=["id", "field_id", "host", "ra", "dec", "t_on", "t_ref", "m_ref", "rate",
                                   "pre_delta"])


def transient_mag(tr: Table, mjd: float) -> np.ndarray:
    """g magnitudes at ``mjd`` (inf where the source is absent)."""
    m = tr["m_ref"] + tr["rate"] * (mjd - tr["t_ref"])
    return np.where(mjd >= tr["t_on"], m, m + tr["pre_delta"])

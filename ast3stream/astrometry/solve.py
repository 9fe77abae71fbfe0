"""Astrometric calibration from the header's approximate WCS: pattern match, then TAN + SIP.

1. Reference stars in a cone covering the image plus ``max_offset_arcmin`` are projected with
   the header WCS; the brightest ones not brighter than the brightest clean star at the nominal
   zero point (saturated stars are not in the clean list) are kept in the same surface density
   as the ``n_brightest`` clean stars.
2. :func:`~ast3stream.astrometry.match.match_triangles` finds the similarity (shift, rotation,
   scale within the configured prior) between the two lists.
3. ``max_fit_stars`` clean stars spread over the frame (:func:`spread_stars`: a few hundred fix
   a SIP of order 4; thousands only make each fit slower) are matched (radius
   ``match_radius_arcsec``) to the catalogue stars projected into the frame, a TAN WCS is
   fitted, then TAN-SIP of order ``sip_order`` (lowered while fewer than 2 stars per coefficient), with 3-sigma clipping and re-matching at ``max(3 rms, 0.5")`` until stable.
   With fewer than ``min_stars_linear`` matches only the pointing (CRVAL) of the header WCS is
   refitted.

Returns the WCS and ``rms_arcsec`` (2-D RMS of the star-minus-reference separations),
``rms_ra_arcsec``, ``rms_dec_arcsec``, ``n_matched``, ``sip_order``, ``pixel_scale``, and the
header WCS's ``offset_arcmin`` and ``rotation_deg`` from the solution.
"""
from __future__ import annotations

import warnings

import numpy as np
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy.spatial import cKDTree
from threadpoolctl import threadpool_limits

from ..catalogs.refcat import as_refcat
from ..config import AstrometryConfig, DetectorConfig
from ..image import Frame
from .fit import fit_shift, fit_tan_sip, n_terms, tan_project
from .match import match_triangles


class AstrometryError(RuntimeError):
    """No astrometric solution; the message says why."""


def _angle(wcs: WCS) -> float:
    cd = wcs.wcs.cd if wcs.wcs.has_cd() else wcs.wcs.get_pc() * wcs.wcs.cdelt[:, None]
    return float(np.degrees(np.arctan2(cd[1, 0], cd[1, 1])))


def _separations(wcs: WCS, x, y, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (dra cos dec, ddec) in arcsec of the WCS positions from the reference."""
    r, d = wcs.all_pix2world(x, y, 0)
    dra = ((r - ra + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec))
    return dra * 3600.0, (d - dec) * 3600.0


def _fit(x, y, ra, dec, crpix, crval, order, shape, wcs0: WCS, ac, inverse: bool = False) -> WCS:
    """TAN-SIP fit, or only the pointing of the header WCS with fewer than ``min_stars_linear`` stars."""
    if len(x) < ac.min_stars_linear:
        return fit_shift(x, y, ra, dec, wcs0)
    return fit_tan_sip(x, y, ra, dec, crpix, crval, order, shape, inverse=inverse)


def spread_stars(stars, shape: tuple[int, int], n: int):
    """Up to ``n`` of ``stars``, brightest first, spread over the frame: on a grid of about ``n / 4``
    cells, the brightest star of every cell, then the second brightest of every cell, and so on."""
    flux = np.asarray(stars["flux"], float)
    if len(stars) <= n:
        return stars[np.argsort(-flux, kind="stable")]
    ny, nx = shape
    g = max(1, int(round(np.sqrt(n / 4))))
    cell = (np.clip((np.asarray(stars["y"], float) * g / ny).astype(int), 0, g - 1) * g
            + np.clip((np.asarray(stars["x"], float) * g / nx).astype(int), 0, g - 1))
    by_flux = np.argsort(-flux, kind="stable")
    order = by_flux[np.argsort(cell[by_flux], kind="stable")]          # by cell, brightest first
    first = np.searchsorted(cell[order], cell[order])
    rank = np.empty(len(stars), int)
    rank[order] = np.arange(len(stars)) - first
    pick = np.lexsort((-flux, rank))[:n]
    return stars[pick[np.argsort(-flux[pick], kind="stable")]]


@threadpool_limits.wrap(limits=1, user_api="blas")
def solve(frame: Frame, clean_sources, refcat, params: AstrometryConfig,
          detector: DetectorConfig) -> tuple[WCS, dict]:
    """Fit TAN-SIP to the clean star list; raises :class:`AstrometryError` when no solution.

    The many small least-squares problems run on one BLAS thread (several threads contend and
    are slower on a busy machine)."""
    ac = params
    ny, nx = frame.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs0 = WCS(frame.header).celestial
    if not wcs0.has_celestial:
        raise AstrometryError("the header has no approximate celestial WCS")
    if len(clean_sources) < 4:
        raise AstrometryError(f"only {len(clean_sources)} clean stars")
    scale0 = float(np.mean(proj_plane_pixel_scales(wcs0))) * 3600.0
    ra_c, dec_c = (float(v) for v in wcs0.all_pix2world((nx - 1) / 2, (ny - 1) / 2, 0))
    radius = np.hypot(nx, ny) / 2 * scale0 / 3600 + ac.max_offset_arcmin / 60
    ref = as_refcat(refcat).cone(ra_c, dec_c, radius)
    if len(ref) < 4:
        raise AstrometryError(f"only {len(ref)} reference stars within {radius:.2f} deg")
    rx, ry = wcs0.all_world2pix(ref["ra"], ref["dec"], 0, quiet=True)
    rxy = np.column_stack([rx, ry])

    stars = spread_stars(clean_sources, (ny, nx), ac.max_fit_stars)
    sxy = np.column_stack([np.asarray(stars["x"], float), np.asarray(stars["y"], float)])
    n_det = min(ac.n_brightest, len(stars))
    off = ac.max_offset_arcmin * 60 / scale0
    # the catalogue's bright end cut where the brightest clean star lies at the nominal zero point,
    # its faint end 1.5 mag below the faintest fit star there (clouds only make stars look fainter)
    zp_nominal = detector.zeropoint + 2.5 * np.log10(float(frame.primary.get("EXPTIME", detector.exptime))
                                                     / detector.exptime)
    flux = np.asarray(stars["flux"], float)
    m_bright = zp_nominal - 2.5 * np.log10(max(flux.max(), 1.0)) - 0.3
    m_faint = zp_nominal - 2.5 * np.log10(max(flux.min(), 1.0)) + 1.5
    near = (rx > -off) & (rx < nx + off) & (ry > -off) & (ry < ny + off) & (np.asarray(ref["mag"]) <= m_faint)
    ref, rxy = ref[near], rxy[near]
    region = np.asarray(ref["mag"]) >= m_bright
    n_ref = int(np.clip(n_det * (nx + 2 * off) * (ny + 2 * off) / (nx * ny), n_det, 40 * n_det))
    bright = rxy[region][:n_ref]
    tol = 2.5 * max(ac.match_radius_arcsec / scale0, 2.0)
    top = clean_sources[np.argsort(-np.asarray(clean_sources["flux"]), kind="stable")[:n_det]]  # the brightest
    txy = np.column_stack([np.asarray(top["x"], float), np.asarray(top["y"], float)])
    found = match_triangles(txy, bright, tol, k=5,
                            scale_range=(1 - ac.scale_tolerance, 1 + ac.scale_tolerance),
                            max_rotation=np.radians(ac.max_rotation_deg), max_shift=1.5 * off + tol,
                            min_matches=min(5, max(3, n_det // 3)))
    if found is None:
        raise AstrometryError(f"no pattern match between {n_det} stars and {len(bright)} reference stars")
    transform = found[0]

    # first association with the similarity, then iterate fits
    tree = cKDTree(rxy)
    d, j = tree.query(transform(sxy), distance_upper_bound=tol)
    ok = np.isfinite(d)
    crpix = ((nx + 1) / 2.0, (ny + 1) / 2.0)
    crval = (ra_c, dec_c)
    radius_px = ac.match_radius_arcsec / scale0
    wcs, order, n_match = None, 1, 0
    si, ri = np.flatnonzero(ok), j[ok]
    for it in range(6):
        if len(si) < 4:
            raise AstrometryError(f"only {len(si)} stars matched the reference catalogue")
        order = 1
        while order < ac.sip_order and len(si) >= 2 * n_terms(order + 1):
            order += 1
        if it == 0:
            order = 1
        x, y = sxy[si, 0], sxy[si, 1]
        ra, dec = np.asarray(ref["ra"])[ri], np.asarray(ref["dec"])[ri]
        keep = np.ones(len(si), bool)
        for _ in range(5):
            wcs = _fit(x[keep], y[keep], ra[keep], dec[keep], crpix, crval, order, (ny, nx), wcs0, ac)
            dra, ddec = _separations(wcs, x, y, ra, dec)
            dist = np.hypot(dra, ddec)
            new = dist <= 3.0 * np.sqrt(np.mean(dist[keep] ** 2)) if len(si) > 8 else keep
            if np.array_equal(new, keep) or new.sum() < 4:
                break
            keep = new
        crval = tuple(float(v) for v in wcs.wcs.crval)
        rms = float(np.sqrt(np.mean(dra[keep] ** 2 + ddec[keep] ** 2)))
        # re-match every clean star with the new solution
        px, py = wcs.all_world2pix(ref["ra"], ref["dec"], 0, quiet=True)
        tree = cKDTree(np.column_stack([px, py]))
        radius_px = max(3.0 * rms, 0.5) / scale0 if it else radius_px
        d, j = tree.query(sxy, distance_upper_bound=min(radius_px, ac.match_radius_arcsec / scale0))
        ok = np.isfinite(d)
        # one star per reference star: the nearest
        order_d = np.argsort(d[ok])
        uniq = np.unique(j[ok][order_d], return_index=True)[1]
        new_si, new_ri = np.flatnonzero(ok)[order_d][uniq], j[ok][order_d][uniq]
        if it > 1 and len(new_si) == n_match and np.array_equal(np.sort(new_si), np.sort(si[keep])):
            si, ri = new_si, new_ri
            break
        si, ri, n_match = new_si, new_ri, len(new_si)

    x, y = sxy[si, 0], sxy[si, 1]
    ra, dec = np.asarray(ref["ra"])[ri], np.asarray(ref["dec"])[ri]
    wcs = _fit(x, y, ra, dec, crpix, crval, order, (ny, nx), wcs0, ac, inverse=True)
    dra, ddec = _separations(wcs, x, y, ra, dec)
    keep = np.hypot(dra, ddec) < max(3.0 * np.sqrt(np.mean(dra ** 2 + ddec ** 2)), 0.05)
    xi, eta = tan_project(*wcs0.all_pix2world((nx - 1) / 2, (ny - 1) / 2, 0), *wcs.all_pix2world((nx - 1) / 2, (ny - 1) / 2, 0))
    stats = {
        "rms_arcsec": float(np.sqrt(np.mean(dra[keep] ** 2 + ddec[keep] ** 2))),
        "rms_ra_arcsec": float(np.std(dra[keep])), "rms_dec_arcsec": float(np.std(ddec[keep])),
        "n_matched": int(keep.sum()), "sip_order": int(order) if order >= 2 else 0,
        "model": "shift" if len(x) < ac.min_stars_linear else ("tan-sip" if order >= 2 else "tan"),
        "pixel_scale": float(np.mean(proj_plane_pixel_scales(wcs))) * 3600.0,
        "offset_arcmin": float(np.hypot(xi, eta)) * 60.0,
        "rotation_deg": float((_angle(wcs) - _angle(wcs0) + 180.0) % 360.0 - 180.0),
    }
    return wcs, stats

"""Least-squares TAN + SIP fit (Shupe et al. 2005) of pixel positions to sky positions.

With ``u = x + 1 - CRPIX1``, ``v = y + 1 - CRPIX2`` (``x, y`` 0-based) the SIP forward model is
``(xi, eta) = CD (u + f(u, v), v + g(u, v))``, ``f, g`` polynomials of orders 2..N. Writing both
standard coordinates as full polynomials ``xi = sum c_pq u^p v^q`` makes the fit linear: the
linear terms give CD and ``A_pq, B_pq = CD^-1 (c^xi_pq, c^eta_pq)``. The constant terms are
absorbed into CRVAL (moved to the de-projected constant, then the fit repeats until it is
below 1 mas). The inverse ``AP, BP`` (order N + 1) is fitted on a grid over the image.
"""
from __future__ import annotations

import numpy as np
from astropy.wcs import WCS


def tan_project(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic standard coordinates ``(xi, eta)`` [deg] about ``(ra0, dec0)``."""
    ra, dec = np.radians(ra), np.radians(dec)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return np.degrees(xi), np.degrees(eta)


def tan_deproject(xi, eta, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`tan_project`."""
    xi, eta = np.radians(xi), np.radians(eta)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(np.cos(c) * np.sin(d0) + np.where(rho > 0, eta * np.sin(c) * np.cos(d0) / rho, 0.0))
    ra = a0 + np.arctan2(xi * np.sin(c), rho * np.cos(d0) * np.cos(c) - eta * np.sin(d0) * np.sin(c))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _terms(order: int, min_order: int = 0) -> list[tuple[int, int]]:
    return [(p, n - p) for n in range(min_order, order + 1) for p in range(n, -1, -1)]


def _design(u, v, terms, norm: float) -> np.ndarray:
    un, vn = u / norm, v / norm
    return np.column_stack([un ** p * vn ** q for p, q in terms])


def n_terms(order: int) -> int:
    """Coefficients per axis of a full polynomial of ``order`` (constant included)."""
    return (order + 1) * (order + 2) // 2


def fit_shift(x, y, ra, dec, wcs: WCS) -> WCS:
    """``wcs`` with only CRVAL refitted (few stars: keep the linear part and distortion of ``wcs``)."""
    out = wcs.deepcopy()
    for _ in range(5):
        r, d = out.all_pix2world(x, y, 0)
        xi_m, eta_m = tan_project(r, d, *out.wcs.crval)
        xi_r, eta_r = tan_project(ra, dec, *out.wcs.crval)
        dxi, deta = np.median(xi_r - xi_m), np.median(eta_r - eta_m)
        (c0,), (c1,) = tan_deproject(np.array([dxi]), np.array([deta]), *out.wcs.crval)
        out.wcs.crval = [c0, c1]
        out.wcs.set()
        if np.hypot(dxi, deta) * 3.6e6 < 0.1:
            break
    return out


def fit_tan_sip(x, y, ra, dec, crpix: tuple[float, float], crval: tuple[float, float], order: int,
                shape: tuple[int, int], weights=None, inverse: bool = True) -> WCS:
    """TAN (``order <= 1``) or TAN-SIP WCS mapping 0-based ``x, y`` to ``ra, dec``.

    ``crpix`` is 1-based (FITS); ``crval`` the starting tangent point; ``shape`` is (ny, nx) for
    the inverse-polynomial grid (fitted only if ``inverse``).
    """
    x, y, ra, dec = (np.asarray(v, float) for v in (x, y, ra, dec))
    order = max(int(order), 1)
    u, v = x + 1.0 - crpix[0], y + 1.0 - crpix[1]
    norm = max(np.abs(u).max(), np.abs(v).max(), 1.0)
    terms = _terms(order)
    design = _design(u, v, terms, norm)
    w = np.ones_like(x) if weights is None else np.asarray(weights, float)
    sw = np.sqrt(w)[:, None]
    solver = np.linalg.pinv(design * sw) * sw.T          # least squares: coefficients = solver @ (xi, eta)
    ra0, dec0 = crval
    for _ in range(10):
        (cx, ce) = (solver @ np.column_stack(tan_project(ra, dec, ra0, dec0))).T
        (ra0,), (dec0,) = tan_deproject(np.array([cx[0]]), np.array([ce[0]]), ra0, dec0)
        if np.hypot(cx[0], ce[0]) * 3.6e6 < 1.0:
            break
    (cx, ce) = (solver @ np.column_stack(tan_project(ra, dec, ra0, dec0))).T
    scale = np.array([norm ** (p + q) for p, q in terms])
    cx, ce = cx / scale, ce / scale                       # coefficients of raw u^p v^q
    i10, i01 = terms.index((1, 0)), terms.index((0, 1))
    cd = np.array([[cx[i10], cx[i01]], [ce[i10], ce[i01]]])
    header = {
        "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
        "CRPIX1": crpix[0], "CRPIX2": crpix[1], "CRVAL1": ra0, "CRVAL2": dec0,
        "CD1_1": cd[0, 0], "CD1_2": cd[0, 1], "CD2_1": cd[1, 0], "CD2_2": cd[1, 1],
        "RADESYS": "ICRS",
    }
    if order >= 2:
        inv = np.linalg.inv(cd)
        high = [(i, pq) for i, pq in enumerate(terms) if sum(pq) >= 2]
        a = {pq: inv[0, 0] * cx[i] + inv[0, 1] * ce[i] for i, pq in high}
        b = {pq: inv[1, 0] * cx[i] + inv[1, 1] * ce[i] for i, pq in high}
        header.update({"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "A_ORDER": order, "B_ORDER": order})
        header.update({f"A_{p}_{q}": c for (p, q), c in a.items()})
        header.update({f"B_{p}_{q}": c for (p, q), c in b.items()})
        if inverse:
            header.update(_inverse_sip(a, b, order + 1, crpix, shape))
    wcs = WCS(header)
    wcs.pixel_shape = (shape[1], shape[0])
    return wcs


def _inverse_sip(a: dict, b: dict, order: int, crpix, shape) -> dict:
    """``AP, BP`` such that ``u = U + AP(U, V)`` where ``U = u + f(u, v)``, fitted on a grid."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(-0.5, nx - 0.5, 40), np.linspace(-0.5, ny - 0.5, 40))
    u, v = gx.ravel() + 1.0 - crpix[0], gy.ravel() + 1.0 - crpix[1]
    f = sum(c * u ** p * v ** q for (p, q), c in a.items())
    g = sum(c * u ** p * v ** q for (p, q), c in b.items())
    big_u, big_v = u + f, v + g
    norm = max(np.abs(big_u).max(), np.abs(big_v).max(), 1.0)
    terms = _terms(order, 1)
    design = _design(big_u, big_v, terms, norm)
    scale = np.array([norm ** (p + q) for p, q in terms])
    ap = np.linalg.lstsq(design, u - big_u, rcond=None)[0] / scale
    bp = np.linalg.lstsq(design, v - big_v, rcond=None)[0] / scale
    out = {"AP_ORDER": order, "BP_ORDER": order}
    out.update({f"AP_{p}_{q}": c for (p, q), c in zip(terms, ap)})
    out.update({f"BP_{p}_{q}": c for (p, q), c in zip(terms, bp)})
    return out

"""Survey fields on a GW sky map: enclosed probability, galaxy-weighted score, ToO ranking.

A field is the gnomonic (TAN) rectangle of the detector, ``width`` x ``height`` degrees on
the tangent plane at its centre, position angle 0: a sky position with standard
coordinates (xi, eta) relative to the centre is inside when |xi| <= width/2 and
|eta| <= height/2 (xi, eta in degrees, as a TAN WCS's intermediate coordinates).

Enclosed probability integrates the multi-order map on HEALPix pixels of order ``F``
(~10 pixels across the field's short side, or the map's own finer level where it is
finer): every such pixel whose centre is inside the field contributes
``PROBDENSITY(map pixel containing it) x area_F``. Only pixels near some field are visited (a
coarse HEALPix pre-selection and a k-d tree of field centres), so a full-sky grid costs
seconds. ``cum_prob`` is the probability of the *union* of the fields up to each rank, so
overlapping fields are not counted twice.

The galaxy score weights each catalogue galaxy by its 3-D posterior density and its
luminosity, dP/dV = rho(n) N(n) / (sqrt(2 pi) sigma(n)) exp(-(r - mu(n))^2 / (2 sigma(n)^2))
x L (Singer et al. 2016, ApJL 829, L15, eq. 2, with DISTMU, DISTSIGMA, DISTNORM), and gives
each field the fraction of the catalogue's total weight inside it.
"""
from __future__ import annotations

import numpy as np
from astropy.table import Table
from astropy_healpix import HEALPix, uniq_to_level_ipix
from scipy.spatial import cKDTree

from ast3stream.gw.skymap import DISTANCE_COLUMNS, pixel_index, rows_at

CHUNK = 1 << 21     #: fine pixels processed at a time


def make_grid(width_deg: float, height_deg: float, dec_min: float = -90.0, dec_max: float = 90.0,
              overlap: float = 0.1, disjoint: bool = False, prefix: str = "") -> Table:
    """A survey grid of fields in declination bands.

    Default: neighbours overlap by the fraction ``overlap`` (band centres step by
    ``height (1 - overlap)``; each band's RA step is ``width (1 - overlap)`` on its widest
    parallel), so the whole sky between the limits is covered. ``disjoint=True``: no two
    fields share any point (RA step = the field's widest RA extent, at its poleward corners;
    bands 2 % further apart than ``height``), leaving slivers uncovered instead; exact for
    bands within |dec| <= 80 deg (nearer the poles the corners of neighbouring bands may touch).
    """
    step_dec = height_deg * (1.02 if disjoint else 1 - overlap)
    n_band = max(1, int(np.floor((dec_max - dec_min - height_deg) / step_dec)) + 1) if disjoint else \
        max(1, int(np.ceil((dec_max - dec_min - height_deg) / step_dec)) + 1)
    centre = (dec_min + dec_max) / 2
    decs = centre + (np.arange(n_band) - (n_band - 1) / 2) * step_dec if disjoint else \
        np.linspace(dec_min + height_deg / 2, dec_max - height_deg / 2, n_band) if n_band > 1 else [centre]
    half_w, half_h = np.radians(width_deg / 2), np.radians(height_deg / 2)
    ids, ras, out_decs = [], [], []
    for dec in decs:
        d0 = np.radians(abs(dec))
        if disjoint:   # RA half-extent at the poleward corner (xi, eta) = (w/2, h/2) of the TAN rectangle
            denom = np.cos(d0) - half_h * np.sin(d0)
            n_ra = int(np.floor(np.pi / np.arctan2(half_w, denom))) if denom > 0 else 1
        else:
            lo, hi = dec - height_deg / 2, dec + height_deg / 2
            widest = 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))
            n_ra = int(np.ceil(360 * np.cos(np.radians(min(widest, 89.9))) / (width_deg * (1 - overlap))))
        n_ra = max(n_ra, 1)
        for ra in (np.arange(n_ra) + 0.5) * 360 / n_ra:
            ids.append(f"{prefix}{len(ids):05d}")
            ras.append(ra)
            out_decs.append(float(np.clip(dec, -90, 90)))
    return Table({"field_id": ids, "ra": ras, "dec": out_decs})


def auto_order(width_deg: float, height_deg: float, per_side: int = 10) -> int:
    """The HEALPix order with at least ``per_side`` pixels across the field's short side."""
    target = np.radians(min(width_deg, height_deg)) / per_side
    return int(np.clip(np.ceil(np.log2(np.sqrt(4 * np.pi / 12) / target)), 0, 29))


def field_probabilities(skymap: Table, fields: Table, width_deg: float, height_deg: float,
                        galaxies: Table | None = None, order: int | None = None,
                        rank_by: str = "prob") -> Table:
    """Rank ``fields`` (``field_id``, ``ra``, ``dec``) on ``skymap``.

    Returns the fields sorted by ``rank_by`` (``prob`` or ``galaxy_score``) with ``rank``
    (1 = first), ``prob`` (enclosed probability), ``cum_prob`` (probability of the union of
    fields 1..rank) and ``galaxy_score`` (NaN without ``galaxies``).
    """
    order = auto_order(width_deg, height_deg) if order is None else order
    if len(fields) == 0:
        out = Table(fields, copy=True)
        for name, dtype in (("rank", np.int64), ("prob", float), ("cum_prob", float), ("galaxy_score", float)):
            out[name] = np.zeros(0, dtype)
        return out
    field_idx, pix_serial, contrib, geometry = _memberships(skymap, fields, width_deg, height_deg, order)
    prob = np.bincount(field_idx, weights=contrib, minlength=len(fields))

    score = np.full(len(fields), np.nan)
    if galaxies is not None:
        score = _galaxy_scores(skymap, galaxies, *geometry, width_deg, height_deg)
    key = prob if rank_by == "prob" else np.nan_to_num(score)
    ranking = np.lexsort((np.arange(len(fields)), -key))        # stable: ties keep input order
    rank = np.empty(len(fields), np.int64)
    rank[ranking] = np.arange(len(fields))
    gained = _union_gain(rank, field_idx, pix_serial, contrib)

    out = Table(fields[ranking], copy=True)
    out["rank"] = np.arange(1, len(fields) + 1)
    out["prob"] = prob[ranking]
    out["cum_prob"] = np.cumsum(gained)
    out["galaxy_score"] = score[ranking]
    out.meta.update(order=order, width_deg=width_deg, height_deg=height_deg)
    return out


def probability_bound(skymap: Table, fields: Table, width_deg: float, height_deg: float) -> np.ndarray:
    """An upper bound of each field's enclosed probability (cheap): the field's solid angle x
    the highest density of any map pixel that may overlap it. Fields below a probability
    threshold can be left out before :func:`field_probabilities` without changing the result."""
    X, Y = np.radians(width_deg / 2), np.radians(height_deg / 2)
    area = 4 * np.arcsin(X * Y / np.sqrt((1 + X**2) * (1 + Y**2)))
    reach = np.arctan(np.hypot(X, Y))
    coarse = int(np.clip(np.floor(np.log2(np.sqrt(4 * np.pi / 12) / reach)), 0, 29))
    level, ipix = uniq_to_level_ipix(np.asarray(skymap["UNIQ"]))
    dens = np.asarray(skymap["PROBDENSITY"], float)
    peak = np.zeros(12 * 4**coarse)
    fine = level >= coarse
    np.maximum.at(peak, ipix[fine] >> (2 * (level[fine] - coarse)), dens[fine])
    for lvl in np.unique(level[~fine]):        # map pixels coarser than ``coarse`` spread to their children
        sel = ~fine & (level == lvl)
        n = 4 ** int(coarse - lvl)
        children = (ipix[sel, None] * n + np.arange(n)).ravel()
        np.maximum.at(peak, children, np.repeat(dens[sel], n))
    hp = HEALPix(2**coarse, order="nested")
    tree = cKDTree(np.column_stack(hp.healpix_to_xyz(np.arange(hp.npix))))
    margin = 1.5 * np.sqrt(4 * np.pi / hp.npix)          # > a pixel's centre-to-corner distance
    near = tree.query_ball_point(_xyz(np.asarray(fields["ra"], float), np.asarray(fields["dec"], float)),
                                 _chord(reach + margin))
    return np.array([peak[i].max() if len(i) else 0.0 for i in near]) * area * 1.001


def covered_probability(skymap: Table, fields: Table, width_deg: float, height_deg: float,
                        order: int | None = None) -> np.ndarray:
    """Probability of the union of fields 1..i (``ra``, ``dec``), in the table's own order
    (a schedule's time order, exposures as they were taken); repeated fields add nothing."""
    if len(fields) == 0:
        return np.zeros(0)
    order = auto_order(width_deg, height_deg) if order is None else order
    field_idx, pix_serial, contrib, _ = _memberships(skymap, fields, width_deg, height_deg, order)
    return np.cumsum(_union_gain(np.arange(len(fields)), field_idx, pix_serial, contrib))


def depth_coverage(skymap: Table, fields: Table, width_deg: float, height_deg: float, depths,
                   order: int | None = None) -> np.ndarray:
    """Probability covered at least as deep as each of ``depths`` [mag] by fields (``ra``, ``dec``,
    ``maglim``: the limiting magnitude each exposure reached; NaN counts as not covered)."""
    depths = np.atleast_1d(np.asarray(depths, float))
    if len(fields) == 0:
        return np.zeros(depths.size)
    order = auto_order(width_deg, height_deg) if order is None else order
    field_idx, pix_serial, contrib, _ = _memberships(skymap, fields, width_deg, height_deg, order)
    maglim = np.nan_to_num(np.asarray(fields["maglim"], float), nan=-np.inf)
    n = int(pix_serial.max()) + 1 if pix_serial.size else 0
    deepest = np.full(n, -np.inf)
    np.maximum.at(deepest, pix_serial, maglim[field_idx])
    value = np.zeros(n)
    value[pix_serial] = contrib                      # one pixel's contribution, whichever field holds it
    return np.array([value[deepest >= d].sum() for d in depths])


def _memberships(skymap: Table, fields: Table, width_deg: float, height_deg: float, order: int):
    """(field index, fine-pixel serial, pixel probability) of every fine pixel inside every field,
    and the fields' search geometry (tree, k, reach, frames)."""
    ra0, dec0 = np.asarray(fields["ra"], float), np.asarray(fields["dec"], float)
    frames = _frames(ra0, dec0)
    tree = cKDTree(frames[:, 0])
    reach = np.arctan(np.hypot(np.radians(width_deg / 2), np.radians(height_deg / 2)))  # half-diagonal
    k = int(tree.query_ball_point(frames[:, 0], _chord(2 * reach), return_length=True).max())
    dens = np.asarray(skymap["PROBDENSITY"], float)
    field_idx, pix_serial, contrib, n_seen = [], [], [], 0
    for fine_order, fine in _fine_pixels(tree, reach, skymap, order):
        xyz = np.column_stack(HEALPix(2**fine_order, order="nested").healpix_to_xyz(fine))
        f, p = _inside(tree, k, reach, frames, xyz, width_deg, height_deg)
        rows = pixel_index(skymap, fine[p], fine_order)
        field_idx.append(f)
        pix_serial.append(p + n_seen)
        contrib.append(np.where(rows >= 0, dens[rows], 0.0) * 4 * np.pi / (12 * 4.0**fine_order))
        n_seen += fine.size
    field_idx, pix_serial, contrib = (np.concatenate(a) if a else np.zeros(0) for a in (field_idx, pix_serial, contrib))
    return field_idx.astype(np.int64), pix_serial.astype(np.int64), contrib, (tree, k, reach, frames)


def _union_gain(rank: np.ndarray, field_idx, pix_serial, contrib) -> np.ndarray:
    """Probability each rank adds to the union: each fine pixel counts once, for the best-ranked
    field containing it."""
    first = np.lexsort((rank[field_idx], pix_serial))
    new = np.ones(first.size, bool)
    new[1:] = pix_serial[first][1:] != pix_serial[first][:-1]
    return np.bincount(rank[field_idx[first][new]], weights=contrib[first][new], minlength=len(rank))


def _xyz(ra, dec) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _chord(angle: float) -> float:
    return 2 * np.sin(min(angle, np.pi) / 2)


def _fine_pixels(tree: cKDTree, reach: float, skymap: Table, base_order: int):
    """(order, NESTED pixels) chunks covering every coarse pixel that may touch a field.

    Each coarse pixel is split to ``base_order``, or to the finest map level inside it where
    the map is finer, so a map's high-resolution patches are integrated at full resolution
    without refining the whole sky.
    """
    coarse = int(np.clip(np.floor(np.log2(np.sqrt(4 * np.pi / 12) / reach)), 0, base_order))
    hp = HEALPix(2**coarse, order="nested")
    dist, _ = tree.query(np.column_stack(hp.healpix_to_xyz(np.arange(hp.npix))))
    margin = 1.5 * np.sqrt(4 * np.pi / hp.npix)          # > a pixel's centre-to-corner distance
    near = np.flatnonzero(dist <= _chord(reach + margin))
    level, ipix = uniq_to_level_ipix(np.asarray(skymap["UNIQ"]))
    finer = level > base_order
    local = np.full(hp.npix, base_order)
    np.maximum.at(local, ipix[finer] >> (2 * (level[finer] - coarse)), level[finer])
    for order in np.unique(local[near]):
        parents = near[local[near] == order].astype(np.int64)
        nchild = 4 ** int(order - coarse)
        per_chunk = max(1, CHUNK // nchild)
        for i in range(0, parents.size, per_chunk):
            yield int(order), (parents[i:i + per_chunk, None] * nchild + np.arange(nchild, dtype=np.int64)).ravel()


def _inside(tree, k, reach, frames, xyz, width, height) -> tuple[np.ndarray, np.ndarray]:
    """(field index, point index) of every point (unit vectors ``xyz``) inside every field.

    With the field's centre c and its local east and north unit vectors e, n (``frames``),
    the TAN standard coordinates of a point p are xi = p.e / p.c, eta = p.n / p.c.
    """
    _, idx = tree.query(xyz, k=k, distance_upper_bound=_chord(reach) * (1 + 1e-9), workers=-1)
    idx = idx.reshape(len(xyz), k)
    point, slot = np.nonzero(idx < len(frames))
    f = idx[point, slot]
    p = xyz[point]
    c, e, n = frames[f, 0], frames[f, 1], frames[f, 2]
    cosc = np.einsum("ij,ij->i", p, c)
    xi = np.degrees(np.einsum("ij,ij->i", p, e) / cosc)
    eta = np.degrees(np.einsum("ij,ij->i", p, n) / cosc)
    ok = (cosc > 0) & (np.abs(xi) <= width / 2) & (np.abs(eta) <= height / 2)
    return f[ok], point[ok]


def _frames(ra0, dec0) -> np.ndarray:
    """(N, 3, 3): centre, east and north unit vectors of each field."""
    a, d = np.radians(ra0), np.radians(dec0)
    east = np.column_stack([-np.sin(a), np.cos(a), np.zeros_like(a)])
    north = np.column_stack([-np.sin(d) * np.cos(a), -np.sin(d) * np.sin(a), np.cos(d)])
    return np.stack([_xyz(ra0, dec0), east, north], axis=1)


def galaxy_weights(skymap: Table, galaxies: Table) -> np.ndarray:
    """dP/dV x L of each galaxy (unnormalised; Singer et al. 2016 eq. 2).

    Columns: ``RA``/``ra`` and ``DEC``/``Dec``/``dec`` [deg]; optional luminosity distance
    ``d_L``/``dist`` [Mpc] (used with the map's distance layer; galaxies without one then get
    weight 0) and absolute B magnitude ``B_Abs`` (L = 10^(-0.4 B_Abs), the median L when missing).
    """
    ra, dec = _column(galaxies, "RA", "ra"), _column(galaxies, "DEC", "Dec", "dec")
    rows = rows_at(skymap, ra, dec)
    inside = rows >= 0
    rows = rows.clip(0)
    weight = np.where(inside, np.asarray(skymap["PROBDENSITY"], float)[rows], 0.0)
    dist = _column(galaxies, "d_L", "dist", "DISTMPC")
    if dist is not None and all(c in skymap.colnames for c in DISTANCE_COLUMNS):
        mu, sigma, norm = (np.asarray(skymap[c], float)[rows] for c in DISTANCE_COLUMNS)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            radial = norm / (np.sqrt(2 * np.pi) * sigma) * np.exp(-0.5 * ((dist - mu) / sigma) ** 2)
        weight = weight * np.nan_to_num(radial, nan=0.0, posinf=0.0)
    babs = _column(galaxies, "B_Abs")
    if babs is not None:
        lum = 10 ** (-0.4 * babs)
        weight = weight * np.where(np.isfinite(lum), lum, np.nanmedian(lum) if np.isfinite(lum).any() else 1.0)
    return weight


def _galaxy_scores(skymap, galaxies, tree, k, reach, frames, width, height) -> np.ndarray:
    """Fraction of the catalogue's total dP/dV x L inside each field."""
    weight = galaxy_weights(skymap, galaxies)
    total = weight.sum()
    f, g = _inside(tree, k, reach, frames, _xyz(_column(galaxies, "RA", "ra"),
                   _column(galaxies, "DEC", "Dec", "dec")), width, height)
    score = np.bincount(f, weights=weight[g], minlength=len(frames))
    return score / total if total > 0 else score


def _column(table: Table, *names: str) -> np.ndarray | None:
    """The first of ``names`` present, as float with NaN for masked values."""
    for name in names:
        if name in table.colnames:
            return np.ma.filled(np.ma.asarray(table[name], dtype=float), np.nan)
    return None

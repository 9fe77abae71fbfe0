"""Triangle pattern matching of two star lists (Groth 1986; Valdes et al. 1995; as in astroalign).

Each star forms triangles with pairs of its ``k`` nearest neighbours; a triangle's invariants are
its side ratios ``(L2/L1, L1/L0)`` (``L0 <= L1 <= L2``), independent of shift, rotation and scale.
Triangles of the two lists with close invariants (KD-tree) propose similarity transforms
(vertices paired by the side ordering, Umeyama 1991 least squares); proposals outside the prior
on scale, rotation and shift are discarded, and the one that brings the most stars of list A
within ``tol`` of a star of list B wins.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.spatial import cKDTree


@dataclass
class Similarity:
    """``B = scale R(rotation) A + shift`` (rotation in radians, counter-clockwise)."""

    scale: float
    rotation: float
    shift: np.ndarray

    @property
    def matrix(self) -> np.ndarray:
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        return self.scale * np.array([[c, -s], [s, c]])

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        return xy @ self.matrix.T + self.shift


def fit_similarity(a: np.ndarray, b: np.ndarray) -> Similarity:
    """Least-squares similarity taking points ``a`` (N, 2) to ``b`` (Umeyama 1991, no reflection)."""
    ma, mb = a.mean(0), b.mean(0)
    da, db = a - ma, b - mb
    za = da[:, 0] + 1j * da[:, 1]
    zb = db[:, 0] + 1j * db[:, 1]
    k = np.vdot(za, zb) / max(np.vdot(za, za).real, 1e-300)   # zb ~ k za
    m = np.array([[k.real, -k.imag], [k.imag, k.real]])
    return Similarity(abs(k), float(np.angle(k)), mb - m @ ma)


def _triangles(xy: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertex indices ordered by opposite side (short, mid, long) and invariants of local triangles."""
    n = len(xy)
    k = min(k, n - 1)
    _, nbr = cKDTree(xy).query(xy, k + 1)
    tris = {tuple(sorted((i, j, l))) for i in range(n) for j, l in combinations(nbr[i, 1:], 2)}
    tris = np.array(sorted(tris), int).reshape(-1, 3)
    p = xy[tris]                                              # (T, 3, 2)
    side = np.stack([np.hypot(*(p[:, 1] - p[:, 2]).T),      # opposite vertex 0
                     np.hypot(*(p[:, 0] - p[:, 2]).T),      # opposite vertex 1
                     np.hypot(*(p[:, 0] - p[:, 1]).T)], 1)  # opposite vertex 2
    order = np.argsort(side, axis=1)
    s = np.take_along_axis(side, order, 1)
    ok = s[:, 0] > 0
    inv = np.column_stack([s[:, 2] / np.where(ok, s[:, 1], 1), s[:, 1] / np.where(ok, s[:, 0], 1)])
    return np.take_along_axis(tris, order, 1)[ok], inv[ok]


def match_triangles(a: np.ndarray, b: np.ndarray, tol: float, k: int = 5, inv_tol: float = 0.02,
                    scale_range: tuple[float, float] = (0.9, 1.1), max_rotation: float = np.pi,
                    max_shift: float = np.inf, min_matches: int = 4):
    """Best similarity taking star list ``a`` onto ``b`` and the index pairs it matches.

    Returns ``(transform, ia, ib)`` or ``None`` when fewer than ``min_matches`` stars agree.
    """
    if len(a) < 3 or len(b) < 3:
        return None
    ta, ia_inv = _triangles(a, k)
    tb, ib_inv = _triangles(b, k)
    # invariant L1/L0 is unbounded for thin triangles; compare logarithms
    pairs = cKDTree(np.log(ib_inv)).query_ball_point(np.log(ia_inv), inv_tol)
    tree_b = cKDTree(b)
    best, best_n = None, min_matches - 1
    seen = set()
    for i, js in enumerate(pairs):
        for j in js:
            t = fit_similarity(a[ta[i]], b[tb[j]])
            if not (scale_range[0] <= t.scale <= scale_range[1]) or abs(t.rotation) > max_rotation:
                continue
            centre_shift = t(np.array([a.mean(0)]))[0] - a.mean(0)
            if np.hypot(*centre_shift) > max_shift:
                continue
            key = (round(t.shift[0] / tol), round(t.shift[1] / tol), round(t.rotation * 1e3))
            if key in seen:
                continue
            seen.add(key)
            d, _ = tree_b.query(t(a), distance_upper_bound=tol)
            n = int(np.isfinite(d).sum())
            if n > best_n:
                best, best_n = t, n
    if best is None:
        return None
    # refine on all agreeing stars (twice: the refined transform may gain stars)
    for _ in range(2):
        d, j = tree_b.query(best(a), distance_upper_bound=tol)
        ok = np.isfinite(d)
        if ok.sum() < 3:
            return None
        best = fit_similarity(a[ok], b[j[ok]])
    d, j = tree_b.query(best(a), distance_upper_bound=tol)
    ok = np.isfinite(d)
    return best, np.flatnonzero(ok), j[ok]

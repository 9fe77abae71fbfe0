"""Overlapping tiles of one shape and the weights that blend them without seams.

Tiles along an axis of length ``n`` start at ``round(linspace(0, n - t, k))`` with the
fewest ``k`` giving at least ``overlap`` pixels of overlap, so every tile has the same
shape (SFFT compiles once per shape) and edge tiles are shifted inward instead of padded.
In an overlap of width ``o`` the left tile's weight falls linearly from 1 to 0 and the
right tile's rises, both over the inner ``o - 2 m`` pixels, where ``m`` (the kernel
half-width) is the band spoilt by SFFT's circular convolution at a tile's edge; the two
weights sum to 1 everywhere. SFFT runs on each tile zero-padded to :func:`fft_shape` (sides with
no prime factor above 7), where FFTs are fastest (a QIP frame's 3552 = 2^5 3 37 px is not).
"""
from __future__ import annotations

import math

import numpy as np


def tile_starts(n: int, t: int, overlap: int) -> np.ndarray:
    """Start indices of tiles of length ``t`` covering ``n`` with >= ``overlap`` overlap."""
    if n <= t:
        return np.array([0])
    k = math.ceil((n - overlap) / (t - overlap))
    return np.rint(np.linspace(0, n - t, k)).astype(int)


def axis_weights(starts: np.ndarray, t: int, margin: int) -> list[np.ndarray]:
    """1-D blending weight of each tile (length ``t``) along one axis."""
    u = np.arange(t) + 0.5
    out = []
    for k, s in enumerate(starts):
        w = np.ones(t)
        if k > 0:
            o = starts[k - 1] + t - s
            w = np.minimum(w, np.clip((u - margin) / (o - 2 * margin), 0, 1))
        if k < len(starts) - 1:
            o = s + t - starts[k + 1]
            w = np.minimum(w, np.clip((t - u - margin) / (o - 2 * margin), 0, 1))
        out.append(w)
    return out


def fft_length(n: int) -> int:
    """Smallest length >= ``n`` with no prime factor above 7."""
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def fft_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """The padded shape SFFT works on for a tile of ``shape``."""
    return tuple(fft_length(n) for n in shape)


def tile_shape(shape: tuple[int, int], cfg) -> tuple[int, int]:
    """One tile for images up to ``single_tile_max_pixels``, else ``(tile_ny, tile_nx)`` clipped."""
    sc = cfg.subtraction
    ny, nx = shape
    if ny * nx <= sc.single_tile_max_pixels:
        return ny, nx
    return min(sc.tile_ny, ny), min(sc.tile_nx, nx)


def tiles(shape: tuple[int, int], tshape: tuple[int, int], overlap: int, margin: int):
    """``[(slice_y, slice_x, weight_2d)]`` for all tiles; weights sum to 1 over the image."""
    (ny, nx), (ty, tx) = shape, tshape
    if min(ty, tx) < ny and 2 * margin >= overlap or min(ty, tx) < nx and 2 * margin >= overlap:
        raise ValueError(f"tile_overlap {overlap} must exceed twice the kernel half-width {margin}")
    ys, xs = tile_starts(ny, ty, overlap), tile_starts(nx, tx, overlap)
    wy, wx = axis_weights(ys, ty, margin), axis_weights(xs, tx, margin)
    return [(slice(y0, y0 + ty), slice(x0, x0 + tx), np.outer(wy[i], wx[j]))
            for i, y0 in enumerate(ys) for j, x0 in enumerate(xs)]

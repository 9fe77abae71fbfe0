"""Square cutouts of several images at candidate positions (zero outside the image)."""
from __future__ import annotations

import numpy as np


def cutouts(images: list[np.ndarray], x, y, size: int) -> np.ndarray:
    """``float32 (N, len(images), size, size)`` stamps centred on the rounded 0-based positions."""
    h = size // 2
    out = np.zeros((len(x), len(images), size, size), np.float32)
    ny, nx = images[0].shape
    for n, (xi, yi) in enumerate(zip(np.rint(x).astype(int), np.rint(y).astype(int))):
        y0, x0 = yi - h, xi - h
        sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y0 + size, ny), min(x0 + size, nx)
        if sy1 <= sy0 or sx1 <= sx0:
            continue
        for c, img in enumerate(images):
            out[n, c, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out

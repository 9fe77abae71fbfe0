"""Square cutouts of images at given positions: stamps for candidates (zero outside the image),
and boxes gathered in one vectorised step (NumPy or CuPy) for photometry at many positions."""
from __future__ import annotations

import numpy as np


def cutouts(images: list, x, y, size: int) -> np.ndarray:
    """``float32 (N, len(images), size, size)`` stamps centred on the rounded 0-based positions
    (zero off the image), gathered on the images' device (NumPy or CuPy) in one step per image."""
    h = size // 2
    n = len(np.atleast_1d(x))
    out = np.zeros((n, len(images), size, size), np.float32)
    if n == 0:
        return out
    ny, nx = images[0].shape
    o = np.arange(-h, size - h)
    iy = np.rint(np.asarray(y, float)).astype(int)[:, None] + o
    ix = np.rint(np.asarray(x, float)).astype(int)[:, None] + o
    inside = ((iy >= 0) & (iy < ny))[:, :, None] & ((ix >= 0) & (ix < nx))[:, None, :]
    gy, gx = np.clip(iy, 0, ny - 1)[:, :, None], np.clip(ix, 0, nx - 1)[:, None, :]
    for c, img in enumerate(images):
        xp = array_module(img)
        out[:, c] = np.where(inside, to_host(img[xp.asarray(gy), xp.asarray(gx)]), 0)
    return out


def boxes(image, cx, cy, r: int):
    """``(N, 2r+1, 2r+1)`` pixels of ``image`` around integer centres ``(cx, cy)`` in one gather, on the
    image's device (NumPy or CuPy); the boxes must lie inside the image."""
    xp = array_module(image)
    o = xp.arange(-r, r + 1)
    cx, cy = xp.asarray(cx), xp.asarray(cy)
    return image[cy[:, None, None] + o[None, :, None], cx[:, None, None] + o[None, None, :]]


def mosaic(images, x, y, r: int):
    """Host copies of the ``(2r+1)^2`` boxes of each image around the rounded positions, stacked
    into one ``(N (2r+1), 2r+1)`` column per image, so that image-wide tools (sep) measure many
    positions of a large (GPU) image after a small transfer.

    Returns ``(columns, outside, xl, yl)``: the stacked images, True where a box left the image
    (those pixels repeat the edge), and the positions in the column.
    """
    xp = array_module(images[0])
    x, y = np.asarray(x, float), np.asarray(y, float)
    cx, cy = np.rint(x).astype(int), np.rint(y).astype(int)
    ny, nx = images[0].shape
    o = np.arange(-r, r + 1)
    yy, xx = cy[:, None] + o, cx[:, None] + o
    yc, xc = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
    outside = ((yy != yc)[:, :, None] | (xx != xc)[:, None, :]).reshape(-1, 2 * r + 1)
    iy, ix = xp.asarray(yc)[:, :, None], xp.asarray(xc)[:, None, :]
    cols = [to_host(img[iy, ix]).reshape(-1, 2 * r + 1) for img in images]
    return cols, outside, x - cx + r, y - cy + r + (2 * r + 1) * np.arange(len(x))


def inside(shape, cx, cy, r: int) -> np.ndarray:
    """True where the box of half-size ``r`` around integer ``(cx, cy)`` lies inside ``shape``."""
    ny, nx = shape
    return (cx >= r) & (cx < nx - r) & (cy >= r) & (cy < ny - r)


def array_module(a):
    """``numpy`` or ``cupy``, whichever the array ``a`` belongs to."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def ndimage_module(xp):
    """``scipy.ndimage`` for NumPy, ``cupyx.scipy.ndimage`` for CuPy."""
    if xp is np:
        import scipy.ndimage

        return scipy.ndimage
    import cupyx.scipy.ndimage

    return cupyx.scipy.ndimage


def to_host(a) -> np.ndarray:
    """NumPy copy of a CuPy array; NumPy arrays pass through."""
    return a.get() if array_module(a) is not np else np.asarray(a)

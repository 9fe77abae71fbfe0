"""Flux-conserving Lanczos resampling of one image onto another's pixel grid.

For each output pixel the input position ``(x_in, y_in)`` comes from the two WCSs
(SIP included), computed exactly on a coarse grid of nodes and bilinearly between them.
The output is the Lanczos-``a`` interpolated surface brightness times the local
Jacobian ``|det d(x_in, y_in)/d(x_out, y_out)|``, so that total flux is conserved
(as SWarp's ``RESAMPLING_TYPE = LANCZOS3`` with flux scaling). The kernel is

    L(t) = sinc(t) sinc(t / a)  for |t| < a,  0 otherwise,

with the weights of the ``2a x 2a`` footprint normalised to unit sum. Mask bits of every
input pixel whose weight satisfies ``|w| >= mask_weight`` are OR-ed into the output
mask; output pixels whose footprint leaves the input image get ``MaskBits.EDGE``.
``resample_numba`` (CPU) and ``resample_cupy`` (GPU) compute the same thing.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np
from astropy.wcs import WCS

from ..image import MaskBits

EDGE = int(MaskBits.EDGE)


def pixel_map(wcs_out: WCS, wcs_in: WCS, shape_out: tuple[int, int], step: int, binning: int = 1):
    """Input-image pixel coordinates of output-grid nodes ``0, step, 2 step ...`` (0-based).

    Returns ``(xmap, ymap)`` of shape ``(ny_nodes, nx_nodes)``; the nodes cover the whole
    output image (the last node is at or beyond the last pixel). With ``binning`` n the output
    grid is n times finer than ``wcs_out``'s pixels: its pixel ``x`` is ``wcs_out``'s
    ``(x + 0.5) / n - 0.5``, so that n x n binning it gives ``wcs_out``'s grid.
    """
    ny, nx = shape_out
    gx = np.arange(0, nx - 1 + step, step, dtype=np.float64)
    gy = np.arange(0, ny - 1 + step, step, dtype=np.float64)
    xx, yy = np.meshgrid(gx, gy)
    ra, dec = wcs_out.all_pix2world((xx.ravel() + 0.5) / binning - 0.5, (yy.ravel() + 0.5) / binning - 0.5, 0)
    xi, yi = wcs_in.all_world2pix(ra, dec, 0, tolerance=1e-6, maxiter=50, quiet=True)
    return xi.reshape(xx.shape), yi.reshape(xx.shape)


@nb.njit(cache=True, inline="always")
def _lanczos(t, a):
    if t == 0.0:
        return 1.0
    if abs(t) >= a:
        return 0.0
    pt = math.pi * t
    return a * math.sin(pt) * math.sin(pt / a) / (pt * pt)


@nb.njit(cache=True, inline="always")
def _map(xmap, ymap, step, i, j):
    """Bilinear input position and Jacobian determinant at output pixel (row i, col j)."""
    gy = i / step
    gx = j / step
    iy = min(int(gy), xmap.shape[0] - 2)
    ix = min(int(gx), xmap.shape[1] - 2)
    fy = gy - iy
    fx = gx - ix
    x00, x01, x10, x11 = xmap[iy, ix], xmap[iy, ix + 1], xmap[iy + 1, ix], xmap[iy + 1, ix + 1]
    y00, y01, y10, y11 = ymap[iy, ix], ymap[iy, ix + 1], ymap[iy + 1, ix], ymap[iy + 1, ix + 1]
    xs = (1 - fy) * ((1 - fx) * x00 + fx * x01) + fy * ((1 - fx) * x10 + fx * x11)
    ys = (1 - fy) * ((1 - fx) * y00 + fx * y01) + fy * ((1 - fx) * y10 + fx * y11)
    dxdx = ((1 - fy) * (x01 - x00) + fy * (x11 - x10)) / step
    dydx = ((1 - fy) * (y01 - y00) + fy * (y11 - y10)) / step
    dxdy = ((1 - fx) * (x10 - x00) + fx * (x11 - x01)) / step
    dydy = ((1 - fx) * (y10 - y00) + fx * (y11 - y01)) / step
    return xs, ys, abs(dxdx * dydy - dxdy * dydx)


@nb.njit(parallel=True, cache=True)
def _resample(data, mask, xmap, ymap, step, a, mask_weight, out, out_mask):
    ny_in, nx_in = data.shape
    ny, nx = out.shape
    for i in nb.prange(ny):
        wx = np.empty(2 * a)
        wy = np.empty(2 * a)
        for j in range(nx):
            xs, ys, jac = _map(xmap, ymap, step, i, j)
            x0 = int(math.floor(xs)) - a + 1
            y0 = int(math.floor(ys)) - a + 1
            if x0 < 0 or y0 < 0 or x0 + 2 * a > nx_in or y0 + 2 * a > ny_in or not (jac > 0):
                out[i, j] = 0.0
                out_mask[i, j] = EDGE
                continue
            sx = 0.0
            sy = 0.0
            for k in range(2 * a):
                wx[k] = _lanczos(xs - (x0 + k), a)
                wy[k] = _lanczos(ys - (y0 + k), a)
                sx += wx[k]
                sy += wy[k]
            acc = 0.0
            m = 0
            for ky in range(2 * a):
                for kx in range(2 * a):
                    w = wy[ky] * wx[kx] / (sx * sy)
                    acc += w * data[y0 + ky, x0 + kx]
                    if abs(w) >= mask_weight:
                        m |= mask[y0 + ky, x0 + kx]
            out[i, j] = acc * jac
            out_mask[i, j] = m


def resample_numba(data, mask, xmap, ymap, step: int, shape: tuple[int, int], a: int = 3,
                   mask_weight: float = 0.05):
    """CPU resampling: returns ``(float32 image, uint16 mask)`` of ``shape`` on the output grid."""
    out = np.empty(shape, np.float32)
    out_mask = np.empty(shape, np.uint16)
    _resample(np.ascontiguousarray(data, np.float32), np.ascontiguousarray(mask, np.uint16),
              np.ascontiguousarray(xmap, np.float64), np.ascontiguousarray(ymap, np.float64),
              int(step), int(a), float(mask_weight), out, out_mask)
    return out, out_mask


_CUDA_SOURCE = r"""
extern "C" __global__ void lanczos_resample(
    const float* data, const unsigned short* mask, int ny_in, int nx_in,
    const double* xmap, const double* ymap, int gny, int gnx, int step, int a, double mask_weight,
    float* out, unsigned short* out_mask, int ny, int nx)
{
    int j = blockDim.x * blockIdx.x + threadIdx.x;
    int i = blockDim.y * blockIdx.y + threadIdx.y;
    if (i >= ny || j >= nx) return;
    double gy = (double)i / step, gx = (double)j / step;
    int iy = min((int)gy, gny - 2), ix = min((int)gx, gnx - 2);
    double fy = gy - iy, fx = gx - ix;
    double x00 = xmap[iy * gnx + ix], x01 = xmap[iy * gnx + ix + 1];
    double x10 = xmap[(iy + 1) * gnx + ix], x11 = xmap[(iy + 1) * gnx + ix + 1];
    double y00 = ymap[iy * gnx + ix], y01 = ymap[iy * gnx + ix + 1];
    double y10 = ymap[(iy + 1) * gnx + ix], y11 = ymap[(iy + 1) * gnx + ix + 1];
    double xs = (1 - fy) * ((1 - fx) * x00 + fx * x01) + fy * ((1 - fx) * x10 + fx * x11);
    double ys = (1 - fy) * ((1 - fx) * y00 + fx * y01) + fy * ((1 - fx) * y10 + fx * y11);
    double dxdx = ((1 - fy) * (x01 - x00) + fy * (x11 - x10)) / step;
    double dydx = ((1 - fy) * (y01 - y00) + fy * (y11 - y10)) / step;
    double dxdy = ((1 - fx) * (x10 - x00) + fx * (x11 - x01)) / step;
    double dydy = ((1 - fx) * (y10 - y00) + fx * (y11 - y01)) / step;
    double jac = fabs(dxdx * dydy - dxdy * dydx);
    long o = (long)i * nx + j;
    int x0 = (int)floor(xs) - a + 1, y0 = (int)floor(ys) - a + 1;
    if (x0 < 0 || y0 < 0 || x0 + 2 * a > nx_in || y0 + 2 * a > ny_in || !(jac > 0)) {
        out[o] = 0.0f; out_mask[o] = EDGE_BIT; return;
    }
    double wx[8], wy[8], sx = 0, sy = 0;
    for (int k = 0; k < 2 * a; k++) {
        double tx = xs - (x0 + k), ty = ys - (y0 + k);
        double px = 3.14159265358979323846 * tx, py = 3.14159265358979323846 * ty;
        wx[k] = (tx == 0) ? 1.0 : (fabs(tx) >= a ? 0.0 : a * sin(px) * sin(px / a) / (px * px));
        wy[k] = (ty == 0) ? 1.0 : (fabs(ty) >= a ? 0.0 : a * sin(py) * sin(py / a) / (py * py));
        sx += wx[k]; sy += wy[k];
    }
    double acc = 0;
    unsigned short m = 0;
    for (int ky = 0; ky < 2 * a; ky++) {
        for (int kx = 0; kx < 2 * a; kx++) {
            double w = wy[ky] * wx[kx] / (sx * sy);
            long p = (long)(y0 + ky) * nx_in + (x0 + kx);
            acc += w * data[p];
            if (fabs(w) >= mask_weight) m |= mask[p];
        }
    }
    out[o] = (float)(acc * jac);
    out_mask[o] = m;
}
"""


def resample_cupy(data, mask, xmap, ymap, step: int, shape: tuple[int, int], a: int = 3,
                  mask_weight: float = 0.05):
    """GPU resampling (same arithmetic as :func:`resample_numba`); returns CuPy arrays."""
    import cupy as cp

    if a > 4:
        raise ValueError("the CUDA kernel supports Lanczos orders up to 4")
    kernel = _cupy_kernel()
    data = cp.ascontiguousarray(cp.asarray(data, dtype=cp.float32))
    mask = cp.ascontiguousarray(cp.asarray(mask, dtype=cp.uint16))
    xmap = cp.ascontiguousarray(cp.asarray(xmap, dtype=cp.float64))
    ymap = cp.ascontiguousarray(cp.asarray(ymap, dtype=cp.float64))
    gny, gnx = xmap.shape
    ny, nx = shape
    out = cp.empty((ny, nx), cp.float32)
    out_mask = cp.empty((ny, nx), cp.uint16)
    block = (32, 8)
    grid = ((nx + block[0] - 1) // block[0], (ny + block[1] - 1) // block[1])
    kernel(grid, block, (data, mask, np.int32(data.shape[0]), np.int32(data.shape[1]), xmap, ymap,
                         np.int32(gny), np.int32(gnx), np.int32(step), np.int32(a), np.float64(mask_weight),
                         out, out_mask, np.int32(ny), np.int32(nx)))
    return out, out_mask


_KERNEL = None


def _cupy_kernel():
    global _KERNEL
    if _KERNEL is None:
        import cupy as cp

        _KERNEL = cp.RawKernel(_CUDA_SOURCE.replace("EDGE_BIT", str(EDGE)), "lanczos_resample")
    return _KERNEL

"""Thin layer over the ``sfft`` package (v1.7.3): compiled configurations cached per tile shape.

``GeneralSFFTSubtract`` (NumPy backend) and ``GeneralSFFTSubtract_PureCupy`` (CuPy backend,
arrays stay on the GPU) are called directly on arrays: the same work as
``Customized_Packet.CP`` without its FITS round trips and without recompiling for every call.
SFFT works on ``[x, y]`` (transposed) float64 arrays and returns ``D = J - K * I``.
"""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np

from .tiles import fft_shape

_CONFIGS: dict = {}

if not hasattr(np, "in1d"):  # sfft 1.7.3 calls np.in1d, which numpy 2.4 removed
    np.in1d = np.isin


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def sfft_config(shape_xy: tuple[int, int], cfg, gpu: bool):
    """Compiled SFFT configuration for an ``(NX, NY)`` tile (cached for the process).

    numba's on-disk cache stays off: sfft's NumPy kernels are closures over the tile shape, and a
    process that loads cached versions for two shapes fails (``NRT_adapt_ndarray_to_python``)."""
    from sfft.sfftcore.SFFTConfigure import SingleSFFTConfigure

    sc = cfg.subtraction
    key = (tuple(shape_xy), sc.kernel_half_width, sc.kernel_poly_order, sc.background_poly_order, gpu)
    if key not in _CONFIGS:
        with _quiet():
            _CONFIGS[key] = SingleSFFTConfigure.SSC(
                NX=shape_xy[0], NY=shape_xy[1], KerHW=sc.kernel_half_width,
                KerPolyOrder=sc.kernel_poly_order, BGPolyOrder=sc.background_poly_order,
                ConstPhotRatio=True, BACKEND_4SUBTRACT="Cupy" if gpu else "Numpy",
                NUM_CPU_THREADS_4SUBTRACT=threads(cfg), NUMBA_CACHE=False, VERBOSE_LEVEL=0)
    return _CONFIGS[key]


def threads(cfg) -> int:
    return cfg.subtraction.threads or os.cpu_count() or 1


def solve(I, J, mI, mJ, cfg, gpu: bool):
    """Fit the kernel on the masked pair ``(mI, mJ)`` and subtract: ``(solution, J - K * I)``.

    Inputs are float64 ``[x, y]`` arrays (CuPy arrays when ``gpu``); the solution is returned
    as a NumPy array, the difference on the inputs' device.
    """
    from sfft.sfftcore.SFFTSubtract import GeneralSFFTSubtract, GeneralSFFTSubtract_PureCupy

    config = sfft_config(I.shape, cfg, gpu)
    with _quiet():
        if gpu:
            sol, diff, _ = GeneralSFFTSubtract_PureCupy.GSS(I, J, mI, mJ, config, VERBOSE_LEVEL=0)
            return sol.get(), diff
        sol, diff, _ = GeneralSFFTSubtract.GSS(I, J, mI, mJ, config, BACKEND_4SUBTRACT="Numpy",
                                               NUM_CPU_THREADS_4SUBTRACT=threads(cfg), VERBOSE_LEVEL=0)
    return sol, diff


def kernel_at(solution: np.ndarray, shape_xy: tuple[int, int], cfg, x: float, y: float) -> np.ndarray:
    """Matching kernel ``K[dy, dx]`` at 0-based tile position ``(x, y)``."""
    from sfft.utils.SFFTSolutionReader import Realize_MatchingKernel

    sc = cfg.subtraction
    L = 2 * sc.kernel_half_width + 1
    fpq = (sc.background_poly_order + 1) * (sc.background_poly_order + 2) // 2
    ker = Realize_MatchingKernel(np.array([[x + 1.0, y + 1.0]])).FromArray(
        solution, shape_xy[0], shape_xy[1], L, L, sc.kernel_poly_order, fpq)[0]
    return ker.T


def warm_up(cfg, shapes=None, gpu: bool = True) -> None:
    """Compile SFFT for each ``(ny, nx)`` tile shape (padded to :func:`~.tiles.fft_shape`) (``cfg.subtraction.warm_shapes`` by default)
    and run one subtraction on noise, so a worker's first real image pays no compilation."""
    xp = np
    if gpu:
        import cupy as xp
    rng = np.random.default_rng(0)
    for shape in shapes or cfg.subtraction.warm_shapes:
        ny, nx = fft_shape(shape)
        a = xp.asarray(rng.normal(size=(nx, ny)))
        solve(a, a, a, a, cfg, gpu)

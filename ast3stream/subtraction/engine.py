"""Thin layer over the ``sfft`` package (v1.7.3): compiled configurations cached per tile shape.

``GeneralSFFTSubtract`` (NumPy backend) and ``GeneralSFFTSubtract_PureCupy`` (CuPy backend,
arrays stay on the GPU) are called directly on arrays: the same work as
``Customized_Packet.CP`` without its FITS round trips and without recompiling for every call.
SFFT works on ``[x, y]`` (transposed) float64 arrays and returns ``D = J - K * I``.

Compilation is paid once per machine, not per process: the NumPy backend's numba kernels are
cached on disk, each configuration (tile shape, kernel and background orders) in a folder of
its own under ``NUMBA_CACHE_DIR`` (numba's user cache folder when unset). sfft's kernels are
closures over the tile shape defined at the same source lines, so configurations sharing one
cache index load each other's object code and fail (``NRT_adapt_ndarray_to_python``); one
folder per configuration never mixes them. numba names a compiled function's environment by
its qualified name and a per-process counter (``FunctionIdentity.unique_id``), which is the same
for the same kernel of every configuration compiled in a fresh process: two such
configurations loaded from the cache into one process resolve one name to two environments, and
the second fails at its first call (``NRT_adapt_ndarray_to_python``). Each configuration is
therefore compiled with the counter started at an offset of its own (:func:`_unique_ids`). The
CuPy backend's kernels (``nvcc``) go to CuPy's own disk cache, ``CUPY_CACHE_DIR``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import math
import os
import threading

import numpy as np

from .tiles import fft_shape, tile_shape

_CONFIGS: dict = {}
_COMPILE = threading.Lock()   #: one compilation at a time (it switches numba's cache folder)

if not hasattr(np, "in1d"):  # sfft 1.7.3 calls np.in1d, which numpy 2.4 removed
    np.in1d = np.isin


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def sfft_config(shape_xy: tuple[int, int], cfg, gpu: bool):
    """Compiled SFFT configuration for an ``(NX, NY)`` tile (cached for the process, and the
    NumPy backend's numba kernels on disk in :func:`numba_cache_dir`)."""
    from sfft.sfftcore.SFFTConfigure import SingleSFFTConfigure

    sc = cfg.subtraction
    key = (tuple(shape_xy), sc.kernel_half_width, sc.kernel_poly_order, sc.background_poly_order, gpu)
    with _COMPILE:
        if key not in _CONFIGS:
            with _quiet(), _numba_cache(None if gpu else numba_cache_dir(key[:4])), _unique_ids(key[:4]):
                _CONFIGS[key] = SingleSFFTConfigure.SSC(
                    NX=shape_xy[0], NY=shape_xy[1], KerHW=sc.kernel_half_width,
                    KerPolyOrder=sc.kernel_poly_order, BGPolyOrder=sc.background_poly_order,
                    ConstPhotRatio=True, BACKEND_4SUBTRACT="Cupy" if gpu else "Numpy",
                    NUM_CPU_THREADS_4SUBTRACT=threads(cfg), NUMBA_CACHE=not gpu, VERBOSE_LEVEL=0)
    return _CONFIGS[key]


def numba_cache_dir(key: tuple) -> str:
    """The numba cache folder of one SFFT configuration ``((NX, NY), half-width, kernel order,
    background order)``: under ``NUMBA_CACHE_DIR``, else numba's user cache folder."""
    import numba
    from numba.misc.appdirs import AppDirs

    (nx, ny), hw, dk, db = key
    base = numba.config.CACHE_DIR or AppDirs(appname="numba", appauthor=False).user_cache_dir
    return os.path.join(base, "sfft-uid", f"{nx}x{ny}-w{hw}-k{dk}-b{db}")   # "-uid": compiled under _unique_ids


@contextlib.contextmanager
def _unique_ids(key: tuple):
    """numba's function counter started at an offset of the configuration's own (from a hash of
    ``key``, 10^4 ids apart in 2^40 slots) while it compiles, so the mangled names of its kernels
    differ from every other configuration's, wherever each was compiled; then the process's own
    counter again."""
    from numba.core.bytecode import FunctionIdentity

    start = 10_000 * (1 + int(hashlib.sha1(repr(key).encode()).hexdigest()[:10], 16))
    before = FunctionIdentity._unique_ids
    FunctionIdentity._unique_ids = itertools.count(start)
    try:
        yield
    finally:
        FunctionIdentity._unique_ids = before


@contextlib.contextmanager
def _numba_cache(path: str | None):
    """numba caches the functions decorated inside the block in ``path`` (nothing when None)."""
    import numba

    before = numba.config.CACHE_DIR
    if path is not None:
        numba.config.CACHE_DIR = path
    try:
        yield
    finally:
        numba.config.CACHE_DIR = before


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


def lane_config(cfg, binning: int):
    """``cfg`` for a lane whose frames are binned ``binning`` x ``binning``: the configured
    ``subtraction.kernel_half_width`` is in full-resolution pixels, the lane's is
    ``ceil(hw / binning)`` (the same kernel on the sky; a QIP frame binned 3 x 3 needs a third of
    it, and SFFT's cost grows with the kernel's pixels)."""
    if binning <= 1:
        return cfg
    sc = cfg.subtraction
    hw = max(2, math.ceil(sc.kernel_half_width / binning))
    return cfg.model_copy(update={"subtraction": sc.model_copy(update={"kernel_half_width": hw})})


def lane_tile_shapes(cfg) -> list[tuple[tuple[int, int], int]]:
    """The ``((ny, nx), binning)`` SFFT tile shapes of the detector's frames and their binning: a
    DIP frame (the trimmed section) and a QIP frame (binned ``qip_binning`` x ``qip_binning``),
    see :func:`~.tiles.tile_shape`."""
    from ..reduction.sections import section_slices

    det = cfg.detector
    sy, sx = section_slices(det.trimsec)
    ny, nx = sy.stop - sy.start, sx.stop - sx.start
    b = det.qip_binning
    return [(tile_shape((ny, nx), cfg), 1), (tile_shape((ny // b, nx // b), cfg), b)]


def warm_up(cfg, gpu: bool = True) -> list[tuple[int, int]]:
    """Compile (or load from the disk caches) SFFT's configured and constant-kernel (tiles with
    few stars) configurations for each lane's tile shape and kernel half-width
    (:func:`lane_tile_shapes`, :func:`lane_config`), so a worker's first real image pays no
    compilation. On the GPU it also runs one whole subtraction of a synthetic pair of each shape
    and SFFT on noise, which compiles the CuPy kernels of every step, and the output mask's
    dilation for every PSF FWHM up to half the kernel half-width. Returns the shapes."""
    shapes = []
    for shape, binning in lane_tile_shapes(cfg):
        conf = lane_config(cfg, binning)
        sc = conf.subtraction
        constant = conf.model_copy(update={"subtraction": sc.model_copy(
            update={"kernel_poly_order": 0, "background_poly_order": 0})})
        fy, fx = fft_shape(shape)
        for c in (conf, constant):
            sfft_config((fx, fy), c, gpu)
        if gpu:
            _run_once(shape, conf, constant)
        shapes.append(shape)
    if gpu:   # the output mask's dilation compiles per width, i.e. per PSF FWHM: up to half the kernel's
        import cupy as cp
        from cupyx.scipy.ndimage import maximum_filter

        from .subtract import _output_mask, largest_psf_fwhm, mask_grow

        for grow in range(1, mask_grow(largest_psf_fwhm(cfg.subtraction)) + 1):
            _output_mask(cp.full((32, 32), 0xFFFF, np.uint16), grow, 2, cp, maximum_filter)
    return shapes


def _run_once(shape: tuple[int, int], cfg, constant) -> None:
    import cupy as cp

    from .subtract import subtract
    from .synthetic import synthetic_pair

    ny, nx = shape
    science, template, _ = synthetic_pair(shape=shape, n_stars=max(50, min(3000, ny * nx // 1000)),
                                          shift=(0.0, 0.0), rotation_deg=0.0, seed=0)
    subtract(science, template, cfg, gpu=True)
    fy, fx = fft_shape(shape)
    a = cp.asarray(np.random.default_rng(0).normal(size=(fx, fy)))
    for c in (cfg, constant):
        solve(a, a, a, a, c, True)



def warm_kernels(shape: tuple[int, int], fwhm: float, cfg, gpu: bool) -> int:
    """Compile (or load) SFFT for the kernel half-width that subtractions on a template of
    ``shape`` (``(ny, nx)``) and PSF FWHM ``fwhm`` [its px] will use
    (:func:`.subtract.kernel_half_width`), with the configured and the constant kernel, and on
    the GPU run SFFT on noise once for each; called when a template is prepared, so that no
    alert waits for the compiler (a science PSF broad enough to round to a larger half-width
    compiles on its first use, once per machine with the disk caches). Returns the half-width."""
    from .subtract import kernel_half_width

    sc = cfg.subtraction
    tshape = tile_shape(tuple(shape), cfg)
    fy, fx = fft_shape(tshape)
    hw = kernel_half_width(fwhm, tshape, sc.kernel_half_width, sc.kernel_half_width_ratio or 2.0)
    conf = cfg.model_copy(update={"subtraction": sc.model_copy(update={"kernel_half_width": hw})})
    constant = cfg.model_copy(update={"subtraction": sc.model_copy(update={
        "kernel_half_width": hw, "kernel_poly_order": 0, "background_poly_order": 0})})
    for c in (conf, constant):
        sfft_config((fx, fy), c, gpu)
        if gpu:
            import cupy as cp

            a = cp.asarray(np.random.default_rng(0).normal(size=(fx, fy)))
            solve(a, a, a, a, c, True)
    return hw

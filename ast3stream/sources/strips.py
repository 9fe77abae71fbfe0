"""Work on a full frame split into strips of rows, in a pool of worker processes.

sep and astroscrappy run on one core per call; a full AST3-3 frame (150 Mpixel) keeps one core
busy for seconds while the others wait. A pipeline worker creates the pool once when it starts
(``pool(n_workers(cfg.sources.workers))``: forkserver processes with sep, numba and astroscrappy
imported and their kernels loaded, so that no exposure pays for a start-up) and the stages hand it
strips (a script that starts the pool needs the usual ``if __name__ == "__main__":`` guard, as
for any forkserver or spawn pool): the images go through shared memory (one copy in, no pickling
of pixels), each task gets the rows it owns (its *core*) plus an overlap on either side, and
returns only what lies in its core.

:func:`offload` runs one whole call in the pool: sep does not release the GIL (sep issue 172), so
a full-frame ``sep.extract`` (5-8 s) or ``sep.Background`` (1-2 s) in a worker thread stops every
other thread of the worker (other exposures' stages, the Kafka client's heartbeats) for that long
(the sources stage's own background is :mod:`.background`'s numba port, run here without the GIL).

:func:`extract_strips` is :func:`ast3stream.sources.extract.measure` on strips of
:data:`STRIP_ROWS` rows: an object belongs to the strip holding its isophotal barycentre, and a
strip whose core holds an object whose footprint reaches the end of the overlap is redone with a
larger overlap. The strips depend on the frame's size only and run in the pool or, without one,
in turn in this process: the catalogue is the same for any number of workers. It is not bit
for bit the one of a single sep call on the whole frame: a few blended objects (about 1 %) are
split slightly differently, sep's deblending depending on the image it is given.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from multiprocessing import shared_memory

import numpy as np

#: rows of a strip's core: a frame's strips, and so its catalogue, do not depend on the worker count
STRIP_ROWS = 700
#: rows a strip reads beyond its core on either side (grown for huge objects, see module docstring)
OVERLAP = 128

_POOL: ProcessPoolExecutor | None = None
_POOL_SIZE = 0


def n_workers(setting: int) -> int:
    """Worker processes for a setting: ``0`` = one per CPU core available to this process."""
    if setting > 0:
        return setting
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _warm(_=None) -> int:
    """Load sep, astroscrappy, scipy's least squares (the PSF fits) and the numba kernels (from
    the disk cache) on a small image."""
    from ..config import SourcesConfig
    from ..reduction.cosmics import _clean_group
    from ..subtraction.psf import fit_fwhm
    from .extract import measure

    yy, xx = np.mgrid[:64, :64]
    img = (1000 * np.exp(-((xx - 31.3) ** 2 + (yy - 30.8) ** 2) / 4.5)).astype(np.float32)
    img += np.random.default_rng(0).normal(0, 1, img.shape).astype(np.float32)
    measure(img, np.zeros(img.shape, bool), 1.0, SourcesConfig())
    _clean_group(img, np.zeros(img.shape, bool), 2.5, 1e30, 4.5, 5.0, 2)
    fit_fwhm(img, 1.0, [31.3], [30.8], 3.0)
    return os.getpid()


def pool(n: int) -> ProcessPoolExecutor | None:
    """The process pool of at least ``n`` workers (created and warmed on the first call, grown when
    a caller asks for more; ``None`` for ``n <= 1``)."""
    global _POOL, _POOL_SIZE
    if n <= 1:
        return None
    if _POOL is None or _POOL_SIZE < n:
        if _POOL is not None:
            _POOL.shutdown(wait=False, cancel_futures=True)
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["numpy", "sep", "astroscrappy", "ast3stream.sources.extract"])
        _POOL, _POOL_SIZE = ProcessPoolExecutor(n, mp_context=ctx), n
        list(_POOL.map(_warm, range(n)))
    return _POOL


def current() -> ProcessPoolExecutor | None:
    """The pool if this process has started one (:func:`pool`), else None."""
    return _POOL


def offload(fn, *arrays: np.ndarray, min_pixels: int = 16_000_000, **kwargs):
    """``fn(*arrays, **kwargs)`` in the pool (:func:`current`) when there is one and the first array
    has at least ``min_pixels``, else here. The arrays travel through shared memory; ``fn`` (a
    module-level function) and its result are pickled, so it should return small things
    (tables, scalars). Same result either way."""
    workers = current()
    if workers is None or arrays[0].size < min_pixels:
        return fn(*arrays, **kwargs)
    with shared(*arrays) as handles:
        return workers.submit(_offloaded, fn, handles, kwargs).result()


def _offloaded(fn, handles, kwargs):
    with attached(*handles) as arrays:
        return fn(*arrays, **kwargs)


@contextmanager
def allocated(*specs: tuple[tuple[int, ...], np.dtype]):
    """Arrays of ``(shape, dtype)`` in shared memory, uninitialised; yields ``(handle, array)`` pairs,
    the handles ``(name, shape, dtype)`` for :func:`attached` in a worker."""
    blocks = []
    try:
        out = []
        for shape, dtype in specs:
            dtype = np.dtype(dtype)
            shm = shared_memory.SharedMemory(create=True, size=max(int(np.prod(shape)) * dtype.itemsize, 1))
            blocks.append(shm)
            out.append(((shm.name, tuple(shape), dtype.str), np.ndarray(shape, dtype, buffer=shm.buf)))
        yield out
    finally:
        for shm in blocks:
            shm.close()
            shm.unlink()


@contextmanager
def shared(*arrays: np.ndarray):
    """Copies of ``arrays`` in shared memory; yields their ``(name, shape, dtype)`` handles."""
    with allocated(*[(a.shape, a.dtype) for a in arrays]) as pairs:
        for (_, view), a in zip(pairs, arrays):
            view[...] = a
        yield [handle for handle, _ in pairs]


@contextmanager
def attached(*handles):
    """Views of arrays in shared memory (inside a worker)."""
    blocks = [shared_memory.SharedMemory(name=name) for name, _, _ in handles]
    try:
        yield [np.ndarray(shape, np.dtype(dtype), buffer=shm.buf) for shm, (_, shape, dtype) in zip(blocks, handles)]
    finally:
        for shm in blocks:
            shm.close()


def bounds(ny: int, n: int) -> list[tuple[int, int]]:
    """``n`` contiguous cores of rows covering ``0 .. ny``."""
    edges = np.linspace(0, ny, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _strip(sub, mask, rms: float, params, core: tuple[int, int], overlap: int):
    """:func:`~ast3stream.sources.extract.measure` of the objects whose barycentre lies in the
    ``core`` rows, or None when one of them reaches the end of the ``overlap``."""
    from .extract import measure

    ny = sub.shape[0]
    y0, y1 = max(core[0] - overlap, 0), min(core[1] + overlap, ny)
    cols = measure(sub[y0:y1], mask[y0:y1], rms, params)
    for k in ("y", "ybary", "ymin", "ymax"):
        cols[k] = cols[k] + y0
    mine = (cols["ybary"] >= core[0]) & (cols["ybary"] < core[1])
    touching = mine & (((cols["ymin"] <= y0) & (y0 > 0)) | ((cols["ymax"] >= y1 - 1) & (y1 < ny)))
    if touching.any():
        return None
    return {k: v[mine] for k, v in cols.items()}


def _strip_task(sub_h, mask_h, rms: float, params, core: tuple[int, int], overlap: int):
    with attached(sub_h, mask_h) as (sub, mask):
        return _strip(sub, mask, rms, params, core, overlap)


def extract_strips(sub: np.ndarray, mask: np.ndarray, rms: float, params,
                   workers: ProcessPoolExecutor | None = None, handles=None) -> dict[str, np.ndarray]:
    """:func:`~ast3stream.sources.extract.measure` of ``sub`` on strips of about :data:`STRIP_ROWS`
    rows, in ``workers`` or in this process: the same columns either way, in strip order.
    ``handles``: ``sub`` and ``mask`` already in shared memory (:func:`shared`)."""
    cores = bounds(sub.shape[0], max(1, round(sub.shape[0] / STRIP_ROWS)))
    overlap = {c: OVERLAP for c in cores}
    done: dict = {}
    if workers is None:
        context = nullcontext((None, None))
    else:
        context = nullcontext(handles) if handles is not None else shared(sub, mask)
    with context as (sub_h, mask_h):
        while len(done) < len(cores):
            todo = [c for c in cores if c not in done]
            if workers is None:
                results = [_strip(sub, mask, rms, params, c, overlap[c]) for c in todo]
            else:
                results = workers.map(_strip_task, *zip(*[(sub_h, mask_h, rms, params, c, overlap[c]) for c in todo]))
            for c, res in zip(todo, results):
                if res is None:
                    overlap[c] *= 4
                else:
                    done[c] = res
    return {k: np.concatenate([done[c][k] for c in cores]) for k in done[cores[0]]}

"""The simulated CMOS camera: raw layout, bias, dark, flat response, defects and read-out.

Raw ADU = e- / gain + bias, with e- = (light x response + dark) + Poisson noise, and bias =
level + fixed column pattern + per-frame row offsets (what the overscan reveals) + read noise.
The response (vignetting x pixel-to-pixel x dust x dead columns) is normalised to median 1 over
the light-sensitive area, so a bias/flat-corrected frame is in true electrons.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np

from ..config import DetectorConfig, SimulationConfig
from ..image import MaskBits
from ..reduction.sections import parse_section

MIN_OVERSCAN = 16


@dataclass(frozen=True)
class Layout:
    """Raw frame geometry at a given scale; ``trimsec``/``biassec`` are FITS 1-based sections."""

    nx_raw: int
    ny_raw: int
    nx: int   #: trimmed width
    ny: int   #: trimmed height
    bias_x0: int  #: first overscan column (0-based)

    @property
    def trimsec(self) -> str:
        return f"[1:{self.nx},1:{self.ny}]"

    @property
    def biassec(self) -> str:
        return f"[{self.bias_x0 + 1}:{self.nx_raw},1:{self.ny}]"


def layout(det: DetectorConfig, scale: float) -> Layout:
    """Scale the raw layout of ``det``: light area at the lower left, overscan at the right edge,
    the overscan kept at least ``MIN_OVERSCAN`` columns wide."""
    tx0, tx1, ty0, ty1 = parse_section(det.trimsec)
    bx0, bx1, by0, by1 = parse_section(det.biassec)
    nx_raw, ny_raw = round(scale * det.nx_raw), round(scale * det.ny_raw)
    width = max(MIN_OVERSCAN, round(scale * (bx1 - bx0 + 1)))
    gap = bx0 - tx1 - 1
    bias_x0 = nx_raw - width
    nx = min(round(scale * tx1), bias_x0 - gap)
    ny = min(round(scale * ty1), ny_raw)
    return Layout(nx_raw, ny_raw, nx, ny, bias_x0)


def normalised_radius(x, y, nx: int, ny: int):
    """Distance from the detector centre, 1 at the corners."""
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    return np.hypot((x - cx) / cx, (y - cy) / cy) / 2**0.5


@dataclass
class Camera:
    """Fixed properties of one (scaled) detector: response, dark, defects, bias pattern."""

    lay: Layout
    response: np.ndarray      #: float32 [ny, nx], median 1
    dark_rate: np.ndarray     #: float32 [ny, nx] e-/s (hot pixels and columns included)
    defects: np.ndarray       #: uint16 [ny, nx] MaskBits.BAD where defective
    column_bias: np.ndarray   #: float32 [nx_raw] ADU, fixed pattern
    gain: float
    read_noise: float


@lru_cache(maxsize=1)
def _camera(det_json: str, sim_json: str, scale: float) -> Camera:
    det = DetectorConfig.model_validate_json(det_json)
    sim = SimulationConfig.model_validate_json(sim_json)
    lay = layout(det, scale)
    rng = np.random.default_rng([sim.detector_seed, 7])
    ny, nx = lay.ny, lay.nx
    # vignetting, slightly off-centre, times pixel-to-pixel response (row blocks: full size is 150 Mpx)
    response = np.empty((ny, nx), np.float32)
    xx = np.arange(nx, dtype=np.float32)[None, :] - 0.03 * nx
    for y0 in range(0, ny, 1024):
        yy = np.arange(y0, min(y0 + 1024, ny), dtype=np.float32)[:, None] + 0.02 * ny
        r2 = normalised_radius(xx, yy, nx, ny) ** 2
        prnu = 1 + sim.prnu * rng.standard_normal(r2.shape, dtype=np.float32)
        response[y0:y0 + len(yy)] = (1 - sim.vignetting * r2 * (0.8 + 0.2 * r2)) * prnu
    # dust donuts: thin attenuating rings (out-of-focus shadows on the filter)
    for _ in range(3):
        cx, cy, rad = rng.uniform(0, nx), rng.uniform(0, ny), rng.uniform(25, 60)
        x0, x1 = int(max(cx - rad - 8, 0)), int(min(cx + rad + 8, nx))
        y0, y1 = int(max(cy - rad - 8, 0)), int(min(cy + rad + 8, ny))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = np.hypot(xx - cx, yy - cy)
        response[y0:y1, x0:x1] *= (1 - 0.04 * np.exp(-0.5 * ((d - rad) / 4) ** 2)
                                   - 0.02 * (d < rad)).astype(np.float32)
    defects = np.zeros((ny, nx), np.uint16)
    dark = np.full((ny, nx), sim.dark_e_s, np.float32)
    # dead columns (low response over part of the column) and one hot column
    for k in range(3):
        col = int(rng.integers(8, nx - 8))
        y0 = int(rng.integers(0, ny // 2)) if k else 0
        rows = slice(y0, ny)
        if k < 2:
            response[rows, col] *= rng.uniform(0.05, 0.3)
        else:
            dark[rows, col] += rng.uniform(3, 8)
        defects[rows, col] |= np.uint16(MaskBits.BAD)
    n_hot = max(1, rng.poisson(sim.hot_pixel_fraction * nx * ny))
    hy, hx = rng.integers(0, ny, n_hot), rng.integers(0, nx, n_hot)
    dark[hy, hx] += rng.lognormal(np.log(20), 1.0, n_hot).astype(np.float32)
    defects[hy, hx] |= np.uint16(MaskBits.BAD)
    response /= np.median(response[::7, ::7])
    column_bias = (sim.bias_level + 0.8 * rng.standard_normal(lay.nx_raw)).astype(np.float32)
    column_bias += np.linspace(-1.5, 1.5, lay.nx_raw, dtype=np.float32)
    return Camera(lay, response, dark, defects, column_bias, det.gain, det.read_noise)


def camera(det: DetectorConfig, sim: SimulationConfig, scale: float) -> Camera:
    """The camera at ``scale`` (cached: full size holds ~1.3 GB of maps)."""
    return _camera(det.model_dump_json(), sim.model_dump_json(), float(scale))


@numba.njit(cache=True, nogil=True)
def _digitise(out, e, z, rn2, gain, column_bias, row_bias):
    """ADU = (e + sqrt(max(e, 0) + RN^2) z) / gain + column + row bias, rounded, clipped to uint16."""
    for j in range(e.shape[0]):
        for i in range(e.shape[1]):
            v = e[j, i]
            adu = (v + np.sqrt(max(v, 0.0) + rn2) * z[j, i]) / gain + column_bias[i] + row_bias[j]
            out[j, i] = min(max(np.rint(adu), 0.0), 65535.0)


def read_out(cam: Camera, electrons: np.ndarray | None, rng: np.random.Generator,
             exptime: float, chunk: int = 512, threads: int | None = None) -> np.ndarray:
    """Digitise ``electrons`` (the light, already times the response; None for a bias): add dark,
    Poisson (Gaussian approximation) and read noise, convert to ADU, add the bias with its
    per-frame row offsets, and clip to uint16. Row blocks of ``chunk`` rows run in ``threads``
    threads (default: all cores), each block with its own generator seeded from ``rng``, so the
    frame does not depend on the thread count."""
    lay = cam.lay
    raw = np.empty((lay.ny_raw, lay.nx_raw), np.uint16)
    row_bias = (rng.normal(0, 3.0) + rng.normal(0, 1.2, lay.ny_raw)
                + 2.0 * np.sin(np.arange(lay.ny_raw) / lay.ny_raw * 2 * np.pi * rng.uniform(1, 4)
                               + rng.uniform(0, 6.3))).astype(np.float32)
    starts = list(range(0, lay.ny_raw, chunk))
    seeds = rng.integers(0, 2**63, len(starts))

    def block(k: int) -> None:
        y0 = starts[k]
        y1 = min(y0 + chunk, lay.ny_raw)
        e = np.zeros((y1 - y0, lay.nx_raw), np.float32)   # signal [e-]
        if y0 < lay.ny:
            ys = slice(y0, min(y1, lay.ny))
            light = e[: ys.stop - y0, : lay.nx]
            if electrons is not None:
                light += electrons[ys]
            light += cam.dark_rate[ys] * np.float32(exptime)
        z = np.random.default_rng(seeds[k]).standard_normal(e.shape, dtype=np.float32)
        _digitise(raw[y0:y1], e, z, np.float32(cam.read_noise**2), np.float32(cam.gain), cam.column_bias,
                  row_bias[y0:y1])

    with ThreadPoolExecutor(threads or os.cpu_count()) as pool:
        list(pool.map(block, range(len(starts))))
    return raw

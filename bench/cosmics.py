"""Cosmic-ray masking of one frame: the host path (astroscrappy on candidate cells, in the strip
process pool) against the array L.A.Cosmic on CuPy (or NumPy) on the same candidate cells
(:func:`~ast3stream.reduction.cosmics.candidate_pixels`, as ``reduce_raw`` runs it), with hits and agreement.

    python -m bench.cosmics [--scale 1.0] [--cosmics 2000] [--xp auto|cupy|numpy] [--out DIR]

``--scale 1.0`` is the trimmed full AST3-3 frame (10654 x 14206 px); the frame is synthetic,
built with NumPy in seconds: sky 600 e-, read noise 3 e-, Gaussian stars (FWHM 2.5-3.5 px,
300 e- to 3e6 e-, the brightest saturated and masked as ``reduce_raw`` does), Gaussian noise of
the Poisson variance, then ``--cosmics`` cosmic rays per full frame (scaled by the area; 150-20000
e- a pixel, single pixels, 2-4 px blobs and 4-15 px tracks). Each path runs twice on a fresh copy
and the second (warm: numba loaded, pool started, CuPy kernels compiled) is timed; the CuPy run
includes its masks' transfer to the device but not the frame's, and synchronises the device
before the clock stops. Prints seconds, hit pixels, their overlap both ways, the cleaned values'
difference on the common hits, the fraction of injected hit pixels >= 250 e- each finds and its
hits more than 4 px from any injected one (star pixels, sky-noise peaks).
``--xp auto`` is CuPy where a GPU is present, else NumPy. ``--out DIR`` writes ``cosmics.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

FULL_SHAPE = (10654, 14206)
SATURATION = 60000.0
READ_NOISE = 3.0


def synthetic_frame(shape, n_cosmics: int, seed: int = 0):
    """The frame described in the module docstring: ``(data, bad mask, injected cosmic charge)``."""
    from scipy.ndimage import binary_dilation
    from scipy.special import erf

    rng = np.random.default_rng(seed)
    ny, nx = shape
    truth = np.full(shape, 600.0, np.float32)
    n_stars = max(int(40000 * ny * nx / (FULL_SHAPE[0] * FULL_SHAPE[1])), 10)
    sx, sy = rng.uniform(12, nx - 12, n_stars), rng.uniform(12, ny - 12, n_stars)
    flux, fwhm = 10 ** rng.uniform(np.log10(300), np.log10(3e6), n_stars), rng.uniform(2.5, 3.5, n_stars)
    r = 10
    edges = np.arange(-r, r + 2) - 0.5
    for x, y, f, w in zip(sx, sy, flux, fwhm):
        ix, iy, s = int(x), int(y), w / 2.3548 * np.sqrt(2)
        stamp = f * np.outer(np.diff(erf((iy + edges - y) / s)), np.diff(erf((ix + edges - x) / s))) / 4
        truth[iy - r:iy + r + 1, ix - r:ix + r + 1] += stamp.astype(np.float32)
    data = rng.standard_normal(shape, dtype=np.float32)
    data *= np.sqrt(truth + READ_NOISE ** 2)
    data += truth
    del truth
    n_cr = max(int(n_cosmics * ny * nx / (FULL_SHAPE[0] * FULL_SHAPE[1])), 1)
    cr = np.zeros(shape, np.float32)
    cy, cx = rng.integers(8, ny - 8, n_cr), rng.integers(8, nx - 8, n_cr)
    amp = 10 ** rng.uniform(np.log10(150), np.log10(20000), n_cr)
    blobs = [[(0, 0), (0, 1)], [(0, 0), (1, 0)], [(0, 0), (0, 1), (1, 0)], [(0, 0), (0, 1), (1, 0), (1, 1)]]
    for k in range(n_cr):
        if k % 3 == 0:
            pix = [(0, 0)]
        elif k % 3 == 1:
            pix = blobs[k // 3 % len(blobs)]
        else:
            length, pa = rng.uniform(4, 15), rng.uniform(0, np.pi)
            pix = {(round(t * np.sin(pa)), round(t * np.cos(pa))) for t in np.linspace(0, length, int(3 * length))}
        for dy, dx in pix:
            cr[cy[k] + dy, cx[k] + dx] += amp[k] * rng.uniform(0.5, 1.5)
    data += cr
    np.minimum(data, SATURATION, out=data)
    bad = binary_dilation(data >= SATURATION).astype(np.uint16)        # reduce_raw's SATURATED, grown by 1
    return data, bad, cr


def time_host(data, bad, cfg) -> tuple[float, np.ndarray, np.ndarray]:
    from ast3stream.reduction import detect_cosmics
    from ast3stream.sources.strips import n_workers, pool

    rc = cfg.reduction
    workers = pool(n_workers(0))
    for _ in range(2):
        clean = data.copy()
        t0 = time.perf_counter()
        hits = detect_cosmics(clean, bad, READ_NOISE, 1e30, rc.cosmic_sigclip, rc.cosmic_objlim, rc.cosmic_niter,
                              rc.cosmic_tile, rc.cosmic_pad, workers=workers)
        seconds = time.perf_counter() - t0
    return seconds, hits, clean


def time_array(data, bad, cfg, xp) -> tuple[float, np.ndarray, np.ndarray]:
    from ast3stream.reduction.cosmics import candidate_pixels, lacosmic

    rc = cfg.reduction
    sync = xp.cuda.Device().synchronize if xp is not np else (lambda: None)
    for _ in range(2):
        clean, mask = xp.array(data), xp.asarray(bad)
        sync()
        t0 = time.perf_counter()
        allowed = candidate_pixels(clean, mask, READ_NOISE, rc.cosmic_sigclip, rc.cosmic_tile, rc.cosmic_pad)
        hits = lacosmic(clean, mask, READ_NOISE, 1e30, rc.cosmic_sigclip, objlim=rc.cosmic_objlim,
                        niter=rc.cosmic_niter, allowed=allowed)
        sync()
        seconds = time.perf_counter() - t0
    if xp is not np:
        hits, clean = hits.get(), clean.get()
    return seconds, hits, clean


def main(argv=None) -> None:
    from ast3stream.config import Settings
    from ast3stream.subtraction import gpu_available

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--cosmics", type=int, default=2000, help="cosmic rays per full-size frame")
    p.add_argument("--xp", choices=["auto", "cupy", "numpy"], default="auto", help="array module of the L.A.Cosmic")
    p.add_argument("--out", type=Path, default=None, help="write cosmics.json here")
    args = p.parse_args(argv)
    cfg = Settings()
    if args.xp == "numpy" or (args.xp == "auto" and not gpu_available()):
        xp = np
    else:
        import cupy as xp
    shape = tuple(max(int(round(n * args.scale)), 64) for n in FULL_SHAPE)
    t0 = time.perf_counter()
    data, bad, cr = synthetic_frame(shape, args.cosmics)
    print(f"frame {shape[1]} x {shape[0]} (scale {args.scale:g}), {int((cr > 0).sum())} injected hit pixels, "
          f"built in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs", flush=True)
    runs = {"host cells": time_host(data, bad, cfg), f"lacosmic [{xp.__name__}]": time_array(data, bad, cfg, xp)}
    from scipy.ndimage import binary_dilation

    found = {}
    strong, away = cr >= 250, ~binary_dilation(cr > 0, iterations=4)
    result = {"shape": list(shape), "scale": args.scale, "injected_px": int((cr > 0).sum()), "runs": {}}
    for name, (seconds, hits, clean) in runs.items():
        m = np.zeros(shape, bool)
        m[hits[:, 0], hits[:, 1]] = True
        found[name] = (m, clean)
        result["runs"][name] = {"seconds": seconds, "hits": len(hits), "recovered_ge_250e": float(m[strong].mean()),
                                "hits_away_from_injected": int((m & away).sum())}
        print(f"  {name:18s} {seconds:8.2f} s warm, {len(hits)} hit pixels, "
              f"{m[strong].mean():.3f} of the {int(strong.sum())} injected >= 250 e- found, "
              f"{int((m & away).sum())} hits > 4 px from any (stars, noise)", flush=True)
    (a, clean_a), (b, clean_b) = found.values()
    both = a & b
    diff = np.abs(clean_a[both] - clean_b[both])
    result.update(common=int(both.sum()), host_in_array=float(both.sum() / max(a.sum(), 1)),
                  array_in_host=float(both.sum() / max(b.sum(), 1)),
                  cleaned_p99_abs_diff_e=float(np.percentile(diff, 99)) if len(diff) else None)
    print(f"  agreement: {both.sum()} common; {result['host_in_array']:.4f} of the host's hits in the array's, "
          f"{result['array_in_host']:.4f} of the array's in the host's; cleaned values differ by "
          f"{result['cleaned_p99_abs_diff_e']:.3g} e- (99th percentile) on the common hits")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result.update(cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        (args.out / "cosmics.json").write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out / 'cosmics.json'}")


if __name__ == "__main__":
    main()

"""Mesh background of a full-size reduced AST3-3 frame: ``sep.Background`` (one core, GIL held)
against its numba port :func:`ast3stream.sources.background.mesh_background` on 1 thread and on
all numba threads, each with the subtraction the sources stage does; then, with ``--extract``, the
whole :func:`ast3stream.sources.extract` (strip pool of one process per core).

    python -m bench.background [--ny 10654] [--nx 14206] [--mesh 256] [--repeat 3] [--extract] [--json PATH]

The frame is synthetic, built with NumPy in a few seconds: sky 600 e- with a gradient and
Gaussian noise (15 e-), 30 000 stars (FWHM 3.3 px, fluxes log-uniform 1e3-1e6 e-) added as
stamps, a mask (``MaskBits``) of 0.1 % bad pixels, 20 bad columns and the saturated stars' cores.
Times are the median of ``--repeat`` warm runs (the first call, which loads the numba kernels from
their disk cache, is reported apart); the port's result is checked to equal sep's bit for bit.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def synthetic_frame(ny: int, nx: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A reduced frame (float32, e-) with stars and its uint16 MaskBits plane (module docstring)."""
    from ast3stream.image import MaskBits

    rng = np.random.default_rng(seed)
    data = rng.standard_normal((ny, nx), dtype=np.float32)
    data *= 15.0
    data += 600.0
    data += np.linspace(0, 40, nx, dtype=np.float32)[None, :]
    data += np.linspace(0, 25, ny, dtype=np.float32)[:, None]
    r = 8
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    sigma = 3.3 / 2.3548
    xs, ys = rng.uniform(r, nx - r - 1, 30_000), rng.uniform(r, ny - r - 1, 30_000)
    flux = 10 ** rng.uniform(3, 6, xs.size)
    mask = np.zeros((ny, nx), np.uint16)
    for x, y, f in zip(xs, ys, flux):
        ix, iy = int(x), int(y)
        g = np.exp(-((xx - (x - ix)) ** 2 + (yy - (y - iy)) ** 2) / (2 * sigma ** 2))
        stamp = (f / (2 * np.pi * sigma ** 2) * g).astype(np.float32)
        data[iy - r:iy + r + 1, ix - r:ix + r + 1] += stamp
        if stamp.max() > 60000:
            mask[iy - r:iy + r + 1, ix - r:ix + r + 1][stamp > 60000] |= np.uint16(MaskBits.SATURATED)
    mask.ravel()[rng.choice(data.size, data.size // 1000, replace=False)] |= np.uint16(MaskBits.BAD)
    mask[:, rng.choice(nx, 20, replace=False)] |= np.uint16(MaskBits.BAD)
    return data, mask


def timed(fn, repeat: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ny", type=int, default=10654)
    ap.add_argument("--nx", type=int, default=14206)
    ap.add_argument("--mesh", type=int, default=256, help="bw = bh (sources.mesh)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--extract", action="store_true", help="also time the whole sources.extract")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import numba
    import sep

    from ast3stream.config import SourcesConfig
    from ast3stream.sources.background import mesh_background
    from ast3stream.sources.extract import bit_mask

    t0 = time.perf_counter()
    data, bits = synthetic_frame(args.ny, args.nx)
    cfg = SourcesConfig(mesh=args.mesh)
    mask = bit_mask(bits, cfg.mask_bits)
    res = {"shape": [args.ny, args.nx], "mesh": args.mesh, "cpu_count": os.cpu_count(),
           "numba_threads": numba.get_num_threads(), "frame_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(res), flush=True)
    kw = dict(bw=args.mesh, bh=args.mesh, fw=3, fh=3)
    sub_sep = np.empty_like(data)

    def with_sep():
        bkg = sep.Background(data, mask=mask, **kw)
        sub_sep[...] = data
        bkg.subfrom(sub_sep)
        return bkg

    def with_port():
        bkg = mesh_background(data, mask, **kw)
        bkg.subtracted(data, out=sub_port)
        return bkg

    sub_port = np.empty_like(data)
    t0 = time.perf_counter()
    port = with_port()
    res["port_first_call_s"] = round(time.perf_counter() - t0, 2)
    ref = with_sep()
    res["identical_to_sep"] = bool(np.array_equal(sub_port, sub_sep) and port.globalrms == ref.globalrms
                                   and port.globalback == ref.globalback)
    res["sep_s"], _ = timed(with_sep, args.repeat)
    all_threads = numba.get_num_threads()
    for n in sorted({1, all_threads}):
        numba.set_num_threads(n)
        res[f"port_{n}_threads_s"], _ = timed(with_port, args.repeat)
        t0 = time.perf_counter()
        mesh_background(data, mask, **kw)
        res[f"port_{n}_threads_meshes_only_s"] = round(time.perf_counter() - t0, 3)
    numba.set_num_threads(all_threads)
    res = {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}
    print(json.dumps(res), flush=True)
    if args.extract:
        from ast3stream.image import Frame
        from ast3stream.sources import extract, strips

        frame = Frame(data, bits)
        t0 = time.perf_counter()
        strips.pool(strips.n_workers(cfg.workers))
        res["pool_start_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        table = extract(frame, cfg)
        res["extract_first_s"] = round(time.perf_counter() - t0, 2)
        res["extract_s"] = round(timed(lambda: extract(frame, cfg), args.repeat)[0], 2)
        res["sources"] = len(table)
        print(json.dumps({k: res[k] for k in ("pool_start_s", "extract_first_s", "extract_s", "sources")}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()

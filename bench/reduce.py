"""Seconds per front-half stage (and its reduction steps), PSF photometry and detection on a
simulated AST3-3 frame, with peak memory.

    python -m bench.reduce [--scale 1.0] [--repeat 2] [--out DIR] [--dir SIMDIR] [--gpu]

``--scale 1.0`` is the full 14304 x 10748 raw frame. The night (one exposure, one bias, one flat)
is simulated once into ``--dir`` and reused; the frame then goes ``--repeat`` times through the
pipeline's front-half stage functions in a fresh process (so that its peak resident memory is
the stages' own), after the strip pool's start and the warm-up (:func:`ast3stream.front.warm_up`)
that a worker does before it consumes: run 1 is the first exposure after a start, later runs
what a worker spends per exposure. The last
run also times the sources stage in one process (``sources.workers = 1``) for comparison.
Detection runs on a synthetic difference image of the frame's size (white noise and 2000
point sources of both signs, SNR 4-30), with the NumPy backend and, with ``--gpu``, the CuPy one;
``--gpu`` also reduces the frame with ``reduction.backend = cupy`` (cosmic rays by the array
L.A.Cosmic on the device, timed as its ``cosmics`` step) and compares it with the CPU one.
``--out DIR`` writes ``reduce.json`` there.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def prepare(directory: Path, scale: float) -> None:
    from ast3stream.config import Settings
    from ast3stream.reduction import Calibration
    from ast3stream.simulate import plan_night, write_exposure

    cfg = Settings(simulation={"n_bias": 1, "n_flat": 1})
    if not any((directory / "raw").glob("*.fits")):
        t0 = time.perf_counter()
        night = plan_night(directory, n_exposures=1, scale=scale, seed=7, cfg=cfg, n_fields=1)
        write_exposure(night, 0)
        print(f"simulated in {time.perf_counter() - t0:.1f} s", flush=True)
    if (directory / "calib" / "master_bias.fits").exists():
        return
    t0 = time.perf_counter()
    d = directory / "calib"
    Calibration.build(sorted(d.glob("bias_*.fits")), sorted(d.glob("flat_*.fits")), cfg.reduction,
                      cfg.detector).save(d)
    print(f"master bias/flat built in {time.perf_counter() - t0:.1f} s", flush=True)


def synthetic_difference(shape, fwhm: float = 3.0, sigma: float = 20.0, n: int = 2000, seed: int = 0):
    """A white-noise difference image with ``n`` Gaussian point sources of both signs, and their truth."""
    import numpy as np
    from astropy.io import fits

    from ast3stream.detection.photometry import gaussian_psf
    from ast3stream.subtraction import Difference

    rng = np.random.default_rng(seed)
    ny, nx = shape
    img = rng.standard_normal(shape, dtype=np.float32)
    img *= sigma
    x, y = rng.uniform(40, nx - 40, n), rng.uniform(40, ny - 40, n)
    snr, sign = rng.uniform(4, 30, n), np.where(rng.random(n) < 0.5, 1, -1)
    flux = sign * snr * sigma * np.sqrt(4 * np.pi) * fwhm / 2.3548
    r = 8
    stamps = gaussian_psf(x - np.rint(x), y - np.rint(y), fwhm, r) * flux[:, None, None]
    for s, cx, cy in zip(stamps, np.rint(x).astype(int), np.rint(y).astype(int)):
        img[cy - r:cy + r + 1, cx - r:cx + r + 1] += s.astype(np.float32)
    hdr = fits.Header(dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=10.0, CRVAL2=20.0, CRPIX1=nx / 2,
                           CRPIX2=ny / 2, CD1_1=-1.14e-4, CD2_2=1.14e-4))
    diff = Difference(img, np.full(shape, sigma, np.float32), np.zeros(shape, np.uint16), hdr, {"psf_fwhm": fwhm})
    return diff, x, y, snr, sign


def bench_detection(shape, backends) -> dict:
    import numpy as np
    from scipy.spatial import cKDTree

    from ast3stream.config import DetectionConfig
    from ast3stream.detection import detect
    from ast3stream.image import Frame

    t0 = time.perf_counter()
    diff, x, y, snr, sign = synthetic_difference(shape)
    out = {"synthetic_s": time.perf_counter() - t0}
    frame = Frame(diff.diff, diff.mask)
    for backend in backends:
        params = DetectionConfig(backend=backend)
        runs = []
        for _ in range(2):                               # the first call loads kernels
            t0 = time.perf_counter()
            cands, stamps = detect(diff, frame, frame, 3.0, 27.0, params, lane="dip")
            runs.append(time.perf_counter() - t0)
        d, j = cKDTree(np.c_[cands["x"], cands["y"]]).query(np.c_[x, y], distance_upper_bound=1.5)
        found = np.isfinite(d)
        found[found] = np.asarray(cands["sign"])[j[found]] == sign[found]
        out[backend] = {"seconds": runs, "n_candidates": len(cands), "false": int(len(cands) - found.sum()),
                        "completeness_snr_gt_7": float(found[snr > 7].mean())}
        print(f"  detection [{backend}] {' '.join(f'{t:.2f}' for t in runs)} s; {len(cands)} candidates, "
              f"completeness (SNR > 7) {out[backend]['completeness_snr_gt_7']:.3f}", file=sys.stderr, flush=True)
    return out


def bench_gpu_reduction(raw, calib, cfg, frame) -> dict:
    """``reduction.backend = cupy`` (cosmics by the array L.A.Cosmic on the device) against the CPU
    frame of the last run (astroscrappy on candidate cells): step seconds, cosmic-ray pixels of
    each and in common, and the differences elsewhere."""
    import numpy as np

    from ast3stream.image import MaskBits
    from ast3stream.reduction import reduce_raw

    params = cfg.reduction.model_copy(update={"backend": "cupy"})
    runs = []
    for _ in range(2):
        steps = {}
        t0 = time.perf_counter()
        gpu_frame = reduce_raw(raw, calib, params, cfg.detector, timings=steps)
        runs.append({"total": time.perf_counter() - t0, **steps})
    gpu_cr, cpu_cr = (gpu_frame.mask & MaskBits.COSMIC) > 0, (frame.mask & MaskBits.COSMIC) > 0
    rest, cr_bits = ~(gpu_cr | cpu_cr), np.uint16(MaskBits.COSMIC | MaskBits.INTERP)
    out = {"runs": runs, "cosmic_px_gpu": int(gpu_cr.sum()), "cosmic_px_cpu": int(cpu_cr.sum()),
           "cosmic_px_both": int((gpu_cr & cpu_cr).sum()),
           "max_abs_diff_e": float(np.max(np.abs(gpu_frame.data[rest] - frame.data[rest]))),
           "mask_differs_px": int(np.count_nonzero((gpu_frame.mask & ~cr_bits) != (frame.mask & ~cr_bits)))}
    print(f"  reduction [cupy] {runs[-1]}; cosmic-ray pixels GPU {out['cosmic_px_gpu']}, CPU {out['cosmic_px_cpu']}, "
          f"both {out['cosmic_px_both']}; elsewhere max |GPU - CPU| {out['max_abs_diff_e']:.3g} e-, "
          f"{out['mask_differs_px']} pixels' other mask bits differ", file=sys.stderr, flush=True)
    return out


def worker(directory: Path, repeat: int, gpu: bool) -> None:
    from ast3stream.catalogs.refcat import RefCat
    from ast3stream.config import Settings
    from ast3stream.pipeline import FRONT, SLOW, Exposure
    from ast3stream.reduction import Calibration, reduce_raw
    from ast3stream.sources import strips

    from ast3stream.front import warm_up
    from ast3stream.subtraction import gpu_available

    if gpu and not gpu_available():
        print("  --gpu: no CuPy/GPU here, CPU only", file=sys.stderr, flush=True)
        gpu = False
    cfg = Settings()
    t0 = time.perf_counter()
    strips.pool(strips.n_workers(cfg.sources.workers))
    pool_s = time.perf_counter() - t0
    warm_s = warm_up(cfg)
    raw = sorted((directory / "raw").glob("*.fits"))[0]
    calib = Calibration.load(directory / "calib")
    refcat = RefCat.from_file(directory / "refcat.fits")
    inputs = {"calibration": calib, "refcat": refcat}
    reports = []
    for i in range(repeat):
        cpu = time.process_time()
        exp = Exposure(exposure_id=raw.stem, raw_path=str(raw))
        timings, steps = {}, {}
        t0 = time.perf_counter()
        exp.frame = reduce_raw(raw, calib, cfg.reduction, cfg.detector, timings=steps)
        timings["reduction"] = time.perf_counter() - t0
        for st in FRONT[1:] + (SLOW,):
            t0 = time.perf_counter()
            out = st.func(exp, **{s: getattr(cfg, s) for s in st.sections}, **{k: inputs[k] for k in st.inputs})
            exp.metrics.update({k: float(v) for k, v in out.metrics.items() if v is not None})
            timings[st.name] = time.perf_counter() - t0
        timings["front total"] = sum(v for k, v in timings.items() if k != "psf")
        if i == repeat - 1:
            from ast3stream.sources import extract
            t0 = time.perf_counter()
            extract(exp.frame, cfg.sources.model_copy(update={"workers": 1}))
            timings["sources (1 process)"] = time.perf_counter() - t0
        reports.append({"timings": timings, "reduction_steps": steps, "cpu_s": time.process_time() - cpu,
                        "metrics": exp.metrics, "flags": exp.flags, "shape": list(exp.frame.shape)})
    gpu_reduction = bench_gpu_reduction(raw, calib, cfg, exp.frame) if gpu else None
    detection = bench_detection(tuple(reports[-1]["shape"]), ["numpy", "cupy"] if gpu else ["numpy"])
    print(json.dumps({"runs": reports, "detection": detection, "gpu_reduction": gpu_reduction, "pool_start_s": pool_s,
                      "warm_up_s": warm_s,
                      "workers": strips.n_workers(cfg.sources.workers),
                      "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--dir", type=Path, default=None, help="simulated night (made once, then reused)")
    p.add_argument("--repeat", type=int, default=2, help="times the frame is processed (first: cold)")
    p.add_argument("--out", type=Path, default=None, help="write reduce.json here")
    p.add_argument("--gpu", action="store_true", help="also time the CuPy detection backend")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    directory = args.dir or Path(f"/tmp/ast3_bench_reduce_{args.scale:g}")
    if args.worker:
        worker(directory, args.repeat, args.gpu)
        return
    prepare(directory, args.scale)
    cmd = [sys.executable, "-m", "bench.reduce", "--worker", "--dir", str(directory), "--repeat", str(args.repeat)]
    proc = subprocess.run(cmd + (["--gpu"] if args.gpu else []), check=True, stdout=subprocess.PIPE, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    reports = result["runs"]
    ny, nx = reports[0]["shape"]
    print(f"frame {nx} x {ny} (scale {args.scale:g}); flags {reports[-1]['flags']}; {os.cpu_count()} CPUs "
          f"({result['workers']} strip workers, started in {result['pool_start_s']:.1f} s; warm-up "
          f"{result['warm_up_s']:.1f} s), "
          f"load average {os.getloadavg()[0]:.1f}")
    print("  step              " + "".join(f"{'run ' + str(i + 1) + (' (cold)' if i == 0 else ''):>14s}"
                                          for i in range(len(reports))))
    rows = [(f"  {k}", [r["reduction_steps"].get(k) for r in reports]) for k in reports[0]["reduction_steps"]]
    steps = list(reports[0]["timings"]) + [k for k in reports[-1]["timings"] if k not in reports[0]["timings"]]
    for step in steps:
        print(f"  {step:18s}" + "".join(f"{r['timings'][step]:12.2f} s" if step in r["timings"] else " " * 14
                                       for r in reports))
        if step == "reduction":
            for name, values in rows:
                print(f"  {name:18s}" + "".join(f"{v:12.2f} s" for v in values))
    print(f"  {'cpu (all)':18s}" + "".join(f"{r['cpu_s']:12.2f} s" for r in reports))
    print(f"  peak memory       {result['peak_rss_gb']:12.2f} GB")
    for key in ("n_sources", "n_stars", "fwhm_px", "rms_arcsec", "n_astrom", "zp", "zp_err", "maglim", "pcc"):
        print(f"  {key:18s}{reports[-1]['metrics'].get(key)}")
    if result.get("gpu_reduction"):
        g = result["gpu_reduction"]
        r = g["runs"][-1]
        print(f"  reduction [cupy]  {r['total']:.2f} s warm (overscan {r['overscan']:.2f}, calibrate "
              f"{r['calibrate']:.2f}, cosmics {r.get('cosmics', 0):.2f}, to host {r['to host']:.2f}, trails "
              f"{r.get('trails', 0):.2f}); cosmic-ray pixels GPU {g['cosmic_px_gpu']}, CPU {g['cosmic_px_cpu']}, "
              f"both {g['cosmic_px_both']}; elsewhere max |GPU - CPU| {g['max_abs_diff_e']:.3g} e-, "
              f"{g['mask_differs_px']} pixels' other mask bits differ")
    det = result["detection"]
    for backend in ("numpy", "cupy"):
        if backend in det:
            r = det[backend]
            print(f"  detection [{backend}] {min(r['seconds']):.2f} s warm ({r['seconds'][0]:.2f} s first); "
                  f"{r['n_candidates']} candidates, completeness (SNR > 7) {r['completeness_snr_gt_7']:.3f}, "
                  f"{r['false']} false")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        result.update(scale=args.scale, cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        (args.out / "reduce.json").write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out / 'reduce.json'}")


if __name__ == "__main__":
    main()

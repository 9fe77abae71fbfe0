"""Per-step time and peak memory of single-frame reduction on a simulated AST3-3 frame.

    python -m bench.reduce [--scale 1.0] [--dir /tmp/ast3_bench_reduce] [--repeat 2]

``--scale 1.0`` is the full 14206 x 10654 frame. The night (one exposure, masters) is simulated
once into ``--dir`` and reused; the frame is then processed ``--repeat`` times in a fresh process
so that its peak resident memory is the reduction's own. The first run is cold (imports, the
cloud model and the numba cache are loaded on first use); later runs are what a pipeline
worker spends per frame. Wall and CPU seconds are printed for each step.
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

    if not any((directory / "raw").glob("*.fits")):
        t0 = time.perf_counter()
        night = plan_night(directory, n_exposures=1, scale=scale, seed=7, n_fields=1)
        write_exposure(night, 0)
        print(f"simulated in {time.perf_counter() - t0:.1f} s", flush=True)
    if (directory / "calib" / "master_bias.fits").exists():
        return
    t0 = time.perf_counter()
    d = directory / "calib"
    cfg = Settings()
    Calibration.build(sorted(d.glob("bias_*.fits")), sorted(d.glob("flat_*.fits")), cfg.reduction, cfg.detector).save(d)
    print(f"master bias/flat built in {time.perf_counter() - t0:.1f} s", flush=True)


def worker(directory: Path, repeat: int) -> None:
    from ast3stream.catalogs.refcat import RefCat
    from ast3stream.config import Settings
    from ast3stream.reduction import Calibration
    from ast3stream.front import reduce_file

    raw = sorted((directory / "raw").glob("*.fits"))[0]
    calib = Calibration.load(directory / "calib")
    refcat = RefCat.from_file(directory / "refcat.fits")
    reports = []
    for _ in range(repeat):
        cpu = time.process_time()
        _, report = reduce_file(raw, Settings(), calibration=calib, refcat=refcat, out_dir=directory / "out")
        report["cpu_s"] = time.process_time() - cpu
        report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
        reports.append(report)
    print(json.dumps(reports))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--repeat", type=int, default=2, help="times the frame is processed (first: cold)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    directory = args.dir or Path(f"/tmp/ast3_bench_reduce_{args.scale:g}")
    if args.worker:
        worker(directory, args.repeat)
        return
    prepare(directory, args.scale)
    out = subprocess.run([sys.executable, "-m", "bench.reduce", "--worker", "--dir", str(directory),
                          "--repeat", str(args.repeat)], check=True, capture_output=True, text=True).stdout
    reports = json.loads(out.strip().splitlines()[-1])
    from astropy.io import fits
    shape = fits.getheader(reports[0]["reduced"], "SCI")
    print(f"frame {shape['NAXIS1']} x {shape['NAXIS2']} (scale {args.scale:g}); status {reports[-1]['status']}; "
          f"flags {reports[-1]['flags']}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("  step         " + "".join(f"{'run ' + str(i + 1) + (' (cold)' if i == 0 else ''):>14s}"
                                     for i in range(len(reports))))
    for r in reports:
        r["timings"]["total+write"] = r["timings"]["total"] + r["timings"].get("write", 0.0)
    for step in reports[0]["timings"]:
        print(f"  {step:12s} " + "".join(f"{r['timings'][step]:12.2f} s" for r in reports))
    print(f"  {'cpu (all)':12s} " + "".join(f"{r['cpu_s']:12.2f} s" for r in reports))
    print(f"  peak memory  {reports[-1]['peak_rss_gb']:12.2f} GB")
    for key in ("n_sources", "n_stars", "fwhm_px", "rms_arcsec", "zp", "zp_err", "maglim", "pcc"):
        print(f"  {key:12s} {reports[-1].get(key)}")


if __name__ == "__main__":
    main()

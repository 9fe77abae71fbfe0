"""Per-step time and peak memory of single-frame reduction on a simulated AST3-3 frame.

    python -m bench.reduce [--scale 1.0] [--dir /tmp/ast3_bench_reduce]

``--scale 1.0`` is the full 14206 x 10654 frame. The night (one exposure, masters) is simulated
once into ``--dir`` and reused; the frame is then processed in a fresh process so that its peak
resident memory is the reduction's own.
"""
from __future__ import annotations

import argparse
import json
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
    Calibration.build(sorted(d.glob("bias_*.fits")), sorted(d.glob("flat_*.fits")), Settings()).save(d)
    print(f"master bias/flat built in {time.perf_counter() - t0:.1f} s", flush=True)


def worker(directory: Path) -> None:
    from ast3stream.config import Settings
    from ast3stream.reduction import Calibration
    from ast3stream.single import process_single

    raw = sorted((directory / "raw").glob("*.fits"))[0]
    calib = Calibration.load(directory / "calib")
    _, report = process_single(raw, Settings(), calib, directory / "refcat.fits", directory / "out")
    report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(json.dumps(report))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    directory = args.dir or Path(f"/tmp/ast3_bench_reduce_{args.scale:g}")
    if args.worker:
        worker(directory)
        return
    prepare(directory, args.scale)
    out = subprocess.run([sys.executable, "-m", "bench.reduce", "--worker", "--dir", str(directory)],
                         check=True, capture_output=True, text=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    from astropy.io import fits
    shape = fits.getheader(report["reduced"], "SCI")
    print(f"frame {shape['NAXIS1']} x {shape['NAXIS2']} (scale {args.scale:g}); status {report['status']}; "
          f"flags {report['flags']}")
    for step, sec in report["timings"].items():
        print(f"  {step:12s} {sec:7.2f} s")
    print(f"  peak memory  {report['peak_rss_gb']:7.2f} GB")
    for key in ("n_sources", "n_stars", "fwhm_px", "rms_arcsec", "zp", "zp_err", "maglim", "pcc"):
        print(f"  {key:12s} {report.get(key)}")


if __name__ == "__main__":
    main()

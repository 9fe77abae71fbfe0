"""Simulator speed: plan time (catalogues, orbits, calibrations) and per-frame time and peak memory.

    python -m bench.simulate [--scale 1.0] [--threads 16] [--frames 2] [--calib 1] [--cache DIR] [--json PATH]

``--calib N`` writes N biases and N flats (the default night has more); ``--cache DIR`` keeps the
night there and a second run with the same parameters reuses it (``reuse_s``).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from ast3stream.config import Settings
from ast3stream.simulate import plan_night, simulate_night, write_exposure


def rss() -> int:
    """Resident memory of this process [bytes] (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory of this process while inside the ``with`` block (polled)."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()

        def poll():
            while not self._stop.is_set():
                self.peak = max(self.peak, rss())
                time.sleep(0.02)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bench(scale: float, out: Path, n_frames: int, threads: int | None, calib: int | None, reuse: bool) -> dict:
    sim = Settings().simulation
    if calib is not None:
        sim = sim.model_copy(update={"n_bias": calib, "n_flat": calib})
    n_exp = max(n_frames, 2)
    res: dict = {"scale": scale, "threads": threads or os.cpu_count(), "frames": n_frames,
                 "n_bias": sim.n_bias, "n_flat": sim.n_flat}
    if reuse and (out / "truth" / "night.json").exists():
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            night = simulate_night(out, n_exposures=n_exp, scale=scale, seed=1, sim=sim, threads=threads, reuse=True)
        res.update(reuse_s=round(time.perf_counter() - t0, 2), peak_rss_gib=round(mem.peak / 2**30, 2),
                   raw_mib=round(night.exposures[0].path.stat().st_size / 2**20))
        print(f"scale {scale}: night in {out} ready in {res['reuse_s']:.1f} s (reused when its parameters match)",
              flush=True)
        return res
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        night = plan_night(out, n_exposures=n_exp, scale=scale, seed=1, sim=sim, threads=threads)
    res.update(plan_s=round(time.perf_counter() - t0, 2), plan_peak_rss_gib=round(mem.peak / 2**30, 2))
    print(f"scale {scale}: plan (catalogues, orbits, {sim.n_bias + sim.n_flat} calibration frames) "
          f"{res['plan_s']:.1f} s, peak RSS {mem.peak / 2**30:.2f} GiB", flush=True)
    res["frame_s"], res["frame_peak_rss_gib"] = [], []
    for i in range(n_frames):
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            path = write_exposure(night, i, threads=threads)
        dt = time.perf_counter() - t0
        res["frame_s"].append(round(dt, 2))
        res["frame_peak_rss_gib"].append(round(mem.peak / 2**30, 2))
        res["raw_mib"] = round(path.stat().st_size / 2**20)
        print(f"scale {scale}: frame {i} {dt:.2f} s, peak RSS {mem.peak / 2**30:.2f} GiB, {res['raw_mib']} MiB, "
              f"{len(night.truth(night.exposures[i].expid))} truth rows", flush=True)
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--threads", type=int, help="default: all cores")
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--calib", type=int, help="biases and flats each (default: the simulation settings')")
    ap.add_argument("--cache", type=Path, help="keep the night here and reuse it on the next run")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.cache / f"scale{args.scale:g}-frames{args.frames}" if args.cache else Path(tmp)
        res = bench(args.scale, out, args.frames, args.threads, args.calib, reuse=args.cache is not None)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()

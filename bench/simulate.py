"""Simulator speed: plan time and per-frame time and peak memory at scale 0.1 (and 1.0 with --full).

    python -m bench.simulate [--full] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

from ast3stream.simulate import plan_night, write_exposure


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


def bench(scale: float, out: Path, n_frames: int) -> None:
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        night = plan_night(out / f"scale{scale}", n_exposures=max(n_frames, 2), scale=scale, seed=1)
    plan_s = time.perf_counter() - t0
    print(f"scale {scale}: plan (catalogues, orbits, {len(list((night.out_dir / 'calib').glob('*.fits')))} "
          f"calibration frames) {plan_s:.1f} s, peak RSS {mem.peak / 2**30:.2f} GiB")
    for i in range(n_frames):
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            path = write_exposure(night, i)
        print(f"scale {scale}: frame {i} {time.perf_counter() - t0:.2f} s, peak RSS {mem.peak / 2**30:.2f} GiB, "
              f"{path.stat().st_size / 2**20:.0f} MiB, {len(night.truth(night.exposures[i].expid))} truth rows")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="also run scale 1.0 (about 3.5 GB of disk)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print(f"ru_maxrss before: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        bench(0.1, out, 3)
        if args.full:
            bench(1.0, out, 2)


if __name__ == "__main__":
    main()

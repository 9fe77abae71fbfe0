"""Shared by the stream benchmarks: settings for a simulated night, per-stage timings, latencies."""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from ast3stream.config import Settings
from ast3stream.pipeline import SLOW, STAGES
from ast3stream.rawfile import detector_from_header
from ast3stream.simulate.night import Night


def night_settings(night: Night, data_dir: Path, **sections) -> Settings:
    """Settings for running the stack in ``data_dir`` on a simulated night (its catalogues,
    calibrations and detector); ``sections`` override as in :meth:`Settings.load`."""
    sim = night.out_dir
    paths = {"data_dir": data_dir, "refcat": sim / "refcat.fits", "galaxies": sim / "galaxies.csv",
             "mpcorb": sim / "MPCORB.DAT", "fields": sim / "fields.csv", "calib_dir": sim / "calib",
             **sections.pop("paths", {})}
    cfg = Settings.load(None, paths=paths, **sections)
    cfg.detector = detector_from_header(night.exposures[0].path, cfg.detector)
    return cfg


def print_stage_times(runs: list[dict], title: str) -> None:
    """Median and p95 seconds of every stage and lane over the finished ``stage_runs`` rows."""
    print(f"\n{title}\n{'stage':<13}{'lane':<5}{'n':>5}{'median':>9}{'p95':>9}")
    for stage in (*STAGES, SLOW):
        for lane in ("qip", "dip"):
            secs = [r["end"] - r["start"] for r in runs
                    if r["stage"] == stage.name and r["lane"] == lane and r["end"] is not None]
            if secs:
                print(f"{stage.name:<13}{lane:<5}{len(secs):>5}{statistics.median(secs):>9.2f}"
                      f"{np.percentile(secs, 95):>9.2f}")

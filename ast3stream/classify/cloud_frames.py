"""Cloud-classifier thumbnails made from the frame simulator's raw frames.

A night of :func:`ast3stream.simulate.simulate_night` (``cloud_fraction`` of its exposures under a
plane-wave extinction field of mean 0.5–1.5 mag, clipped at ``simulation.cloud_max_mag``, which
therefore sets thin-cloud depths) is reduced with overscan + master bias/flat only (cosmic rays and
trails barely change a zscale thumbnail) and each frame becomes the quality stage's thumbnail
(:func:`ast3stream.quality.thumbnail.thumbnail`). Labels: cloudy = truth mean ``cloud`` >= ``cloudy_min``
[mag]; frames with 0 < cloud < ``cloudy_min`` are ambiguous and dropped.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..config import Settings
from ..quality.thumbnail import thumbnail
from ..rawfile import detector_from_header
from ..reduction import Calibration, reduce_raw


def night_thumbnails(seed: int, scale: float, n_exposures: int = 16, n_fields: int = 4,
                     cloud_fraction: float = 0.5, cloud_max_mag: float = 2.0, size: int = 256,
                     cloudy_min: float = 0.15, work_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Simulate one night and return ``thumbs`` (N, size, size) float32 in [0, 1], ``label``
    (1 = cloudy), ``depth`` (truth mean cloud [mag]), ``scale`` and ``seed`` per frame."""
    from ..simulate import Night, simulate_night

    cfg = Settings()
    cfg.simulation.cloud_max_mag = cloud_max_mag
    tmp = Path(tempfile.mkdtemp(prefix=f"cloudnight{seed}_", dir=work_dir))
    try:
        night: Night = simulate_night(tmp, n_exposures, scale, seed, cfg, n_fields, cloud_fraction)
        red = Settings()
        red.reduction.cosmics = red.reduction.trails = False
        red.detector = detector_from_header(night.exposures[0].path, red.detector)
        calib = Calibration.build(sorted((tmp / "calib").glob("bias_*.fits")),
                                  sorted((tmp / "calib").glob("flat_*.fits")), red)
        depth = np.asarray(night.table["cloud"], np.float32)
        keep = (depth == 0) | (depth >= cloudy_min)
        thumbs = np.stack([thumbnail(reduce_raw(e.path, calib, red), size)
                           for e, k in zip(night.exposures, keep) if k])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(thumbs)
    return dict(thumbs=thumbs, label=(depth[keep] >= cloudy_min).astype(np.int8), depth=depth[keep],
                scale=np.full(n, scale, np.float32), seed=np.full(n, seed, np.int32))


def frame_thumbnails(nights, workers: int = 1, **kwargs) -> dict[str, np.ndarray]:
    """Concatenated :func:`night_thumbnails` over ``nights``, a list of ``(seed, scale, cloud_max_mag)``."""
    jobs = [dict(seed=s, scale=sc, cloud_max_mag=m, **kwargs) for s, sc, m in nights]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_night_job, jobs))
    else:
        parts = [_night_job(j) for j in jobs]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _night_job(job: dict) -> dict[str, np.ndarray]:
    return night_thumbnails(**job)

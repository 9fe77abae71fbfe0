"""Cloud-classifier inputs made from the frame simulator's raw frames.

A night of :func:`ast3stream.simulate.simulate_night` (``cloud_fraction`` of its exposures under a
plane-wave extinction field of mean 0.5–1.5 mag, clipped at ``simulation.cloud_max_mag``, which
therefore sets thin-cloud depths) is reduced with overscan + master bias/flat only (cosmic rays and
trails barely change a zscale thumbnail), then goes through the pipeline's sources, astrometry and
photometry like any exposure; each frame gives the quality stage's inputs to the cloud CNN: the
thumbnail (:func:`ast3stream.quality.thumbnail.thumbnail`) and the transparency map
(:func:`ast3stream.quality.transparency.transparency_map`; all NaN when the astrometry or the zero
point fails). Labels: cloudy = truth mean ``cloud`` >= ``cloudy_min`` [mag]; frames with
0 < cloud < ``cloudy_min`` are ambiguous and dropped.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..astrometry import AstrometryError, apply_wcs, solve
from ..catalogs.refcat import RefCat
from ..config import Settings
from ..photometry import calibrate
from ..quality.thumbnail import thumbnail
from ..quality.transparency import clear_zero_point, transparency_map
from ..rawfile import detector_from_header
from ..reduction import Calibration, reduce_raw
from ..sources import clean_star_list, extract


def frame_inputs(raw_path, calib: Calibration, refcat: RefCat, cfg: Settings) -> tuple[np.ndarray, np.ndarray]:
    """The cloud CNN's inputs for one raw frame: (thumbnail, transparency map)."""
    frame = reduce_raw(raw_path, calib, cfg.reduction, cfg.detector)
    thumb = thumbnail(frame, cfg.quality.thumbnail_size)
    sources = extract(frame, cfg.sources)
    try:
        wcs, _ = solve(frame, clean_star_list(sources, cfg.sources), refcat, cfg.astrometry, cfg.detector)
        apply_wcs(frame, wcs)
        sources, _ = calibrate(frame, sources, refcat, cfg.photometry, extraction=cfg.sources,
                                match_radius_arcsec=cfg.astrometry.match_radius_arcsec)
    except (AstrometryError, ValueError):
        sources = None
    return thumb, transparency_map(sources, frame.shape,
                                   clear_zero_point(frame.primary, cfg.detector, cfg.quality.extinction_k),
                                   cfg.quality, cfg.photometry)


def night_plan(seed: int) -> dict:
    """Arguments of :func:`night_thumbnails` for cloud-2.0's training and held-out nights by seed:
    scale log-uniform in 0.07–0.3, 7 % at 0.45 (a thumbnail pixel is 3x2 to 25x18 detector pixels;
    55x41 on a full AST3-3 frame); 30 % of nights with thin clouds (``cloud_max_mag`` uniform in
    0.2–0.5); 16/10/4 exposures below scale 0.15/0.35/above."""
    rng = np.random.default_rng([seed, 4242])
    scale = float(np.exp(rng.uniform(np.log(0.07), np.log(0.3)))) if rng.random() < 0.93 else 0.45
    cloud_max_mag = float(rng.uniform(0.2, 0.5)) if rng.random() < 0.3 else 2.0
    n_exposures = 16 if scale < 0.15 else (10 if scale < 0.35 else 4)
    return dict(seed=seed, scale=round(scale, 3), n_exposures=n_exposures, cloud_max_mag=cloud_max_mag)


def night_thumbnails(seed: int, scale: float, n_exposures: int = 16, n_fields: int = 4,
                     cloud_fraction: float = 0.5, cloud_max_mag: float = 2.0,
                     cloudy_min: float = 0.15, work_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Simulate one night and return ``thumbs`` (N, 256, 256) float32 in [0, 1], ``tmaps``
    (N, grid, grid) transparency maps [mag], ``label`` (1 = cloudy), ``depth`` (truth mean cloud
    [mag]), ``scale`` and ``seed`` per frame."""
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
                                  sorted((tmp / "calib").glob("flat_*.fits")), red.reduction, red.detector)
        refcat = RefCat.from_file(tmp / "refcat.fits")
        depth = np.asarray(night.table["cloud"], np.float32)
        keep = (depth == 0) | (depth >= cloudy_min)
        thumbs, tmaps = zip(*(frame_inputs(e.path, calib, refcat, red)
                              for e, k in zip(night.exposures, keep) if k))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(thumbs)
    return dict(thumbs=np.stack(thumbs), tmaps=np.stack(tmaps), label=(depth[keep] >= cloudy_min).astype(np.int8),
                depth=depth[keep], scale=np.full(n, scale, np.float32), seed=np.full(n, seed, np.int32))


def frame_thumbnails(seeds, workers: int = 1, **kwargs) -> dict[str, np.ndarray]:
    """Concatenated :func:`night_thumbnails` of the nights ``night_plan(seed)`` (``kwargs`` override
    the plan), on ``workers`` spawned processes (forking after OpenMP use is unsafe)."""
    jobs = [{**night_plan(s), **kwargs} for s in seeds]
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_night_job, jobs))
    else:
        parts = [_night_job(j) for j in jobs]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _night_job(job: dict) -> dict[str, np.ndarray]:
    return night_thumbnails(**job)

"""The front half on files, no broker and no database: ``ast3stream reduce``.

:func:`run_front` runs the same stage functions as the stream (:data:`ast3stream.pipeline.FRONT`:
reduction, sources, astrometry, photometry, quality) on one raw file; :func:`reduce_file`
adds the report and the files: ``<EXPID>.fits`` (the reduced frame with its WCS, the
calibrated source table as ``SRC`` and the quality keywords) and ``<EXPID>.json`` with
``fwhm_px``, ``n_sources``, ``n_stars``, ``rms_arcsec``, ``n_astrom``, ``zp``, ``zp_err``,
``maglim``, ``pcc``, ``cloud_prob``, ``flags``, ``status`` and per-stage seconds in
``timings``. A failed astrometric solution is a status (``bad_wcs: …``), not an exception; a
frame that cannot be read raises :class:`~ast3stream.reduction.BadFrameError`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .config import Settings
from .pipeline import FRONT, Exposure, StageError

#: report keywords written into the frame's primary header
_KEYWORDS = (("fwhm_px", "FWHM", "[px] median FWHM of the clean stars"),
             ("n_stars", "NSTARS", "clean stars"),
             ("rms_arcsec", "ASTRRMS", "[arcsec] astrometric rms vs reference"),
             ("n_astrom", "ASTRNUM", "stars in the astrometric fit"),
             ("zp", "MAGZP", "zero point: mag of 1 e- in the exposure"),
             ("zp_err", "MAGZPERR", "zero-point error"),
             ("maglim", "MAGLIM", "5-sigma point-source limit"))


def run_front(exp: Exposure, cfg: Settings, *, calibration=None, refcat=None) -> dict[str, float]:
    """Run the front-half stages on ``exp`` in place; return seconds per stage.

    Without a reference catalogue the run stops after the sources (``status`` ``no_refcat``);
    a stage that cannot go on raises :class:`~ast3stream.pipeline.StageError`.
    """
    inputs = {"calibration": calibration, "refcat": refcat}
    timings: dict[str, float] = {}
    for st in FRONT:
        if "refcat" in st.inputs and refcat is None:
            exp.flags = sorted(set(exp.flags) | {"bad_wcs"})
            raise StageError("no reference catalogue: no astrometry or photometry")
        t0 = time.perf_counter()
        out = st.func(exp, **{s: getattr(cfg, s) for s in st.sections}, **{k: inputs[k] for k in st.inputs})
        exp.metrics.update({k: float(v) for k, v in out.metrics.items() if v is not None and np.isfinite(v)})
        exp.flags = sorted(set(exp.flags) | set(out.flags))
        timings[st.name] = time.perf_counter() - t0
    return timings


def reduce_file(raw_path, cfg: Settings, *, calibration=None, refcat=None, out_dir=None) -> tuple[Exposure, dict]:
    """Reduce and calibrate one raw file; write ``<EXPID>.fits`` and ``<EXPID>.json`` to ``out_dir``."""
    from .catalogs.refcat import as_refcat

    refcat = as_refcat(refcat) if refcat is not None else None
    exp = Exposure(exposure_id=Path(raw_path).name.split(".")[0], raw_path=str(raw_path))
    t0 = time.perf_counter()
    status, timings = "ok", {}
    try:
        timings = run_front(exp, cfg, calibration=calibration, refcat=refcat)
    except StageError as exc:
        status = "no_refcat" if refcat is None else f"bad_wcs: {exc}"
        exp.flags = sorted(set(exp.flags) | {"bad_wcs"})
    timings["total"] = time.perf_counter() - t0
    expid = str(exp.frame.primary.get("EXPID", exp.exposure_id))
    report = {"expid": expid, "raw": str(raw_path), "status": status, "flags": exp.flags,
              **{k: _plain(v) for k, v in exp.metrics.items()}, "timings": timings}
    for key, name, comment in _KEYWORDS:
        if report.get(key) is not None:
            exp.frame.primary[name] = (float(report[key]), comment)
    if out_dir is not None:
        from .quality.thumbnail import write_thumbnail

        out_dir = Path(out_dir)
        report["reduced"] = str(exp.frame.write(out_dir / f"{expid}.fits"))
        if exp.thumbnail is not None:
            report.update(write_thumbnail(exp.thumbnail, out_dir, expid))
        (out_dir / f"{expid}.json").write_text(json.dumps(report, indent=1))
    return exp, report


def warm_up(cfg: Settings) -> float:
    """Load what the front half and detection use on their first frame (the numba kernels from
    their disk cache, sep, astroscrappy or, with a GPU reduction backend, the CuPy L.A.Cosmic's
    kernels, the cloud model; with a GPU detection backend the matched filter for every PSF width
    the subtraction matches) on a small synthetic frame, so that the first exposure after a
    worker starts is not slower than the next; returns the seconds taken."""
    import tempfile

    from astropy.io import fits

    from .detection import detect
    from .image import Frame
    from .quality import thumbnail
    from .quality.assess import cloud_probability
    from .reduction import reduce_raw
    from .sources import clean_star_list, extract
    from .subtraction import Difference, use_gpu

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    ny, nx = 256, 300
    yy, xx = np.mgrid[:ny, :nx]
    sky = rng.normal(600.0, 15.0, (ny, nx))
    for x, y in rng.uniform(20, 230, (30, 2)):
        sky += 20000.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 4.0)
    header = fits.Header({"TRIMSEC": f"[1:{nx - 16},1:{ny}]", "BIASSEC": f"[{nx - 12}:{nx},1:{ny}]", "GAIN": 1.0,
                          "RDNOISE": 2.5, "SATURATE": 60000.0, "EXPTIME": cfg.detector.exptime})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warm.fits"
        fits.PrimaryHDU(np.clip(sky, 0, 65535).astype(np.uint16), header).writeto(path)
        frame = reduce_raw(path, None, cfg.reduction, cfg.detector)
    clean_star_list(extract(frame, cfg.sources), cfg.sources)
    cloud_probability(thumbnail(frame, cfg.quality.thumbnail_size), None)
    diff = Difference(frame.data - np.median(frame.data), np.full(frame.shape, 15.0, np.float32), frame.mask,
                      fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CDELT1": -1e-4, "CDELT2": 1e-4}),
                      {"psf_fwhm": 3.0})
    detect(diff, frame, Frame(frame.data, frame.mask), 3.0, 25.0, cfg.detection, lane="dip")
    if use_gpu(cfg.detection.backend):
        from .detection.footprints import warm_matched_filter
        from .subtraction.subtract import largest_psf_fwhm

        warm_matched_filter(largest_psf_fwhm(cfg.subtraction))
    return time.perf_counter() - t0


def _plain(v):
    v = float(v)
    return v if np.isfinite(v) else None


def _cmd_reduce(args) -> int:
    from .catalogs.refcat import RefCat
    from .reduction import Calibration

    cfg = Settings.load(getattr(args, "config", None))
    calib = None
    if args.calib:
        d = Path(args.calib)
        if (d / Calibration.FILES["bias"]).exists():
            calib = Calibration.load(d)
        else:
            calib = Calibration.build(sorted(d.glob("bias_*.fits")), sorted(d.glob("flat_*.fits")), cfg.reduction,
                                      cfg.detector)
    refcat = RefCat.from_file(args.refcat) if args.refcat else None
    _, report = reduce_file(args.raw, cfg, calibration=calib, refcat=refcat, out_dir=args.out or ".")
    print(json.dumps({k: report.get(k) for k in ("expid", "status", "fwhm_px", "n_stars", "rms_arcsec",
                                                  "zp", "zp_err", "maglim", "pcc", "flags")}))
    return 0 if report["status"] == "ok" else 2


def add_cli(subparsers) -> None:
    """Register ``reduce RAW.fits --calib DIR --refcat FILE --out DIR``."""
    p = subparsers.add_parser("reduce", help="reduce and calibrate one raw frame (FITS + JSON report)")
    p.add_argument("raw", help="raw FITS file")
    p.add_argument("--calib", help="directory with master_*.fits, or bias_*.fits and flat_*.fits to combine")
    p.add_argument("--refcat", help="reference catalogue (FITS/CSV/ECSV)")
    p.add_argument("--out", help="output directory (default: current)")
    p.add_argument("--config", help="TOML settings file")
    p.set_defaults(func=_cmd_reduce)

"""One raw exposure through reduction, sources, astrometry, photometry and quality, on files.

``process_single`` returns the reduced frame (WCS, ``SRC`` table with calibrated magnitudes and
the quality keywords in its headers) and a JSON-able report: ``fwhm_px``, ``n_sources``,
``n_stars``, ``rms_arcsec``, ``n_astrom``, ``zp``, ``zp_err``, ``maglim``, ``pcc``, ``flags``,
``status`` and per-step seconds in ``timings``. A failed astrometric solution is a status
(``bad_wcs``), not an exception; a frame that cannot be read raises
:class:`~ast3stream.reduction.BadFrameError`.

CLI: ``ast3stream reduce RAW.fits --calib DIR --refcat FILE --out DIR``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .astrometry import AstrometryError, apply_wcs, solve
from .catalogs.refcat import RefCat, as_refcat
from .config import Settings
from .image import Frame
from .photometry import calibrate
from .quality import assess
from .reduction import Calibration, reduce_raw
from .sources import clean_star_list, extract, image_fwhm


def _clean(v):
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def process_single(raw_path, cfg: Settings, calib: Calibration | None = None, refcat=None,
                   out_dir=None) -> tuple[Frame, dict]:
    """Reduce and calibrate one exposure; write ``<EXPID>.fits`` and ``<EXPID>.json`` to ``out_dir``."""
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    frame = reduce_raw(raw_path, calib, cfg, timings)
    expid = str(frame.primary.get("EXPID", Path(raw_path).name.split(".")[0]))
    report: dict = {"expid": expid, "raw": str(raw_path), "flags": [], "status": "ok"}

    t0 = time.perf_counter()
    sources = extract(frame, cfg)
    stars = clean_star_list(sources, cfg)
    report.update(n_sources=len(sources), n_stars=len(stars), fwhm_px=image_fwhm(stars))
    timings["sources"] = time.perf_counter() - t0

    if refcat is None and cfg.refcat_path.exists():
        refcat = RefCat.from_file(cfg.refcat_path)
    stats: dict = {}
    if refcat is None:
        report["status"] = "no_refcat"
        report["flags"].append("bad_wcs")
    else:
        refcat = as_refcat(refcat)
        t0 = time.perf_counter()
        try:
            wcs, astro = solve(frame, stars, refcat, cfg)
            apply_wcs(frame, wcs)
            stats.update(astro)
            report.update(rms_arcsec=astro["rms_arcsec"], n_astrom=astro["n_matched"], astrometry=astro)
        except AstrometryError as exc:
            report["status"] = f"bad_wcs: {exc}"
            report["flags"].append("bad_wcs")
        timings["astrometry"] = time.perf_counter() - t0
        if "rms_arcsec" in stats:
            t0 = time.perf_counter()
            try:
                sources, phot = calibrate(frame, sources, refcat, cfg)
                stats.update(phot)
                report.update({k: phot[k] for k in ("zp", "zp_err", "maglim", "n_zp", "aperture_px", "apcor",
                                                     "maglim_aperture", "zp_rms", "residual_coeffs")})
            except ValueError as exc:
                report["status"] = f"no_zeropoint: {exc}"
            timings["photometry"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    quality = assess(frame, sources, refcat, stats, cfg, thumbnail_dir=out_dir)
    report["flags"] = sorted(set(report["flags"]) | set(quality["flags"]))
    report.update({k: v for k, v in quality.items() if k != "flags"})
    timings["quality"] = time.perf_counter() - t0

    hdr = frame.primary
    for key, name, comment in (("fwhm_px", "FWHM", "[px] median FWHM of the clean stars"),
                               ("n_stars", "NSTARS", "clean stars"),
                               ("rms_arcsec", "ASTRRMS", "[arcsec] astrometric rms vs reference"),
                               ("n_astrom", "ASTRNUM", "stars in the astrometric fit"),
                               ("zp", "MAGZP", "zero point: mag of 1 e- in the exposure"),
                               ("zp_err", "MAGZPERR", "zero-point error"),
                               ("maglim", "MAGLIM", "5-sigma point-source limit"),
                               ("aperture_px", "APERDIAM", "[px] photometric aperture diameter (eq. 1)")):
        value = report.get(key)
        if value is not None and np.isfinite(value):
            hdr[name] = (float(value), comment)
    frame.sources = sources
    timings["total"] = time.perf_counter() - t_all
    report["timings"] = timings
    report = _clean(report)
    if out_dir is not None:
        out_dir = Path(out_dir)
        t0 = time.perf_counter()
        report["reduced"] = str(frame.write(out_dir / f"{expid}.fits"))
        report["timings"]["write"] = time.perf_counter() - t0
        (out_dir / f"{expid}.json").write_text(json.dumps(report, indent=1))
    return frame, report


def _cmd_reduce(args) -> int:
    cfg = Settings.load(getattr(args, "config", None))
    calib = None
    if args.calib:
        d = Path(args.calib)
        if (d / Calibration.FILES["bias"]).exists():
            calib = Calibration.load(d)
        else:
            calib = Calibration.build(sorted(d.glob("bias_*.fits")), sorted(d.glob("flat_*.fits")), cfg)
    refcat = RefCat.from_file(args.refcat) if args.refcat else None
    _, report = process_single(args.raw, cfg, calib, refcat, args.out or ".")
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

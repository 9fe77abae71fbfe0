"""Real/bogus training stamps from any site's real images: PSF fakes through the real pipeline.

``ast3stream classify build-set --from-images DIR...``. The FITS images below each ``DIR`` with a
celestial WCS (not difference, kernel or weight maps) are grouped into fields (image centres within
half an image width); a field's first image in time is its template, every other one a science
frame. Pixels become electrons (``GAIN``); non-finite pixels and those above 90 % of ``SATURATE``
/ ``SATURATN`` are masked. Per science frame:

* the PSF is the frame's own: the median of sub-pixel-centred cutouts of its bright isolated stars
  (:func:`.pipeline_set.empirical_psf`), FWHM from the sep moments of those stars;
* ``per_frame`` fakes go on free sky (:func:`ast3stream.detection.injection.free_area`), with PSF-fit
  SNR log-uniform in ``snr_range`` on that frame's noise, i.e. at magnitudes relative to the frame's
  own limit (SNR 5 = the 5-sigma limit; SNR 100 = 4.3 mag brighter), with photon noise;
* the frame then runs through the project's alignment, subtraction and detection exactly as a
  pipeline lane does; candidates within 1.5 px (DIP) of a fake are positives, all other
  candidates are the real subtraction's bogus, except those within ``exclude_arcsec`` of
  ``exclude_radec`` (known variables, catalogued transients, asteroids of the night).

Stamps are model inputs (:func:`ast3stream.classify.stamps.pipeline_stamps`) with the difference's
PSF FWHM; ``group`` is the field and night (splits are by field/night, never by stamp).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..image import Frame
from .pipeline_set import empirical_psf, inject, label_candidates
from .stamps import pipeline_stamps

IMAGE_KINDS = ("injected", "bogus")
SKIP_NAMES = ("difference", "kernel", "wht", "weight", "mask", "rms", "_ood_", "_oow_")


def _load(path: Path) -> tuple[Frame, float, str] | None:
    from astropy.io import fits
    from astropy.time import Time
    from astropy.wcs import WCS, FITSFixedWarning

    from ..image import MaskBits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        with fits.open(path) as hdul:
            hdu = next((h for h in hdul if h.data is not None and h.data.ndim == 2), None)
            if hdu is None or not WCS(hdu.header).has_celestial:
                return None
            header = hdu.header.copy()
            for key in ("GAIN", "SATURATE", "SATURATN", "DATE-OBS", "MJD-OBS"):
                if key not in header and key in hdul[0].header:
                    header[key] = hdul[0].header[key]
            data = np.asarray(hdu.data, np.float32)
    gain = float(header.get("GAIN", 1.0) or 1.0)
    sat = header.get("SATURATE", header.get("SATURATN"))
    mask = np.zeros(data.shape, np.uint16)
    mask[~np.isfinite(data)] |= np.uint16(MaskBits.BAD)
    if sat:
        mask[np.nan_to_num(data) >= 0.9 * float(sat)] |= np.uint16(MaskBits.SATURATED)
    data = np.nan_to_num(data) * np.float32(gain)
    header["GAIN"] = 1.0
    if sat:
        header["SATURATE"] = float(sat) * gain
    mjd = float(header["MJD-OBS"]) if "MJD-OBS" in header else \
        float(Time(header["DATE-OBS"]).mjd) if "DATE-OBS" in header else 0.0
    return Frame(data, mask, header), mjd, path.name


def image_fields(dirs, log=print) -> list[list[tuple[Frame, float, str]]]:
    """Images below ``dirs`` grouped by field, each group in time order (module docstring)."""
    frames = []
    for d in dirs:
        d = Path(d)
        paths = sorted(d.rglob("*.fit*")) if d.is_dir() else [d]
        for p in paths:
            if any(s in p.name.lower() for s in SKIP_NAMES):
                continue
            f = _load(p)
            if f is not None:
                frames.append(f)
    fields: list[list] = []
    for f in sorted(frames, key=lambda t: t[1]):
        ny, nx = f[0].shape
        c = f[0].wcs.pixel_to_world_values(nx / 2, ny / 2)
        for g in fields:
            x, y = g[0][0].wcs.world_to_pixel_values(*c)
            gy, gx = g[0][0].shape
            if abs(x - gx / 2) < gx / 2 and abs(y - gy / 2) < gy / 2 and g[0][0].shape == f[0].shape:
                g.append(f)
                break
        else:
            fields.append([f])
    log(f"{len(frames)} images in {len(fields)} fields: " + ", ".join(f"{g[0][2]} (+{len(g) - 1})" for g in fields))
    return [g for g in fields if len(g) > 1]


def frame_fwhm(frame: Frame) -> float:
    """Median sep FWHM of the frame's bright, unflagged, roundish stars [px]."""
    import sep

    img = np.ascontiguousarray(frame.data, np.float32)
    bkg = sep.Background(img, mask=frame.mask != 0)
    objs = sep.extract(img - bkg.back(), 10.0, err=bkg.globalrms, mask=frame.mask != 0, minarea=5)
    objs = objs[(objs["flag"] == 0) & (objs["b"] / np.maximum(objs["a"], 1e-3) > 0.7)]
    if len(objs) < 5:
        raise ValueError(f"only {len(objs)} stars to measure the FWHM")
    return float(np.median(2.3548 * np.sqrt((objs["a"] ** 2 + objs["b"] ** 2) / 2)))


def frame_stamps(science: Frame, template: Frame, cfg, rng: np.random.Generator, per_frame: int = 60,
                 snr_range=(4.0, 100.0), exclude_radec=(), exclude_arcsec: float = 5.0) -> dict[str, np.ndarray]:
    """Fakes into one real science frame, then the pipeline's own align/subtract/detect (DIP)."""
    from ..alignment import align
    from ..detection import detect
    from ..detection.injection import free_area, random_sites
    from ..subtraction import subtract

    fwhm = frame_fwhm(science)
    sat = float(science.header.get("SATURATE", science.header.get("SATURATN", 1e30)) or 1e30)
    psf = empirical_psf(science.data, science.mask, fwhm, sat, half=int(np.ceil(3 * fwhm)), isolation=1.5,
                        thresh=8.0)
    edge = cfg.detection.edge_px + cfg.detection.stamp_dip // 2 + 2
    free = free_area(science, fwhm, edge)
    x, y = random_sites(free, per_frame, 5 * fwhm, rng)
    # PSF-fit SNR q on this frame's noise: q = F / sqrt(sigma^2 NEA + F), NEA = 4 pi (FWHM / 2.3548)^2
    import sep

    bkg = sep.Background(np.ascontiguousarray(science.data, np.float32), mask=science.mask != 0)
    snr = np.exp(rng.uniform(*np.log(snr_range), len(x)))
    var_nea = float(bkg.globalrms) ** 2 * 4 * np.pi * (fwhm / 2.3548) ** 2
    flux = (snr**2 + np.sqrt(snr**4 + 4 * snr**2 * var_nea)) / 2
    injected = inject(science, x, y, flux, psf, rng)
    aligned = align(injected, template, cfg)
    diff = subtract(aligned, template, cfg)
    dfwhm = float(diff.stats.get("psf_fwhm", fwhm))
    cands, stamps = detect(diff, aligned, template, dfwhm, 25.0, cfg.detection, lane="dip")
    from astropy.wcs import WCS

    w = WCS(diff.header)
    ra, dec = science.wcs.all_pix2world(x, y, 0)
    inj = np.column_stack(w.all_world2pix(ra, dec, 0))
    labels, kinds = label_candidates(cands, inj, {}, match_px=1.5)
    keep = labels >= 0
    if len(exclude_radec) and len(cands):
        from astropy.coordinates import SkyCoord

        known = SkyCoord(*np.asarray(exclude_radec, float).T, unit="deg")
        sep_ = SkyCoord(cands["ra"], cands["dec"], unit="deg").match_to_catalog_sky(known)[1]
        keep &= ~((labels == 0) & (sep_.arcsec < exclude_arcsec))
    sign = np.asarray(cands["sign"])[keep] > 0
    x_in = pipeline_stamps(stamps[keep], dfwhm, sign) if keep.any() else np.zeros((0, 4, 32, 32), np.float32)
    # true SNR of each recovered fake, for "fraction of SNR >= 8 fakes recovered and scored real"
    return dict(stamps=x_in, label=labels[keep].astype(np.int8), kind=np.where(kinds[keep] == 0, 0, 1).astype(np.int8),
                snr=np.asarray(cands["snr"], np.float32)[keep], n_injected=len(x),
                n_recovered=int((kinds == 0).sum()), injected_snr=snr.astype(np.float32), fwhm=fwhm)


def _frame_job(job):
    gi, field_name, template, frame, mjd, name, cfg, seed, per_frame, exclude_radec = job
    try:
        res = frame_stamps(frame, template, cfg, np.random.default_rng(seed), per_frame, exclude_radec=exclude_radec)
    except (ValueError, RuntimeError, np.linalg.LinAlgError) as e:
        return None, f"skip {name}: {e}"
    res["group"] = np.full(len(res["label"]), gi, np.int16)
    prov = dict(field=field_name, frame=name, mjd=mjd, fwhm=res["fwhm"], n_injected=res["n_injected"],
                n_recovered=res["n_recovered"], n_bogus=int((res["label"] == 0).sum()))
    return res, (f"{field_name} <- {name}: fwhm {res['fwhm']:.2f} px, {res['n_recovered']}/{res['n_injected']} "
                 f"fakes recovered, {prov['n_bogus']} bogus"), prov


def build_from_images(dirs, cfg=None, per_frame: int = 60, seed: int = 0, exclude_radec=(),
                      max_frames: int | None = None, workers: int = 1, log=print) -> tuple[dict[str, np.ndarray], dict]:
    """Stamps of every science frame of every field below ``dirs``; ``group`` = index of the
    frame's (field, night) in ``groups`` of the provenance (held-out splits are by field and night).
    Frame ``i`` uses the random seed ``seed * 1000 + i`` whatever ``workers``."""
    from concurrent.futures import ProcessPoolExecutor

    from ..config import Settings

    cfg = cfg or Settings(subtraction=dict(backend="numpy"))
    jobs = [(gi, field[0][2], field[0][0], frame, mjd, name, cfg, 0, per_frame, tuple(map(tuple, exclude_radec)))
            for gi, field in enumerate(image_fields(dirs, log))
            for frame, mjd, name in field[1:max_frames and max_frames + 1]]
    jobs = [j[:7] + (seed * 1000 + i,) + j[8:] for i, j in enumerate(jobs)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_frame_job, jobs))
    else:
        results = map(_frame_job, jobs)
    parts, prov = [], []
    for out in results:
        log(out[1])
        if out[0] is not None:
            parts.append(out[0])
            prov.append(out[2])
    if not parts:
        raise ValueError(f"no usable image pairs below {', '.join(map(str, dirs))}")
    nights = sorted({(p["field"], int(np.floor(p["mjd"]))) for p in prov})
    for part, p in zip(parts, prov):
        part["group"][:] = nights.index((p["field"], int(np.floor(p["mjd"]))))
    data = {k: np.concatenate([p[k] for p in parts]) for k in ("stamps", "label", "kind", "snr", "group")}
    return data, dict(kinds=list(IMAGE_KINDS), frames=prov, per_frame=per_frame, seed=seed,
                      groups=[f"{field} night {night}" for field, night in nights])

"""Real/bogus stamps from the pipeline itself: simulated night -> reduction -> alignment -> SFFT -> detection.

Positives are PSF-model injections: ``per_pair`` point sources (g = 17.0–19.5 mag through the
frame's zero point, Poisson noise added) are placed in each calibrated science frame, well apart
and off catalogued sources, with the frame's own empirical PSF (a sub-pixel-registered median
stack of bright isolated stars). The injected frame then goes through the lane's own path
(QIP: 3x3 binning) — alignment onto the field's template (its first exposure), subtraction and
detection — and every candidate within ``match_px`` of an injection is a positive. The
simulator's own transients and asteroids found the same way are positives too. All other
candidates are the subtraction's bogus detections (alignment and PSF-matching residuals,
cosmic rays, hot pixels, saturated stars, trails). Stamps are model inputs (:mod:`.stamps`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.wcs import WCS
from scipy.ndimage import shift as nd_shift
from scipy.spatial import cKDTree

from ..image import Frame
from .stamps import pipeline_stamps

PIPELINE_KINDS = ("injected", "transient", "asteroid", "bogus")


def empirical_psf(data: np.ndarray, mask: np.ndarray, fwhm: float, saturation: float,
                  half: int | None = None, max_stars: int = 100, isolation: float = 3.0,
                  thresh: float = 20.0) -> np.ndarray:
    """Unit-sum PSF: median of sub-pixel-centred cutouts of bright, unsaturated stars with no
    neighbour within ``isolation`` x ``half`` px, detected at ``thresh`` sigma."""
    import sep

    half = half or int(np.ceil(4 * fwhm))
    img = np.ascontiguousarray(data, np.float32)
    bkg = sep.Background(img, mask=mask != 0)
    sub = img - bkg.back()
    objs = sep.extract(sub, thresh, err=bkg.globalrms, mask=mask != 0, minarea=5)
    ny, nx = img.shape
    x, y = objs["x"], objs["y"]
    near = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=2)[0][:, 1] if len(objs) > 1 else np.full(len(objs), np.inf)
    ok = ((objs["flag"] == 0) & (objs["peak"] + bkg.globalback < 0.5 * saturation) & (near > isolation * half)
          & (x > half + 2) & (x < nx - half - 3) & (y > half + 2) & (y < ny - half - 3))
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(objs["flux"][idx])[::-1][:max_stars]]
    if len(idx) < 5:
        raise ValueError(f"only {len(idx)} PSF stars")
    stack = []
    for i in idx:
        ix, iy = int(round(x[i])), int(round(y[i]))
        cut = sub[iy - half:iy + half + 1, ix - half:ix + half + 1]
        if mask[iy - half:iy + half + 1, ix - half:ix + half + 1].any():
            continue
        cut = nd_shift(cut, (iy - y[i], ix - x[i]), order=3, mode="nearest")
        stack.append(cut / cut.sum())
    psf = np.clip(np.median(stack, axis=0), 0, None)
    return (psf / psf.sum()).astype(np.float32)


def inject(frame: Frame, x: np.ndarray, y: np.ndarray, flux: np.ndarray, psf: np.ndarray,
           rng: np.random.Generator) -> Frame:
    """Copy of ``frame`` with ``flux`` [e-] point sources at (x, y): PSF shifted by spline, plus Poisson noise."""
    data = frame.data.astype(np.float32, copy=True)
    half = psf.shape[0] // 2
    for xi, yi, f in zip(x, y, flux):
        ix, iy = int(round(xi)), int(round(yi))
        model = f * np.clip(nd_shift(psf, (yi - iy, xi - ix), order=3, mode="constant"), 0, None)
        model = rng.poisson(model).astype(np.float32)        # source photon noise
        data[iy - half:iy + half + 1, ix - half:ix + half + 1] += model
    return Frame(data, frame.mask, frame.header.copy(), frame.primary.copy(), frame.sources)


def place(frame: Frame, n: int, margin: int, min_sep: float, avoid_r: float,
          rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` positions (x, y): ``margin`` from the edges, ``min_sep`` apart, ``avoid_r`` off sources and masks."""
    ny, nx = frame.shape
    src = frame.sources
    tree = cKDTree(np.c_[src["x"], src["y"]]) if src is not None and len(src) else None
    pts: list[tuple[float, float]] = []
    for _ in range(50 * n):
        if len(pts) >= n:
            break
        px, py = rng.uniform(margin, nx - margin), rng.uniform(margin, ny - margin)
        if tree is not None and tree.query([px, py])[0] < avoid_r:
            continue
        if pts and np.min(np.hypot(*(np.array(pts) - (px, py)).T)) < min_sep:
            continue
        r = int(np.ceil(avoid_r / 2))
        if frame.mask[int(py) - r:int(py) + r + 1, int(px) - r:int(px) + r + 1].any():
            continue
        pts.append((px, py))
    return np.array(pts).reshape(-1, 2)


def label_candidates(cands, injected_xy: np.ndarray, truth_xy: dict[str, np.ndarray], match_px: float):
    """(label, kind index) per candidate; -1 label = ambiguous (a negative detection of a real source)."""
    labels = np.zeros(len(cands), np.int8)
    kinds = np.full(len(cands), PIPELINE_KINDS.index("bogus"), np.int8)
    xy = np.c_[cands["x"], cands["y"]]
    pos = np.asarray(cands["sign"]) > 0
    for name, ref in [("injected", injected_xy)] + list(truth_xy.items()):
        if len(ref) == 0 or len(xy) == 0:
            continue
        d = cKDTree(ref).query(xy)[0]
        hit = (d < match_px) & (kinds == PIPELINE_KINDS.index("bogus"))
        labels[hit & pos] = 1
        labels[hit & ~pos] = -1
        kinds[hit] = PIPELINE_KINDS.index(name)
    return labels, kinds


def pair_stamps(science: Frame, s_report: dict, template: Frame, t_truth, cfg, lanes, rng,
                per_pair: int = 150, mag_range=(17.0, 19.5)) -> dict[str, dict[str, np.ndarray]]:
    """Inject into one calibrated science frame and run each lane; stamps, labels, kinds, SNR per lane."""
    from ..alignment import align
    from ..detection import detect
    from ..subtraction import subtract
    from ..templates import bin_frame

    fwhm, zp = float(s_report["fwhm_px"]), float(s_report["zp"])
    psf = empirical_psf(science.data, science.mask, fwhm, cfg.detector.saturation * cfg.detector.gain)
    margin = cfg.detection.edge_px + cfg.detection.stamp_dip // 2 + 2
    xy = place(science, per_pair, margin, min_sep=12 * fwhm, avoid_r=3 * fwhm, rng=rng)
    mags = rng.uniform(*mag_range, len(xy))
    injected = inject(science, xy[:, 0], xy[:, 1], 10 ** (-0.4 * (mags - zp)), psf, rng)
    radec = science.wcs.all_pix2world(xy[:, 0], xy[:, 1], 0)
    out = {}
    for lane in lanes:
        n = cfg.detector.qip_binning if lane == "qip" else 1
        tmpl = bin_frame(template, n) if n > 1 else template
        aligned = align(injected, tmpl, cfg, binning=n)  # as the pipeline: align, then bin
        diff = subtract(aligned, tmpl, cfg)
        cands, stamps = detect(diff, aligned, tmpl, fwhm / n, zp, cfg.detection, lane=lane, binning=n)
        w = WCS(diff.header)
        inj = np.column_stack(w.all_world2pix(*radec, 0))
        truth = {k: np.column_stack(w.all_world2pix(t_truth["ra"][t_truth["kind"] == k],
                                          t_truth["dec"][t_truth["kind"] == k], 0))
                 for k in ("transient", "asteroid")}
        labels, kinds = label_candidates(cands, inj, truth, match_px=2.0 / n ** 0.5)
        keep = labels >= 0
        x = pipeline_stamps(stamps[keep], float(diff.stats.get("psf_fwhm", fwhm / n)), np.asarray(cands["sign"])[keep] > 0)
        out[lane] = dict(stamps=x, label=labels[keep], kind=kinds[keep],
                         snr=np.asarray(cands["snr"], np.float32)[keep],
                         n_injected=len(xy), n_recovered=int((kinds == 0).sum()))
    return out


def build_from_pipeline(lanes, sim_dir: str | Path, n_real: int = 10_000, n_bogus: int = 10_000,
                        seed: int = 0, cfg=None, n_exposures: int = 8, n_fields: int = 2, scale: float = 0.1,
                        per_pair: int = 150, log=print) -> dict[str, tuple[dict[str, np.ndarray], dict]]:
    """Simulate (or reuse) a night in ``sim_dir`` and collect stamps until the counts or the pairs run out.

    Returns ``{lane: (arrays, provenance)}`` for :func:`ast3stream.classify.dataset.save_dataset`
    (``kinds=PIPELINE_KINDS``). The field's first exposure is its template.
    """
    from ..catalogs.refcat import RefCat
    from ..config import Settings
    from ..reduction import Calibration
    from ..simulate import Night, simulate_night
    from ..front import reduce_file

    sim_dir = Path(sim_dir)
    cfg = cfg or Settings.load(None, paths={"data_dir": str(sim_dir)})
    if (sim_dir / "truth" / "night.json").exists():
        night = Night.load(sim_dir)
    else:
        night = simulate_night(sim_dir, n_exposures=n_exposures, scale=scale, seed=seed, cfg=cfg, n_fields=n_fields)
    cal = Calibration.build(sorted((sim_dir / "calib").glob("bias_*.fits")),
                            sorted((sim_dir / "calib").glob("flat_*.fits")), cfg.reduction, cfg.detector)
    refcat = RefCat.from_file(sim_dir / "refcat.fits")
    table = night.table
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {lane: [] for lane in lanes}
    templates: dict = {}
    pairs = []
    for row in table:
        raw = Path(row["path"])
        exp, report = reduce_file(raw if raw.is_absolute() else sim_dir / raw, cfg, calibration=cal, refcat=refcat)
        frame = exp.frame
        if report.get("zp") is None or "bad_wcs" in report["flags"]:
            log(f"skip {row['expid']}: {report['status']}")
            continue
        if row["field_id"] not in templates:
            templates[row["field_id"]] = frame
            continue
        res = pair_stamps(frame, report, templates[row["field_id"]], night.truth(row["expid"]), cfg, lanes, rng,
                          per_pair)
        pairs.append(row["expid"])
        for lane in lanes:
            parts[lane].append(res[lane])
            log(f"{row['expid']} {lane}: {len(res[lane]['label'])} candidates, "
                f"{res[lane]['n_recovered']}/{res[lane]['n_injected']} injections recovered")
        if all(sum(int((p["label"] == 1).sum()) for p in parts[ln]) >= n_real
               and sum(int((p["label"] == 0).sum()) for p in parts[ln]) >= n_bogus for ln in lanes):
            break
    out = {}
    for lane in lanes:
        data = {k: np.concatenate([p[k] for p in parts[lane]]) for k in ("stamps", "label", "kind", "snr")}
        real, bogus = np.flatnonzero(data["label"] == 1)[:n_real], np.flatnonzero(data["label"] == 0)[:n_bogus]
        sel = np.sort(np.r_[real, bogus])
        data = {k: v[sel] for k, v in data.items()}
        out[lane] = (data, dict(kinds=list(PIPELINE_KINDS), sim_dir=str(sim_dir), seed=seed, pairs=pairs,
                                per_pair=per_pair, scale=night.scale,
                                n_injected=int(sum(p["n_injected"] for p in parts[lane])),
                                n_recovered=int(sum(p["n_recovered"] for p in parts[lane]))))
    return out

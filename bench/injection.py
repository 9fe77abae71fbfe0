"""Injection-recovery on a simulated night: detection efficiency, completeness, photometric bias
and bogus detections of the DIP and QIP lanes.

    python -m bench.injection [--scale 0.1] [--fields 2] [--visits 3] [--n-inject 250] [--out DIR]

1. A night is simulated (:func:`ast3stream.simulate.simulate_night`) and every exposure runs the
   single-frame stages (:func:`ast3stream.front.reduce_file`): calibrated frame, ``zp``,
   ``maglim`` (the frame's 5-sigma PSF limit), ``fwhm_px``.
2. Each field's first visit is its template (full resolution for DIP, 3x3 binned for QIP).
3. Into every later visit ``--n-inject`` point sources of the frame's own PSF model
   (:mod:`ast3stream.detection.injection`), uniform in ``maglim - 3 ... maglim + 1``, are
   added before alignment, away from the edges and from existing sources; each lane then
   aligns, subtracts, detects, and detections are matched to injections (1.5 px DIP, 1 px QIP).
   Injections that land on masked pixels of the difference (which detection rejects) are
   counted but left out of the efficiencies, which so refer to the unmasked area.
4. Printed per lane: efficiency vs ``m - maglim`` (and fitted vs the difference image's limit);
   per frame the 50 % completeness magnitude ``m50`` (logistic fit) against the science frame's
   ``maglim``, against the lane frame's own limit (QIP: ``maglim`` less the PSF-fit SNR that 3x3 binning
   loses, :func:`binning_loss`) and against the difference image's own 5-sigma limit; recovered - injected magnitude (median, robust scatter, median error,
   median pull) per bin; bogus detections per frame = detections matching neither an
   injection nor a simulator truth transient / asteroid (of the science or template epoch).
   Written: ``injection.json`` and ``efficiency.png`` in ``--out``.

``python -m bench.injection --real SCI TPL [TPL ...]`` does it on real frames instead
(:func:`run_real`): fakes of the science frame's own PSF against the first template and against the
stack of all of them; written: ``injection_real.json``. ``--stack`` compares, on one simulated
field, the last visit's completeness against its first visit and against the stack of all the
earlier ones (:func:`run_stack`; ``injection_stack.json``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from ast3stream.catalogs.refcat import RefCat
from ast3stream.config import Settings
from ast3stream.detection.injection import (completeness_fit, efficiency, frame_psf, free_area, random_sites,
                                            recover)
from ast3stream.rawfile import detector_from_header
from ast3stream.reduction import Calibration
from ast3stream.simulate import simulate_night
from ast3stream.front import reduce_file
from ast3stream.detection.photometry import gaussian_psf
from ast3stream.templates import bin_array, bin_frame

RADIUS = {"dip": 1.5, "qip": 1.0}
EDGES = np.arange(-3.0, 1.01, 0.25)


def injection_sites(science, template, fwhm: float, n: int, margin: int, rng):
    """Random free science pixels that land at least ``margin`` px inside the template."""
    free = free_area(science, fwhm, margin)
    x, y = random_sites(free, 3 * n, 6 * fwhm, rng)
    xt, yt = template.wcs.all_world2pix(*science.wcs.all_pix2world(x, y, 0), 0)
    ny, nx = template.shape
    inside = (xt >= margin) & (xt < nx - margin) & (yt >= margin) & (yt < ny - margin)
    return x[inside][:n], y[inside][:n]


def known_sources(night, expids, template) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template pixels and match radii of the truth transients and asteroids of ``expids``."""
    xs, ys, rs = [], [], []
    for expid in expids:
        t = night.truth(expid)
        t = t[np.isin(t["kind"], ["transient", "asteroid"])]
        if len(t):
            x, y = template.wcs.all_world2pix(np.asarray(t["ra"]), np.asarray(t["dec"]), 0)
            xs.append(x), ys.append(y), rs.append(3.0 + np.nan_to_num(np.asarray(t["trail_len"], float)) / 2)
    if not xs:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(rs)


def bogus(cands, inj, known, n_bin: int) -> np.ndarray:
    """Candidates (either sign) matching no injection and no known transient or asteroid."""
    x, y = np.asarray(cands["x"]), np.asarray(cands["y"])
    ok = np.zeros(len(cands), bool)
    ok[np.asarray(inj["cand"])[np.asarray(inj["found"])]] = True
    kx, ky, kr = known
    if len(kx):
        ok |= np.any(np.hypot(x[:, None] - kx / n_bin, y[:, None] - ky / n_bin) <= kr / n_bin, axis=1)
    return ~ok


def binning_loss(fwhm: float, n: int, n_phase: int = 200, seed: int = 0) -> float:
    """Magnitudes of PSF-fit depth lost by ``n x n`` binning (sky-limited): ``-2.5 log10`` of the
    phase-averaged ratio of optimal SNRs, binned over full resolution, for a Gaussian of ``fwhm`` px."""
    if n == 1:
        return 0.0
    rng = np.random.default_rng(seed)
    r = 5 * n * int(np.ceil(fwhm))
    ratio = []
    for dx, dy in rng.uniform(-0.5, 0.5, (n_phase, 2)):
        p = gaussian_psf(dx, dy, fwhm, r)
        ratio.append(np.sqrt((bin_array(p, n) ** 2).sum() / n ** 2 / (p ** 2).sum()))
    return float(-2.5 * np.log10(np.mean(ratio)))


def bias_table(inj: Table, edges) -> Table:
    """Per bin of ``m - maglim``: median and robust scatter of ``mag_rec - mag``, median error and pull."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        s = inj[(inj["dm_lim"] >= lo) & (inj["dm_lim"] < hi) & inj["found"]]
        if len(s) < 3:
            continue
        dm = np.asarray(s["mag_rec"] - s["mag"])
        pull = np.asarray((s["flux_rec"] - s["flux"]) / s["flux_err"])
        med = np.median(dm)
        rows.append(dict(dm_lim=(lo + hi) / 2, n=len(s), bias=med, scatter=1.4826 * np.median(np.abs(dm - med)),
                         mag_err=np.median(2.5 / np.log(10) * s["flux_err"] / s["flux_rec"]),
                         pull_median=np.median(pull), pull_rstd=1.4826 * np.median(np.abs(pull - np.median(pull)))))
    return Table(rows=rows)


def run(args) -> dict:
    out = Path(args.out)
    t0 = time.time()
    night = simulate_night(out / "sim", n_exposures=args.fields * args.visits, scale=args.scale, seed=args.seed,
                           n_fields=args.fields)
    cfg = Settings(subtraction=dict(kernel_half_width=args.kernel_half_width, backend=args.backend))
    cfg.detector = detector_from_header(night.exposures[0].path, cfg.detector)
    calib = Calibration.build(sorted((out / "sim" / "calib").glob("bias_*.fits")),
                              sorted((out / "sim" / "calib").glob("flat_*.fits")), cfg.reduction, cfg.detector)
    refcat = RefCat.from_file(out / "sim" / "refcat.fits")
    print(f"simulated {len(night.exposures)} exposures at scale {args.scale} in {time.time() - t0:.0f} s")
    rng = np.random.default_rng(args.seed)
    templates, injected, per_frame = {}, [], []
    for e in night.exposures:
        exp, rep = reduce_file(e.path, cfg, calibration=calib, refcat=refcat)
        frame = exp.frame
        if e.field_id not in templates:
            templates[e.field_id] = (e.expid, {"dip": frame, "qip": bin_frame(frame, cfg.detector.qip_binning)})
            continue
        tpl_id, tpl = templates[e.field_id]
        zp, maglim, fwhm = rep["zp"], rep["maglim"], rep["fwhm_px"]
        psf = frame_psf(frame, cfg)
        x, y = injection_sites(frame, tpl["dip"], fwhm, args.n_inject, 3 * cfg.detection.edge_px, rng)
        mag = rng.uniform(maglim - 3, maglim + 1, len(x))
        for lane in args.lanes.split(","):
            t1 = time.time()
            inj, cands, diff = recover(frame, tpl[lane], psf, x, y, mag, zp, fwhm, cfg, lane, rng, RADIUS[lane])
            n_bin = cfg.detector.qip_binning if lane == "qip" else 1
            bad = bogus(cands, inj, known_sources(night, [e.expid, tpl_id], tpl["dip"]), n_bin)
            use = np.asarray(inj["usable"])
            fit = completeness_fit(inj["mag"][use], inj["found"][use])
            inj["expid"], inj["lane"], inj["dm_lim"] = e.expid, lane, inj["mag"] - maglim
            inj["dm_diff"] = inj["mag"] - float(cands.meta["maglim"])
            maglim_lane = maglim - binning_loss(fwhm, n_bin)
            inj["dm_lane"] = inj["mag"] - maglim_lane
            injected.append(inj)
            per_frame.append(dict(expid=e.expid, template=tpl_id, lane=lane, n_inject=len(inj),
                                  n_usable=int(use.sum()), n_found=int(inj["found"].sum()), n_cands=len(cands),
                                  n_bogus=int(bad.sum()),
                                  n_bogus_neg=int((bad & (np.asarray(cands["sign"]) < 0)).sum()),
                                  maglim=maglim, maglim_diff=float(cands.meta["maglim"]), m50=fit["m50"],
                                  width=fit["width"], eff_max=fit["eff_max"], m50_minus_maglim=fit["m50"] - maglim,
                                  m50_minus_maglim_diff=fit["m50"] - float(cands.meta["maglim"]),
                                  maglim_lane=maglim_lane, m50_minus_maglim_lane=fit["m50"] - maglim_lane,
                                  errscale=diff.stats["errscale"], apcorr=diff.stats["apcorr"],
                                  psf_fwhm=diff.stats["psf_fwhm"], x2nrm_rstd=diff.stats["x2nrm_rstd"],
                                  seconds=time.time() - t1))
            print(f"{e.expid} {lane}: {len(inj)} injected ({int(use.sum())} on unmasked pixels), "
                  f"m50 {fit['m50']:.2f} vs maglim {maglim:.2f} "
                  f"(difference {cands.meta['maglim']:.2f}), bogus {int(bad.sum())}, {time.time() - t1:.0f} s")
    inj = vstack(injected)
    frames_t = Table(rows=per_frame)
    result = dict(scale=args.scale, seed=args.seed, n_inject=args.n_inject,
                  kernel_half_width=args.kernel_half_width, frames=[dict(r) for r in per_frame], lanes={})
    for lane in args.lanes.split(","):
        s = inj[(inj["lane"] == lane) & inj["usable"]]
        f = frames_t[frames_t["lane"] == lane]
        eff = efficiency(s["dm_lim"], s["found"], EDGES)
        fit = completeness_fit(s["dm_lim"], s["found"])
        eff_diff = efficiency(s["dm_diff"], s["found"], EDGES)
        fit_diff = completeness_fit(s["dm_diff"], s["found"])
        fit_lane = completeness_fit(s["dm_lane"], s["found"])
        bias = bias_table(s, EDGES)
        result["lanes"][lane] = dict(
            efficiency=[dict(r) for r in eff], fit_dm_lim=fit, efficiency_diff=[dict(r) for r in eff_diff],
            fit_dm_diff=fit_diff, fit_dm_lane=fit_lane, bias=[dict(r) for r in bias],
            m50_minus_maglim_median=float(np.median(f["m50_minus_maglim"])),
            m50_minus_maglim_diff_median=float(np.median(f["m50_minus_maglim_diff"])),
            bogus_per_frame=float(np.mean(f["n_bogus"])))
        print(f"\n== {lane.upper()}: {len(s)} injections on unmasked pixels ({np.sum(inj['lane'] == lane)} in all) "
              f"in {len(f)} frames")
        eff["mag"].name = "m-maglim"
        for t in (eff, bias):
            for c in t.colnames:
                if t[c].dtype.kind == "f":
                    t[c].format = ".3f"
            t.pprint(max_lines=-1, max_width=-1)
        print(f"logistic fit over all frames: m50 - maglim = {fit['m50']:+.3f} mag, width {fit['width']:.3f}, "
              f"eff_max {fit['eff_max']:.3f}; m50 - maglim(lane frame) = {fit_lane['m50']:+.3f} mag; "
              f"m50 - maglim(difference) = {fit_diff['m50']:+.3f} mag")
        g = f["expid", "maglim", "maglim_lane", "maglim_diff", "m50", "m50_minus_maglim", "m50_minus_maglim_lane",
              "m50_minus_maglim_diff", "n_cands",
              "n_bogus", "n_bogus_neg", "errscale", "apcorr", "x2nrm_rstd"]
        for c in g.colnames[1:]:
            if g[c].dtype.kind == "f":
                g[c].format = ".3f"
        g.pprint(max_lines=-1, max_width=-1)
        print(f"bogus per frame: {np.mean(f['n_bogus']):.1f}")
    (out / "injection.json").write_text(json.dumps(result, indent=1, default=float))
    plot(result, out / "efficiency.png")
    print(f"\nwrote {out / 'injection.json'} and {out / 'efficiency.png'} ({time.time() - t0:.0f} s in all)")
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    m = np.linspace(EDGES[0], EDGES[-1], 200)
    for ax, key, label in ((axes[0], "", "science frame's"), (axes[1], "_diff", "difference image's")):
        for lane, res in result["lanes"].items():
            eff = Table(rows=res["efficiency" + key])
            fit = res["fit_dm_lim" if not key else "fit_dm_diff"]
            ax.errorbar(eff["mag"], eff["eff"], eff["eff_err"], fmt="o",
                        label=f"{lane.upper()} (m50 {fit['m50']:+.2f})")
            ax.plot(m, fit["eff_max"] / (1 + np.exp((m - fit["m50"]) / fit["width"])), color=ax.lines[-1].get_color())
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set(xlabel=f"injected m - {label} 5-sigma limit", ylim=(0, 1.05))
        ax.legend()
    axes[0].set_ylabel("detection efficiency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def template_positions(science, template, cfg, x, y, n_iter: int = 5):
    """Template pixels of science pixels ``x, y`` through the alignment's own mapping (WCS plus
    the star refinement, :func:`ast3stream.alignment.align.refine_map`), not the bare WCS: real
    frames' WCS can be off by pixels (LT: 1.5 px median, the refinement's correction), more than
    the match radius. The mapping goes template -> science, so it is inverted by fixed-point
    steps (the two pixel scales assumed alike)."""
    from scipy.ndimage import map_coordinates

    from ast3stream.alignment.align import refine_map
    from ast3stream.alignment.lanczos import pixel_map

    sc = cfg.subtraction
    xm, ym = pixel_map(template.wcs, science.wcs, template.shape, sc.align_grid_step)
    if sc.align_refine:
        xm, ym, _ = refine_map(science, template, xm, ym, sc.align_grid_step, sc.align_refine_degree,
                               sc.align_search_px, sc.align_match_px, 1)
    xt, yt = template.wcs.all_world2pix(*science.wcs.all_pix2world(x, y, 0), 0)
    for _ in range(n_iter):
        at = np.vstack([yt / sc.align_grid_step, xt / sc.align_grid_step])
        xt = xt + x - map_coordinates(xm, at, order=1, mode="nearest")
        yt = yt + y - map_coordinates(ym, at, order=1, mode="nearest")
    return xt, yt


def completeness_pair(science, template, n: int, rng, cfg, zp: float = 25.0) -> dict:
    """Fakes of the science frame's own empirical PSF (:func:`ast3stream.classify.pipeline_set.empirical_psf`,
    with photon noise), uniform in ``L - 3 ... L + 1`` around the difference's 5-sigma limit ``L``
    (that of a first, fake-free subtraction), into any real science frame with a WCS; then align,
    subtract, detect (DIP) and match within 1.5 px (:func:`template_positions`). Returns the difference's limit, ``m50``
    (logistic fit over the injections on unmasked pixels) and the counts."""
    from ast3stream.alignment import align
    from ast3stream.classify.images import frame_fwhm
    from ast3stream.classify.pipeline_set import empirical_psf, inject
    from ast3stream.detection import detect
    from ast3stream.detection.injection import match
    from ast3stream.subtraction import subtract

    fwhm = frame_fwhm(science)
    aligned = align(science, template, cfg)
    d0 = subtract(aligned, template, cfg)
    c0, _ = detect(d0, aligned, template, d0.stats["psf_fwhm"], zp, cfg.detection, lane="dip")
    lim = float(c0.meta["maglim"])
    sat = float(science.header.get("SATURATE", science.header.get("SATURATN", 1e30)) or 1e30)
    psf = empirical_psf(science.data, science.mask, fwhm, sat, half=int(np.ceil(3 * fwhm)), isolation=1.5, thresh=8.0)
    x, y = injection_sites(science, template, fwhm, n, 3 * cfg.detection.edge_px, rng)
    mag = rng.uniform(lim - 3, lim + 1, len(x))
    aligned = align(inject(science, x, y, 10 ** (-0.4 * (mag - zp)), psf, rng), template, cfg)
    d = subtract(aligned, template, cfg)
    cands, _ = detect(d, aligned, template, d.stats["psf_fwhm"], zp, cfg.detection, lane="dip")
    xt, yt = template_positions(science, template, cfg, x, y)
    found = match(cands, xt, yt, RADIUS["dip"]) >= 0
    r, e = cfg.detection.mask_radius_px, cfg.detection.edge_px
    ny, nx = d.mask.shape
    use = np.array([e <= cx < nx - e and e <= cy < ny - e and not d.mask[max(cy - r, 0):cy + r + 1,
                                                                           max(cx - r, 0):cx + r + 1].any()
                    for cx, cy in zip(np.rint(xt).astype(int), np.rint(yt).astype(int))], bool)
    fit = completeness_fit(mag[use], found[use])
    return dict(maglim_diff=float(cands.meta["maglim"]), maglim_diff_nofakes=lim, m50=fit["m50"], width=fit["width"],
                eff_max=fit["eff_max"], m50_minus_maglim_diff=fit["m50"] - float(cands.meta["maglim"]),
                n_inject=len(x), n_usable=int(use.sum()), n_found=int(found[use].sum()),
                noise_ratio=d.stats["noise_ratio"], kernel_half_width=d.stats["kernel_half_width"])


def run_real(args) -> dict:
    """``--real SCI TPL [TPL ...]``: :func:`completeness_pair` of the science frame against the
    first template and, with several, against their stack (:func:`ast3stream.templates.stack_frames`);
    the stack's 50 % completeness minus the single epoch's."""
    from ast3stream.classify.images import _load
    from ast3stream.templates import stack_frames

    cfg = Settings(subtraction=dict(backend=args.backend, kernel_half_width=args.kernel_half_width))
    sci, *tpls = (_load(Path(p))[0] for p in args.real)
    out = {}
    templates = {"single": tpls[0]} | ({"stack": stack_frames(tpls, cfg)} if len(tpls) > 1 else {})
    for name, tpl in templates.items():
        t0 = time.time()
        out[name] = completeness_pair(sci, tpl, args.n_inject, np.random.default_rng(args.seed), cfg)
        print(name, json.dumps(out[name], default=float), f"{time.time() - t0:.0f} s", flush=True)
    if "stack" in out:
        out["m50_gain_stack"] = out["stack"]["m50"] - out["single"]["m50"]
        print(f"stack - single: m50 {out['m50_gain_stack']:+.3f} mag, difference limit "
              f"{out['stack']['maglim_diff'] - out['single']['maglim_diff']:+.3f} mag")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "injection_real.json").write_text(json.dumps(out, indent=1, default=float))
    return out


def paired_m50_error(a: Table, b: Table, rng, n_boot: int = 200) -> float:
    """Bootstrap standard error of ``m50(b) - m50(a)`` for the same fakes recovered against two
    templates (rows resampled together; each fit over its own usable rows)."""
    ua, ub = np.asarray(a["usable"]), np.asarray(b["usable"])
    ma, fa, mb, fb = (np.asarray(t[c]) for t in (a, b) for c in ("mag", "found"))
    out = []
    for _ in range(n_boot):
        k = rng.integers(0, len(a), len(a))
        ka, kb = k[ua[k]], k[ub[k]]
        out.append(completeness_fit(mb[kb], fb[kb])["m50"] - completeness_fit(ma[ka], fa[ka])["m50"])
    return float(np.std(out))


def run_stack(args) -> dict:
    """``--stack``: one simulated field, ``--visits`` exposures; the last one's fakes (DIP lane,
    :func:`recover`) against its first visit as the template and against the stack of all the
    earlier visits (:func:`ast3stream.templates.stack_frames`): both 50 % completeness magnitudes."""
    from ast3stream.templates import stack_frames

    out = Path(args.out)
    night = simulate_night(out / "sim", n_exposures=args.visits, scale=args.scale, seed=args.seed, n_fields=1)
    cfg = Settings(subtraction=dict(kernel_half_width=args.kernel_half_width, backend=args.backend))
    cfg.detector = detector_from_header(night.exposures[0].path, cfg.detector)
    calib = Calibration.build(sorted((out / "sim" / "calib").glob("bias_*.fits")),
                              sorted((out / "sim" / "calib").glob("flat_*.fits")), cfg.reduction, cfg.detector)
    refcat = RefCat.from_file(out / "sim" / "refcat.fits")
    reduced = [reduce_file(e.path, cfg, calibration=calib, refcat=refcat) for e in night.exposures]
    (sci, rep), earlier = (reduced[-1][0].frame, reduced[-1][1]), [r[0].frame for r in reduced[:-1]]
    stack = stack_frames(earlier, cfg)
    rng = np.random.default_rng(args.seed)
    zp, maglim, fwhm = rep["zp"], rep["maglim"], rep["fwhm_px"]
    x, y = injection_sites(sci, earlier[0], fwhm, args.n_inject, 3 * cfg.detection.edge_px, rng)
    mag = rng.uniform(maglim - 3, maglim + 1, len(x))
    res = dict(visits=args.visits, scale=args.scale, seed=args.seed, maglim=maglim, depth_gain=stack.header["DEPTHGN"],
               n_combine=stack.header["NCOMBINE"])
    tables = {}
    for name, tpl in (("single", earlier[0]), ("stack", stack)):
        inj, cands, diff = recover(sci, tpl, frame_psf(sci, cfg), x, y, mag, zp, fwhm, cfg, "dip",
                                   np.random.default_rng(args.seed + 1), RADIUS["dip"])
        tables[name] = inj
        inj.write(out / f"injections_{name}.ecsv", overwrite=True)
        use = np.asarray(inj["usable"])
        fit = completeness_fit(inj["mag"][use], inj["found"][use])
        res[name] = dict(m50=fit["m50"], width=fit["width"], maglim_diff=float(cands.meta["maglim"]),
                         m50_minus_maglim_diff=fit["m50"] - float(cands.meta["maglim"]),
                         n_usable=int(use.sum()), n_found=int(inj["found"][use].sum()),
                         noise_ratio=diff.stats["noise_ratio"], errscale=diff.stats["errscale"])
        print(name, json.dumps(res[name], default=float), flush=True)
    res["m50_gain_stack"] = res["stack"]["m50"] - res["single"]["m50"]
    res["m50_gain_stack_err"] = paired_m50_error(tables["single"], tables["stack"], np.random.default_rng(args.seed))
    print(f"stack of {res['n_combine']} (DEPTHGN {res['depth_gain']:+.3f}) - single: m50 {res['m50_gain_stack']:+.3f} "
          f"+/- {res['m50_gain_stack_err']:.3f} mag (bootstrap), difference limit "
          f"{res['stack']['maglim_diff'] - res['single']['maglim_diff']:+.3f} mag")
    (out / "injection_stack.json").write_text(json.dumps(res, indent=1, default=float))
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--fields", type=int, default=2)
    ap.add_argument("--visits", type=int, default=3)
    ap.add_argument("--n-inject", type=int, default=250)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--lanes", default="dip,qip")
    ap.add_argument("--kernel-half-width", type=int, default=8, help="SFFT kernel half-width (8 suits FWHM ~3 px)")
    ap.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-injection"))
    ap.add_argument("--real", nargs="+", metavar="FITS", help="SCI TPL [TPL ...]: real frames instead (run_real)")
    ap.add_argument("--stack", action="store_true", help="one field: single-epoch against stacked template (run_stack)")
    args = ap.parse_args(argv)
    run_real(args) if args.real else run_stack(args) if args.stack else run(args)


if __name__ == "__main__":
    main()

"""SFFT's kernel/background polynomial orders and kernel half-width against time and difference
quality, on a simulated pair (CPU by default: the demo's setting).

    python -m bench.sfft_settings [--scale 0.1] [--settings 2/2/15,2/0/15,...,0/0/fwhm] [--out DIR]

A night of one field (template and ``--visits - 1`` science exposures) is simulated at ``--scale``
(:func:`ast3stream.simulate.simulate_night`, reused from ``--out``) and reduced
(:func:`ast3stream.front.reduce_file`); into each science frame ``--n-inject`` point sources of its
own PSF model are added, uniform in ``maglim - 3 ... maglim + 1`` (as :mod:`bench.injection`),
and the frame is aligned once. Each setting ``K/B/HW`` (kernel order, background order,
half-width in px or ``fwhm``: ``ceil(2 x`` the larger FWHM``)``, :func:`~ast3stream.subtraction.subtract.kernel_half_width`)
then subtracts and detects on the same aligned frame, one after the other, its template prepared
ahead (as a worker does). Printed per setting and frame: the SFFT configuration's compile/load
time, the subtraction's wall time and its SFFT step, the fraction of usable bright injections (``m < maglim - 1``) recovered and the median SNR
of the injections every setting recovered (paired), the fraction of unmasked pixels with
``|D / sigma_D| > 5`` away from injections, the mean ``(D / sigma_D)^2`` on the template's clean stars
(within 1.5 FWHM; where a kernel that cannot follow the PSF leaves its residuals), bogus candidates, ``noise_ratio`` and X2NRM;
also the spread of the template's sub-area star FWHMs over the frame. Written: ``sfft_settings.json``.

Measured 2026-12-04, 2-core CPU here (loaded by other jobs, load 2-3), ``nice -n 5 python -m
bench.sfft_settings --visits 3 --out /tmp/sfft_settings3`` (7 min 14 s): scale 0.1, one
1065x1412 tile (SFFT 1080x1440), 62 and 72 usable sub-area stars, FWHM 3.46 (template) / 3.57,
3.54 px, hw ``fwhm`` = 8; per frame (two science frames):

    setting   subtract s    bright found   paired SNR ratio   star chi2     bogus   X2NRM
    2/2/15    59.2  59.8    69/70  79/79   1.000  1.000       0.878 0.834   8  8    0.963 0.954
    2/0/15    44.7  44.4    69/70  79/79   1.000  1.000       0.878 0.834   8  8    0.963 0.954
    2/2/fwhm  41.4  40.6    69/70  79/79   0.994  1.003       0.891 0.841   9  8    0.961 0.951
    2/0/fwhm  21.8  21.6    69/70  79/79   0.995  1.002       0.891 0.841   9  8    0.961 0.951
    1/1/fwhm  13.3  13.3    69/70  79/79   0.997  1.001       1.050 0.995   7  7    1.009 1.003
    1/0/fwhm   8.6   8.6    69/70  79/79   0.997  1.002       1.050 0.995   7  7    1.009 1.003
    0/0/fwhm   4.1   7.6    69/70  79/79   0.993  1.003       1.079 1.025   8  8    0.994 0.992

Alone in a process, 2/2/15 and 2/0/15 peaked at 7.99 and 4.80 GB RSS (66.9 and 33.9 s). The
background order changes nothing but the time (every figure equal to 3 digits); the kernel
order changes nothing measurable here but the chi2 on the stars' cores, an in-sample figure:
the stars are the ones the kernel is fitted to, and 2/2 at hw 8 has ~1740 unknowns for ~10^4
sub-area pixels (chi2 below 1 is partly that). On a real pair the kernel order matters (README,
"CPU SFFT").
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ast3stream.alignment import align
from ast3stream.catalogs.refcat import RefCat
from ast3stream.config import Settings
from ast3stream.detection import detect
from ast3stream.detection.injection import frame_psf, inject, match
from ast3stream.front import reduce_file
from ast3stream.rawfile import detector_from_header
from ast3stream.reduction import Calibration
from ast3stream.simulate import simulate_night
from ast3stream.subtraction import engine, prepare_template, subtract
from ast3stream.subtraction.tiles import fft_shape, tile_shape

from .injection import bogus, injection_sites, known_sources


def setting_cfg(cfg: Settings, setting: str, fwhm: float, shape) -> Settings:
    """``cfg`` with the ``K/B/HW`` setting's orders and half-width (``HW = fwhm``: ceil(2 FWHM))."""
    from ast3stream.subtraction.subtract import kernel_half_width

    k, b, hw = setting.split("/")
    hw = kernel_half_width(fwhm, shape, 50) if hw == "fwhm" else int(hw)
    return cfg.model_copy(update={"subtraction": cfg.subtraction.model_copy(update=dict(
        kernel_poly_order=int(k), background_poly_order=int(b), kernel_half_width=hw))})


def quality(d, cands, xt, yt, mag, maglim, template, known, fwhm: float) -> dict:
    """Recovery and residual figures of one difference (module docstring)."""
    from scipy.ndimage import binary_dilation

    found_idx = match(cands, xt, yt, 1.5)
    ny, nx = d.mask.shape
    cx, cy = np.rint(xt).astype(int), np.rint(yt).astype(int)
    usable = np.array([16 <= i < nx - 16 and 16 <= j < ny - 16 and not d.mask[j - 1:j + 2, i - 1:i + 2].any()
                       for i, j in zip(cx, cy)])
    bright = usable & (mag < maglim - 1)
    snr = np.full(len(xt), np.nan)
    ok = found_idx >= 0
    if ok.any():
        snr[ok] = (np.asarray(cands["flux"], float) / np.asarray(cands["flux_err"], float))[found_idx[ok]]
    z = d.snr
    near = np.zeros(d.mask.shape, bool)
    near[np.clip(cy, 0, ny - 1), np.clip(cx, 0, nx - 1)] = True
    kx, ky, _ = known
    inside = (kx >= 0) & (kx < nx) & (ky >= 0) & (ky < ny)
    near[np.rint(ky[inside]).astype(int), np.rint(kx[inside]).astype(int)] = True
    r = int(np.ceil(3 * fwhm))
    near = binary_dilation(near, structure=np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= r)
    good = (d.mask == 0) & ~near
    st = template.sources[np.asarray(template.sources["clean"], bool)]
    on = np.zeros(d.mask.shape, bool)
    on[np.rint(np.asarray(st["y"])).astype(int), np.rint(np.asarray(st["x"])).astype(int)] = True
    rs = int(np.ceil(1.5 * fwhm))
    on = binary_dilation(on, structure=np.hypot(*np.mgrid[-rs:rs + 1, -rs:rs + 1]) <= rs) & (d.mask == 0) & ~near
    inj = dict(cand=found_idx, found=ok)
    n_bogus = int(bogus(cands, inj, known, 1).sum())
    return dict(bright_usable=int(bright.sum()), bright_found=int((ok & bright).sum()),
                bright_fraction=float((ok & bright).sum() / max(1, bright.sum())),
                all_found=int((ok & usable).sum()), usable=int(usable.sum()), snr=snr,
                z5_away=float((np.abs(z[good]) > 5).mean()),
                star_chi2=float(np.mean(z[on] ** 2)) if on.any() else float("nan"), star_pixels=int(on.sum()),
                n_cands=len(cands), bogus=n_bogus, noise_ratio=d.stats["noise_ratio"],
                x2nrm_rstd=d.stats["x2nrm_rstd"], n_stars=d.stats["n_stars"],
                kernel_half_width=d.stats["kernel_half_width"])


def run(args) -> list[dict]:
    out = Path(args.out)
    cfg = Settings(subtraction=dict(backend=args.backend))
    night = simulate_night(out / "sim", n_exposures=args.visits, scale=args.scale, seed=args.seed, n_fields=1,
                           cfg=cfg, reuse=True)
    cfg.detector = detector_from_header(night.exposures[0].path, cfg.detector)
    calib = Calibration.build(sorted((out / "sim" / "calib").glob("bias_*.fits")),
                              sorted((out / "sim" / "calib").glob("flat_*.fits")), cfg.reduction, cfg.detector)
    refcat = RefCat.from_file(out / "sim" / "refcat.fits")
    frames = [reduce_file(e.path, cfg, calibration=calib, refcat=refcat) for e in night.exposures]
    (tpl, tpl_rep), sciences = frames[0], frames[1:]
    template = tpl.frame
    rng = np.random.default_rng(args.seed)
    rows = []
    for (exp, rep), e in zip(sciences, night.exposures[1:]):
        frame, zp, maglim, fwhm = exp.frame, rep["zp"], rep["maglim"], rep["fwhm_px"]
        x, y = injection_sites(frame, template, fwhm, args.n_inject, 48, rng)
        mag = rng.uniform(maglim - 3, maglim + 1, len(x))
        sci = inject(frame, frame_psf(frame, cfg), x, y, 10 ** (-0.4 * (mag - zp)), rng)
        aligned = align(sci, template, cfg)
        xt, yt = template.wcs.all_world2pix(*frame.wcs.all_pix2world(x, y, 0), 0)
        known = known_sources(night, [e.expid, night.exposures[0].expid], template)
        fwhm_max = max(fwhm, tpl_rep["fwhm_px"])
        tshape = tile_shape(template.shape, cfg)
        fy, fx = fft_shape(tshape)
        for setting in args.settings.split(","):
            scfg = setting_cfg(cfg, setting, fwhm_max, tshape)
            t0 = time.perf_counter()
            engine.sfft_config((fx, fy), scfg, args.backend == "cupy")
            compile_s = time.perf_counter() - t0
            prepare_s = prepare_template(template, scfg, key=setting)   # as a worker does, ahead
            d = subtract(aligned, template, scfg, template_key=setting)
            cands, _ = detect(d, aligned, template, fwhm, zp, cfg.detection, lane="dip")
            row = dict(expid=e.expid, setting=setting, compile_s=compile_s, prepare_s=prepare_s, subtract_s=d.stats["seconds"],
                       sfft_s=d.stats["steps"]["sfft"], fwhm_sci=fwhm, fwhm_ref=tpl_rep["fwhm_px"],
                       **quality(d, cands, xt, yt, mag, maglim, template, known, fwhm_max))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "snr"}, default=float), flush=True)
    for e in {r["expid"] for r in rows}:   # paired SNR: the injections every setting recovered
        mine = [r for r in rows if r["expid"] == e]
        both = np.all([np.isfinite(r["snr"]) for r in mine], axis=0)
        for r in mine:
            r["snr_median_paired"] = float(np.median(r["snr"][both])) if both.any() else float("nan")
            r["snr_ratio_to_first"] = float(np.median(r["snr"][both] / mine[0]["snr"][both])) if both.any() else float("nan")
            r["n_paired"] = int(both.sum())
        for r in mine:
            del r["snr"]
    stars = template.sources[np.asarray(template.sources["clean"], bool)]
    ny, nx = template.shape
    corner = np.hypot(stars["x"] / nx - 0.5, stars["y"] / ny - 0.5) > 0.4
    print(f"template star FWHM: median {np.median(stars['fwhm']):.2f} px, centre (r < 0.2) "
          f"{np.median(stars['fwhm'][np.hypot(stars['x'] / nx - 0.5, stars['y'] / ny - 0.5) < 0.2]):.2f}, "
          f"corners {np.median(stars['fwhm'][corner]):.2f}")
    print(f"\n{'setting':>10} {'expid':>22} {'hw':>3} {'sub s':>6} {'sfft s':>6} {'bright':>7} {'snr':>6} "
          f"{'ratio':>6} {'z5 away':>8} {'chi2 st':>8} {'bogus':>5} {'noise':>6} {'x2nrm':>6}")
    for r in rows:
        print(f"{r['setting']:>10} {r['expid']:>22} {r['kernel_half_width']:>3} {r['subtract_s']:6.1f} "
              f"{r['sfft_s']:6.1f} {r['bright_found']:>3}/{r['bright_usable']:<3} {r['snr_median_paired']:6.1f} "
              f"{r['snr_ratio_to_first']:6.3f} {r['z5_away']:8.1e} {r['star_chi2']:8.3f} {r['bogus']:>5} "
              f"{r['noise_ratio']:6.3f} {r['x2nrm_rstd']:6.3f}")
    (out / "sfft_settings.json").write_text(json.dumps(rows, indent=1, default=float))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--visits", type=int, default=2, help="exposures of the field; the first is the template")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n-inject", type=int, default=150)
    ap.add_argument("--settings", default="2/2/15,2/0/15,2/2/fwhm,2/0/fwhm,1/1/fwhm,1/0/fwhm,0/0/fwhm")
    ap.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    ap.add_argument("--out", default="/tmp/sfft_settings")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    run(args)


if __name__ == "__main__":
    main()

"""Subtraction time for QIP- and DIP-size synthetic images, next to sfft's own Customized_Packet.

    python -m bench.subtraction [--sizes qip,dip,1024] [--backend auto|numpy|cupy] [--no-packet] [--compare 1024]

For each size a synthetic template/science pair (:mod:`ast3stream.subtraction.synthetic`,
kernel half-width 15, kernel and background polynomial orders 2 and 0 from the default config) is made; printed are
the alignment time, ``ast3stream.subtraction.subtract`` on its first call (SFFT compilation
included) and warm, and ``sfft.CustomizedPacket.Customized_Packet.CP`` on the same
sky-subtracted images and sub-area masks (FITS in, FITS out, as the package works), twice.
``--sizes`` takes ``qip`` (4736x3552), ``dip`` (14206x10654) or ``N`` (N x N). The warm time is
split by step (``Difference.stats['steps']``).

With a GPU, ``--compare N`` subtracts one N x N pair with both backends in the same run and
prints ``max |D_gpu - D_cpu| / sigma_D`` over unmasked pixels, for the SFFT step alone (same
float64 inputs to both backends) and for the whole :func:`~ast3stream.subtraction.subtract`
(whose sky background differs by design: ``sep`` on CPU, box medians on GPU).

``--real`` runs the real pairs of ``../shared`` (DECam stacks and exposure a, its cosmic-ray hits
flagged, the TOROS pair)
three ways - ours, sfft's ``Customized_Packet`` on the same sky-subtracted inputs with the
same sub-area masks, convolution direction and polynomial orders, and plain ``science - template`` over the
propagated errors - and prints side by side: the DECam SN's peak significance, the fraction
of |z| > 5 pixels away from sources and on bright-star pixels, |z| > 5 blob counts and run
times (z of sfft's difference: over its robust std).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ast3stream.alignment import align
from ast3stream.config import Settings
from ast3stream.subtraction import engine, gpu_available, subtract
from ast3stream.subtraction.stars import subarea_labels
from ast3stream.subtraction.synthetic import synthetic_pair

SIZES = {"qip": (3552, 4736), "dip": (10654, 14206)}
#: (template, science) FWHM [px]: DIP at full resolution, QIP 3x3 binned
FWHM = {"qip": (1.6, 2.0), "dip": (3.0, 4.0)}


def make_pair(name: str, seed: int = 0):
    """Synthetic (science, template, truth); the science frame carries a source table (as calibrated
    frames do from the sources stage), from the truth, for the alignment's star matching."""
    shape = SIZES.get(name) or (int(name), int(name))
    n_stars = int(shape[0] * shape[1] / 2500)
    science, template, truth = synthetic_pair(shape, n_stars=n_stars, fwhm=FWHM.get(name, (3.0, 4.0)),
                                              shift=(0.4, -0.3), rotation_deg=0.01, seed=seed,
                                              transient=(shape[1] / 2, shape[0] / 2, 18.0))
    sky_noise = np.sqrt(np.median(science.data) * 4 * np.pi * (FWHM.get(name, (3.0, 4.0))[1] / 2.3548) ** 2)
    science.sources = Table(dict(x=truth["x_sci"], y=truth["y_sci"], flux=truth["flux"],
                                 fluxerr=np.sqrt(truth["flux"] + sky_noise ** 2), flag=np.zeros(len(truth), int)))
    return science, template, truth


def run_packet(aligned, template, truth, fwhm, gpu: bool, cfg) -> float:
    """Wall time of one ``Customized_Packet.CP`` call on sky-subtracted FITS inputs."""
    from sfft.CustomizedPacket import Customized_Packet

    sc = cfg.subtraction
    bright = truth["mag"] < 20
    sub = subarea_labels(template.shape, truth["x"][bright], truth["y"][bright], 2 * fwhm) > 0
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for key, img in (("ref", template.data - np.median(template.data)),
                         ("sci", aligned.data - np.median(aligned.data))):
            paths[key] = Path(tmp, f"{key}.fits")
            fits.writeto(paths[key], img.astype(np.float32), template.header)
            paths["m" + key] = Path(tmp, f"m{key}.fits")
            fits.writeto(paths["m" + key], np.where(sub, img, 0).astype(np.float32), template.header)
        t0 = time.perf_counter()
        Customized_Packet.CP(str(paths["ref"]), str(paths["sci"]), str(paths["mref"]), str(paths["msci"]),
                             ForceConv="REF", GKerHW=sc.kernel_half_width, FITS_DIFF=str(Path(tmp, "diff.fits")),
                             KerPolyOrder=sc.kernel_poly_order, BGPolyOrder=sc.background_poly_order,
                             BACKEND_4SUBTRACT="Cupy" if gpu else "Numpy",
                             NUM_CPU_THREADS_4SUBTRACT=os.cpu_count(), VERBOSE_LEVEL=0)
        return time.perf_counter() - t0


def compare_backends(n: int, cfg) -> dict:
    """GPU against CPU on one ``n x n`` pair: ``max |D_gpu - D_cpu| / sigma_D`` (and the 99.9th percentile)
    over unmasked pixels, for the SFFT solve alone and for the whole subtraction."""
    import cupy as cp

    science, template, _ = make_pair(str(n), seed=1)
    aligned = align(science, template, cfg, gpu=False)
    d_cpu, d_gpu = subtract(aligned, template, cfg, gpu=False), subtract(aligned, template, cfg, gpu=True)
    good = (d_cpu.mask == 0) & (d_gpu.mask == 0)
    z = np.abs(d_gpu.diff - d_cpu.diff)[good] / d_cpu.noise[good]
    rng = np.random.default_rng(2)
    I, J = (np.ascontiguousarray(f.data.T, np.float64) - np.median(f.data) for f in (template, aligned))
    m = rng.uniform(size=I.shape) < 0.2  # same sub-area pixels for both backends
    mI, mJ = np.where(m, I, 0.0), np.where(m, J, 0.0)
    sol_c, core_c = engine.solve(I, J, mI, mJ, cfg, gpu=False)
    sol_g, core_g = engine.solve(*(cp.asarray(a) for a in (I, J, mI, mJ)), cfg, gpu=True)
    zc = (np.abs(core_g.get() - core_c).T / d_cpu.noise)[good]
    return dict(compare_size=n, subtract_max_z=float(z.max()), subtract_p999_z=float(np.quantile(z, 0.999)),
                sfft_max_z=float(zc.max()), sfft_p999_z=float(np.quantile(zc, 0.999)),
                solution_max_rel=float(np.abs(sol_g - sol_c).max() / np.abs(sol_c).max()))


REAL_PAIRS = {  # name: (science, template, SN box or None), under ../shared/data/images
    "decam-stack": ("decam-sfft/4check/Stack-DEC-OBS04.fits", "decam-sfft/4check/Stack-DEC-OBS18.fits", (178, 185, 57, 64)),
    "decam-a": ("decam-sfft/input_data/DEC-OBS04a.mini.fits", "decam-sfft/input_data/DEC-OBS18a.mini.fits",
                (178, 185, 57, 64)),
    "toros": ("eso085-030-toros/aligned_eso085-030-005.fit", "eso085-030-toros/aligned_eso085-030-004.fit", None),
}


def _z_stats(z, mask, sources, bright, box) -> dict:
    from scipy.ndimage import label

    ok = (mask == 0) & np.isfinite(z)
    big = ok & (np.abs(z) > 5)
    out = dict(frac_away=float((big & ~sources).sum() / max(1, (ok & ~sources).sum())),
               frac_bright=float((big & bright).sum() / max(1, (ok & bright).sum())))
    if box is not None:
        y0, y1, x0, x1 = box
        out["sn_z"] = float(np.nanmax(np.where(ok, z, -np.inf)[y0:y1, x0:x1]))
        big[y0 - 10:y1 + 10, x0 - 10:x1 + 10] = False
    out["blobs"] = int(label(big)[1])
    return out


def real_pairs(cfg, gpu: bool) -> list[dict]:
    """The ``--real`` comparison (module docstring)."""
    import sep
    from scipy.ndimage import binary_dilation, maximum_filter
    from sfft.CustomizedPacket import Customized_Packet

    from ast3stream.subtraction.pair import load_frame, subtract_pair
    from ast3stream.subtraction.stars import pair_stars, select_stars
    from ast3stream.subtraction.subtract import Prepared

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
    rows = []
    for name, (s_path, t_path, box) in REAL_PAIRS.items():
        if not (root / s_path).exists():
            continue
        sci, tpl = load_frame(root / s_path), load_frame(root / t_path)
        t0 = time.perf_counter()
        res = subtract_pair(sci, tpl, cfg, cosmics=name == "decam-a")   # a single exposure: cosmic-ray hits
        ours_s = time.perf_counter() - t0
        d, aligned = res.difference, res.aligned
        P = {k: Prepared(f, cfg, np, maximum_filter) for k, f in (("sci", aligned), ("ref", tpl))}
        seg = sep.extract(np.ascontiguousarray(P["ref"].sub), 3.0, err=P["ref"].rms, segmentation_map=True)[1] > 0
        sources = binary_dilation(seg, iterations=3)
        bright = P["ref"].sub > 50 * P["ref"].rms
        row = dict(pair=name, ours=dict(seconds=ours_s, **_z_stats(d.snr, d.mask, sources, bright, box)))
        plain = (P["sci"].sub - P["ref"].sub) / np.sqrt(P["sci"].var + P["ref"].var)
        row["plain"] = dict(seconds=0.0, **_z_stats(plain, d.mask, sources, bright, box))
        stars = select_stars(P["ref"].sub, P["ref"].bad, P["ref"].rms, cfg, P["ref"].saturation)
        pairs = pair_stars(stars, P["sci"].sub, P["sci"].bad, P["sci"].rms, cfg)
        use = np.asarray(pairs["use"], bool)
        radius = max(cfg.subtraction.subarea_fwhm * max(d.stats["fwhm_sci"], d.stats["fwhm_ref"]), 6.0)
        sub = subarea_labels(tpl.shape, pairs["x"][use], pairs["y"][use], radius) > 0
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            for key in ("ref", "sci"):
                img = np.where(P[key].bad, 0, P[key].sub)
                paths[key], paths["m" + key] = Path(tmp, f"{key}.fits"), Path(tmp, f"m{key}.fits")
                fits.writeto(paths[key], img.astype(np.float32))
                fits.writeto(paths["m" + key], np.where(sub, img, 0).astype(np.float32))
            sc = cfg.subtraction
            varying = use.sum() >= sc.min_stars_varying   # ours: constant kernel and background below this
            t0 = time.perf_counter()
            Customized_Packet.CP(str(paths["ref"]), str(paths["sci"]), str(paths["mref"]), str(paths["msci"]),
                                 ForceConv=d.stats["conv"], GKerHW=sc.kernel_half_width,
                                 FITS_DIFF=str(Path(tmp, "diff.fits")), KerPolyOrder=sc.kernel_poly_order * varying,
                                 BGPolyOrder=sc.background_poly_order * varying, BACKEND_4SUBTRACT="Cupy" if gpu else "Numpy",
                                 NUM_CPU_THREADS_4SUBTRACT=os.cpu_count(), VERBOSE_LEVEL=0)
            cp_s = time.perf_counter() - t0
            cp_d = fits.getdata(Path(tmp, "diff.fits")).astype(float)
        if d.stats["conv"] == "SCI":
            cp_d = -cp_d
        ok = d.mask == 0
        cp_z = cp_d / (1.4826 * np.median(np.abs(cp_d[ok] - np.median(cp_d[ok]))))
        row["sfft_packet"] = dict(seconds=cp_s, **_z_stats(cp_z, d.mask, sources, bright, box))
        row["noise_ratio"], row["n_substars"] = d.stats["noise_ratio"], int(use.sum())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="qip,dip")
    ap.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    ap.add_argument("--no-packet", action="store_true", help="skip sfft's Customized_Packet")
    ap.add_argument("--repeat", type=int, default=2, help="warm subtract calls")
    ap.add_argument("--tile", default=None, help="NYxNX tile shapes to compare, e.g. 4096x3072,5400x4860")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--compare", type=int, default=0, help="GPU vs CPU on one N x N pair (needs a GPU)")
    ap.add_argument("--real", action="store_true", help="the real pairs: ours, sfft's packet, plain difference")
    args = ap.parse_args(argv)
    cfg = Settings(subtraction=dict(backend=args.backend))
    if args.real:
        rows = real_pairs(cfg.model_copy(update={"subtraction": cfg.subtraction.model_copy(
            update={"kernel_half_width": 8})}), args.backend == "cupy" or (args.backend == "auto" and gpu_available()))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return
    tiles = [tuple(int(v) for v in t.lower().split("x")) for t in args.tile.split(",")] if args.tile else [None]
    gpu = args.backend == "cupy" or (args.backend == "auto" and gpu_available())
    device = "cpu"
    if gpu:
        import cupy as cp

        device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"device: {device}  backend: {'cupy' if gpu else 'numpy'}  cpus: {os.cpu_count()}")
    results = []
    for name in args.sizes.split(","):
        t0 = time.perf_counter()
        science, template, truth = make_pair(name)
        base = dict(size=name, shape=list(template.shape), device=device, make_s=time.perf_counter() - t0)
        for key in ("align_first_s", "align_warm_s"):
            t0 = time.perf_counter()
            aligned = align(science, template, cfg)
            base[key] = time.perf_counter() - t0
        rows = []
        for tile in tiles:
            tcfg = cfg if tile is None else cfg.model_copy(update={"subtraction": cfg.subtraction.model_copy(
                update=dict(tile_ny=tile[0], tile_nx=tile[1]))})
            row = dict(base)
            d = subtract(aligned, template, tcfg)
            row["subtract_first_s"] = d.stats["seconds"]
            warm = min((subtract(aligned, template, tcfg).stats for _ in range(args.repeat)),
                       key=lambda st: st["seconds"])
            row["subtract_warm_s"], row["steps"] = warm["seconds"], {k: round(v, 3) for k, v in warm["steps"].items()}
            row.update({k: d.stats[k] for k in ("n_tiles", "tile_shape", "n_stars", "x2nrm_rstd", "flux_ratio")})
            cy, cx = template.shape[0] // 2, template.shape[1] // 2
            row["transient_snr"] = float(d.snr[cy - 2:cy + 3, cx - 2:cx + 3].max())
            rows.append(row)
            print(json.dumps(row), flush=True)
            del d
            if gpu:
                cp.get_default_memory_pool().free_all_blocks()
        if not args.no_packet:
            for key in ("packet_first_s", "packet_second_s"):
                try:
                    rows[0][key] = run_packet(aligned, template, truth, FWHM.get(name, (3.0, 4.0))[1], gpu, cfg)
                except Exception as exc:  # e.g. out of GPU memory for a DIP frame in one pass
                    rows[0][key] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
                    break
                finally:
                    if gpu:
                        cp.get_default_memory_pool().free_all_blocks()
        results += rows
    print(f"\n{'size':>6} {'shape':>13} {'align':>7} {'sub 1st':>8} {'sub warm':>8} {'tiles':>5} "
          f"{'CP 1st':>8} {'CP 2nd':>8}")
    fmt = lambda v: f"{v:8.2f}" if isinstance(v, float) else f"{str(v)[:8]:>8}"  # noqa: E731
    for r in results:
        print(f"{r['size']:>6} {'x'.join(map(str, r['shape'])):>13} {r['align_warm_s']:7.2f} "
              f"{fmt(r['subtract_first_s'])} {fmt(r['subtract_warm_s'])} {r['n_tiles']:>5} "
              f"{fmt(r.get('packet_first_s', '-'))} {fmt(r.get('packet_second_s', '-'))}")
    for r in results:
        print(f"{r['size']} warm steps [s]: " + ", ".join(f"{k} {v:.2f}" for k, v in r["steps"].items()))
    if args.compare and gpu:
        cmp = compare_backends(args.compare, cfg)
        results.append(cmp)
        print(f"\nGPU vs CPU on {args.compare}x{args.compare}: max |D_gpu - D_cpu| / sigma_D = "
              f"{cmp['subtract_max_z']:.2e} (99.9 %: {cmp['subtract_p999_z']:.2e}) whole subtraction, "
              f"{cmp['sfft_max_z']:.2e} (99.9 %: {cmp['sfft_p999_z']:.2e}) SFFT alone; "
              f"kernel solution max rel. diff {cmp['solution_max_rel']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Subtraction time for QIP- and DIP-size synthetic images, next to sfft's own Customized_Packet.

    python -m bench.subtraction [--sizes qip,dip,1024] [--backend auto|numpy|cupy] [--no-packet]

For each size a synthetic template/science pair (:mod:`ast3stream.subtraction.synthetic`,
kernel half-width 15, polynomial orders 2/2 from the default config) is made; printed are
the alignment time, ``ast3stream.subtraction.subtract`` on its first call (SFFT compilation
included) and warm, and ``sfft.CustomizedPacket.Customized_Packet.CP`` on the same
sky-subtracted images and sub-area masks (FITS in, FITS out, as the package works), twice.
``--sizes`` takes ``qip`` (4736x3552), ``dip`` (14206x10654) or ``N`` (N x N).
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

from ast3stream.alignment import align
from ast3stream.config import Settings
from ast3stream.subtraction import gpu_available, subtract
from ast3stream.subtraction.stars import subarea_labels
from ast3stream.subtraction.synthetic import synthetic_pair

SIZES = {"qip": (3552, 4736), "dip": (10654, 14206)}
#: (template, science) FWHM [px]: DIP at full resolution, QIP 3x3 binned
FWHM = {"qip": (1.6, 2.0), "dip": (3.0, 4.0)}


def make_pair(name: str, seed: int = 0):
    shape = SIZES.get(name) or (int(name), int(name))
    n_stars = int(shape[0] * shape[1] / 2500)
    return synthetic_pair(shape, n_stars=n_stars, fwhm=FWHM.get(name, (3.0, 4.0)), shift=(0.4, -0.3),
                          rotation_deg=0.01, seed=seed, transient=(shape[1] / 2, shape[0] / 2, 18.0))


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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="qip,dip")
    ap.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    ap.add_argument("--no-packet", action="store_true", help="skip sfft's Customized_Packet")
    ap.add_argument("--repeat", type=int, default=2, help="warm subtract calls")
    ap.add_argument("--tile", default=None, help="NYxNX tile shape override, e.g. 5456x7168")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    sub_cfg = dict(backend=args.backend)
    if args.tile:
        ny, nx = (int(v) for v in args.tile.lower().split("x"))
        sub_cfg.update(tile_ny=ny, tile_nx=nx)
    cfg = Settings(subtraction=sub_cfg)
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
        row = dict(size=name, shape=list(template.shape), device=device, make_s=time.perf_counter() - t0)
        for key in ("align_first_s", "align_warm_s"):
            t0 = time.perf_counter()
            aligned = align(science, template, cfg)
            row[key] = time.perf_counter() - t0
        d = subtract(aligned, template, cfg)
        row["subtract_first_s"] = d.stats["seconds"]
        row["subtract_warm_s"] = min(subtract(aligned, template, cfg).stats["seconds"]
                                     for _ in range(args.repeat))
        row.update({k: d.stats[k] for k in ("n_tiles", "tile_shape", "n_stars", "x2nrm_rstd", "flux_ratio")})
        cy, cx = template.shape[0] // 2, template.shape[1] // 2
        row["transient_snr"] = float(d.snr[cy - 2:cy + 3, cx - 2:cx + 3].max())
        del d
        if not args.no_packet:
            for key in ("packet_first_s", "packet_second_s"):
                try:
                    row[key] = run_packet(aligned, template, truth, FWHM.get(name, (3.0, 4.0))[1], gpu, cfg)
                except Exception as exc:  # e.g. out of GPU memory for a DIP frame in one pass
                    row[key] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
                    break
                finally:
                    if gpu:
                        cp.get_default_memory_pool().free_all_blocks()
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'size':>6} {'shape':>13} {'align':>7} {'sub 1st':>8} {'sub warm':>8} {'tiles':>5} "
          f"{'CP 1st':>8} {'CP 2nd':>8}")
    fmt = lambda v: f"{v:8.2f}" if isinstance(v, float) else f"{str(v)[:8]:>8}"  # noqa: E731
    for r in results:
        print(f"{r['size']:>6} {'x'.join(map(str, r['shape'])):>13} {r['align_warm_s']:7.2f} "
              f"{fmt(r['subtract_first_s'])} {fmt(r['subtract_warm_s'])} {r['n_tiles']:>5} "
              f"{fmt(r.get('packet_first_s', '-'))} {fmt(r.get('packet_second_s', '-'))}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

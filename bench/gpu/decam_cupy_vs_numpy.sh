#!/usr/bin/env bash
# CuPy vs NumPy subtraction on the real DECam pair; from the repo root, with copies of the four files under shared/:
#   source .gpu/setup.sh && bash bench/gpu/decam_cupy_vs_numpy.sh     (results: $OUT/h12_gpu.json, $OUT/h12_gpu.log)
# Checks the CuPy path of the new subtraction code (fitted-PSF stars, noise ACF, random-aperture check,
# template cache by identity) on the real DECam pair against the NumPy path.
set -euo pipefail
OUT=${OUT:-/tmp/h12out}; mkdir -p "$OUT"
python - <<'PY' 2>&1 | tee "$OUT/h12_gpu.log"
import json, os, time, numpy as np
from pathlib import Path
from astropy.io import fits
from ast3stream.alignment import align
from ast3stream.config import Settings
from ast3stream.image import Frame
from ast3stream.subtraction import subtract
root = next(p for p in (Path("../shared/data"), Path("shared/data")) if p.exists()) / "images" / "decam-sfft"
def load(n):
    h = fits.open(root / n)[0]
    return Frame(h.data.astype(np.float32), np.zeros(h.data.shape, np.uint16), h.header)
res = {}
for backend in ("cupy", "numpy"):
    cfg = Settings(subtraction=dict(kernel_half_width=8, backend=backend))
    for name in ("4check/Stack-DEC-OBS04.fits", "input_data/DEC-OBS04a.mini.fits"):
        tpl = load(name.replace("04", "18"))
        sci = load(name)
        times = []
        for rep in range(3):
            t = time.perf_counter()
            d = subtract(align(sci, tpl, cfg), tpl, cfg, template_key=(name, 1.0))
            times.append(time.perf_counter() - t)
        s = d.stats
        res[f"{backend}:{name}"] = dict(seconds=times, sn_peak=float(d.snr[178:185, 57:64].max()),
            **{k: s[k] for k in ("conv", "fwhm_sci", "fwhm_ref", "noise_ratio", "x2nrm_rstd", "errscale", "n_stars")},
            template_step=s["steps"].get("template"))
        print(backend, name, res[f"{backend}:{name}"], flush=True)
Path(os.environ.get("OUT", "/tmp/h12out"), "h12_gpu.json").write_text(json.dumps(res, indent=1, default=float))
PY

"""Writing one exposure's bundle (:func:`ast3stream.products.write_bundle`) at full frame size:
the HDUs compressed side by side against the same HDUs written by one ``writeto`` (one thread).

    python -m bench.bundle [--nx 14304 --ny 10748] [--out DIR]

Sky-like planes (Gaussian noise, sigma 10 ADU) and an empty mask; the figures are wall seconds
and the file's size.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ast3stream.products import write_bundle


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nx", type=int, default=14304)
    ap.add_argument("--ny", type=int, default=10748)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(1)
    planes = [rng.normal(0.0, 10.0, (args.ny, args.nx)).astype(np.float32) for _ in range(3)]
    mask = np.zeros((args.ny, args.nx), np.uint16)
    cands = Table({"candidate_id": ["c1"], "x": [1.0], "y": [1.0]})
    out = args.out or Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    write_bundle(out / "side_by_side.fits", {"expid": "bench"}, SimpleNamespace(diff=planes[0], header=fits.Header(),
                 mask=mask), SimpleNamespace(data=planes[1], header=fits.Header()),
                 SimpleNamespace(data=planes[2], header=fits.Header()), cands)
    side = time.perf_counter() - t
    t = time.perf_counter()
    fits.HDUList([fits.PrimaryHDU()] + [fits.CompImageHDU(p, compression_type="RICE_1", quantize_level=16)
                                        for p in planes]
                 + [fits.CompImageHDU(mask.view(np.int16), compression_type="RICE_1"),
                    fits.BinTableHDU(cands)]).writeto(out / "one_thread.fits", overwrite=True)
    one = time.perf_counter() - t
    print(json.dumps({"shape": [args.ny, args.nx], "side_by_side_s": round(side, 2), "one_thread_s": round(one, 2),
                      "ratio": round(one / side, 2), "mb": round((out / "side_by_side.fits").stat().st_size / 1e6, 1)}))


if __name__ == "__main__":
    main()

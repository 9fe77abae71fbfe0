"""Catalogue speed: the night's asteroid table for N orbits (build once, then the cross-match of
one full-size AST3-3 exposure), and a GLADE+-sized galaxy catalogue (partition once, open, match).

    python -m bench.catalogs [--orbits 1400000] [--galaxies 23000000] [--threads 16] [--json PATH]

Orbits: ``../shared/data/catalogs/mpcorb.dat`` replicated with perturbed elements (new mean
anomaly and node, a, e, i jittered) up to ``--orbits``, written as an MPCORB file and read back;
without the file, a synthetic main belt (and 1 % near-Earth orbits). Galaxies: uniform on the
sky with random distances (the cost does not depend on where they are).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from ast3stream.catalogs import sky
from ast3stream.catalogs.asteroids import AsteroidTable, night_midpoint
from ast3stream.catalogs.mpcorb import read_elements
from ast3stream.config import CrossmatchConfig, DetectorConfig
from ast3stream.crossmatch import crossmatch
from ast3stream.simulate.orbits import MPCORB_HEADER, Orbit, pack_epoch

MPCORB = Path(__file__).resolve().parents[2] / "shared" / "data" / "catalogs" / "mpcorb.dat"
NIGHT = (2025, 11, 24)


def synthetic_orbits(n: int, rng: np.random.Generator) -> list[Orbit]:
    """``n`` orbits: the shared extract's, perturbed, or a synthetic main belt without it."""
    epoch = pack_epoch(*NIGHT)
    if MPCORB.exists():
        base = read_elements(MPCORB)
        k = rng.integers(0, len(base), n)
        a = base.a[k] * (1 + rng.normal(0, 0.01, n))
        e = np.clip(base.e[k] + rng.normal(0, 0.005, n), 0, 0.97)
        incl = np.abs(base.incl[k] + rng.normal(0, 0.3, n))
        H, peri = base.H[k], base.peri[k]
    else:
        neo = rng.random(n) < 0.01
        a = np.where(neo, rng.uniform(0.9, 2.5, n), rng.uniform(2.1, 3.3, n))
        e = np.where(neo, rng.uniform(0.2, 0.7, n), np.clip(rng.rayleigh(0.1, n), 0, 0.4))
        incl = np.abs(rng.normal(0, 8, n))
        H, peri = rng.uniform(12, 20, n), rng.uniform(0, 360, n)
    M, node = rng.uniform(0, 360, n), rng.uniform(0, 360, n)
    assert n <= 2 * 10**6, "7-character designations run out at 2 M"
    return [Orbit(f"S{i:06d}" if i < 10**6 else f"T{i - 10**6:06d}", f"syn {i}", float(H[i]), 0.15, epoch,
                  float(M[i]), float(peri[i]), float(node[i]), float(incl[i]), float(e[i]), float(a[i]))
            for i in range(n)]


def bench_asteroids(n: int, tmp: Path, rng: np.random.Generator, n_cands: int) -> dict:
    t0 = time.perf_counter()
    path = tmp / "MPCORB.DAT"
    path.write_text("\n".join([MPCORB_HEADER] + [o.line() for o in synthetic_orbits(n, rng)]) + "\n")
    make_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    el = read_elements(path)
    read_s = time.perf_counter() - t0
    det = DetectorConfig()
    site = (det.site_lon, det.site_lat, det.site_height)
    mjd0 = 61003.0 - det.site_lon / 360        # local midnight of 2025-11-24
    AsteroidTable.build(el.subset(slice(0, 100)), mjd0)   # numba compiles (or loads its cache) here
    t0 = time.perf_counter()
    table = AsteroidTable.build(el, night_midpoint(mjd0, det.site_lon))
    build_s = time.perf_counter() - t0
    # full-size fields near opposition (anti-solar point at midnight: RA ~ 60 deg, Dec ~ +20 deg)
    half = np.hypot(14206, 10654) / 2 * det.pixel_scale / 3600
    p = CrossmatchConfig()
    times, n_field, n_found = [], [], []
    for k, dt in enumerate(np.linspace(-0.25, 0.25, 11)):
        ra0, dec0 = 60.0 + 3 * (k - 5), 20.0 + (k % 3 - 1)
        field = table.field(mjd0 + dt, ra0, dec0, half, site)
        # candidates: a tenth on known asteroids, the rest anywhere in the field
        r = half * np.sqrt(rng.random(n_cands))
        phi = rng.uniform(0, 2 * np.pi, n_cands)
        dec = dec0 + r * np.sin(phi)
        ra = ra0 + r * np.cos(phi) / np.cos(np.radians(dec))
        m = min(len(field), n_cands // 10)
        ra[:m], dec[:m] = field["ra"][:m] + 1 / 3600, field["dec"][:m]
        t0 = time.perf_counter()
        out = crossmatch(Table(dict(ra=ra, dec=dec)), mjd0 + dt, p, site, asteroids=table)
        times.append(time.perf_counter() - t0)
        n_field.append(len(field))
        n_found.append(int(np.sum(out["ssnamenr"][:m] == field["designation"][:m])))
        assert n_found[-1] == m, (n_found[-1], m)
    return {"orbits": n, "make_file_s": round(make_s, 1), "read_s": round(read_s, 2), "build_s": round(build_s, 2),
            "fast_movers": int(len(table.fast)), "crossmatch_ms_median": round(1e3 * float(np.median(times)), 1),
            "crossmatch_ms_max": round(1e3 * max(times), 1), "asteroids_per_field_median": int(np.median(n_field)),
            "candidates": n_cands, "found_all_planted": True}


def bench_galaxies(n: int, tmp: Path, rng: np.random.Generator, n_cands: int) -> dict:
    def chunks():
        for start in range(0, n, 5_000_000):
            m = min(5_000_000, n - start)
            yield {"id": np.arange(start, start + m, dtype=np.int64), "ra": rng.uniform(0, 360, m),
                   "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, m))), "dist_mpc": rng.uniform(1, 1000, m)}

    t0 = time.perf_counter()
    sky.build(chunks(), tmp / "galaxies.sky")
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    gal = sky.SkyCatalog.open(tmp / "galaxies.sky")
    open_s = time.perf_counter() - t0
    p, times = CrossmatchConfig(), []
    for k in range(5):
        ra0, dec0 = 30.0 + 40 * k, -20.0 + 10 * k
        ra, dec = ra0 + rng.uniform(-0.8, 0.8, n_cands) / np.cos(np.radians(dec0)), dec0 + rng.uniform(-0.6, 0.6, n_cands)
        t0 = time.perf_counter()
        crossmatch(Table(dict(ra=ra, dec=dec)), 61000.0, p, (0.0, 0.0, 0.0), galaxies=gal)
        times.append(time.perf_counter() - t0)
    return {"galaxies": n, "build_s": round(build_s, 1), "open_s": round(open_s, 3),
            "crossmatch_ms_median": round(1e3 * float(np.median(times)), 1), "candidates": n_cands}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orbits", type=int, default=100_000)
    ap.add_argument("--galaxies", type=int, default=1_000_000)
    ap.add_argument("--candidates", type=int, default=2000, help="candidates per exposure")
    ap.add_argument("--threads", type=int, help="numba threads (default: all cores)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import numba
    if args.threads:
        numba.set_num_threads(args.threads)
    rng = np.random.default_rng(1)
    res = {"threads": numba.get_num_threads(), "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        res["asteroids"] = bench_asteroids(args.orbits, Path(tmp), rng, args.candidates)
        print(json.dumps(res["asteroids"]), flush=True)
        if args.galaxies:
            res["galaxies"] = bench_galaxies(args.galaxies, Path(tmp), rng, args.candidates)
            print(json.dumps(res["galaxies"]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()

"""End-to-end latency of a scaled night through the real stack, and ToO priority over a backlog.

    python -m bench.e2e [--scale 0.1] [--fields 3] [--visits 3] [--out DIR]

1. Every field's first visit is played and processed (it becomes the template).
2. The remaining visits of the normal fields are dropped at once (a backlog), then one
   science visit of the ToO field (on the ToO list in the database).
3. Prints per-stage time (median / p95 over exposures), end-to-end latency (file closed to
   first alert, per exposure), and the ToO exposure's latency next to the backlog's.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from agents.demo import first_alert_latency, play
from agents.runner import Stack, wait_for
from agents.db import Database
from ast3stream.simulate import simulate_night
from bench.night import night_settings, print_stage_times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--fields", type=int, default=3)
    ap.add_argument("--visits", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-e2e"))
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args(argv)

    sim = args.out / "sim"
    t0 = time.time()
    night = simulate_night(sim, n_exposures=args.fields * args.visits, scale=args.scale, seed=args.seed,
                           n_fields=args.fields)
    print(f"simulated {len(night.exposures)} exposures at scale {args.scale} in {time.time() - t0:.1f} s")
    shutil.rmtree(args.out / "run", ignore_errors=True)  # a fresh database: nothing is a duplicate
    cfg = night_settings(night, args.out / "run", watcher={"stable_s": 0.3})
    by_field: dict[str, list] = {}
    for e in night.exposures:
        by_field.setdefault(e.field_id, []).append(e)
    fields = sorted(by_field)
    too_field = fields[-1]
    db = Database.from_settings(cfg)
    db.store_too_fields("S-bench", Table({"field_id": [too_field], "prob": [0.9], "cum_prob": [0.9]}))

    with Stack(cfg) as stack:
        firsts = [by_field[f][0] for f in fields]
        play([Path(e.path) for e in firsts], cfg.watch_dir)
        wait_for(db, [e.expid for e in firsts], 3600, stack, progress=lambda s: None)
        backlog = [e for f in fields[:-1] for e in by_field[f][1:]]
        too = by_field[too_field][1]
        play([Path(e.path) for e in backlog], cfg.watch_dir)
        time.sleep(1.0)
        play([Path(too.path)], cfg.watch_dir)
        wait_for(db, [e.expid for e in [*backlog, too]], 3600, stack, progress=lambda s: None)

    print_stage_times(db.rows("stage_runs"),
                      f"per-stage seconds (scale {args.scale}, {len(night.exposures)} exposures; 2-core CPU)")
    first = first_alert_latency(db.rows("alerts"))
    lat = [v for (eid, lane), v in first.items() if lane == "dip"]
    if lat:
        print(f"\nend-to-end (file closed -> first alert), DIP: median {statistics.median(lat):.1f} s, "
              f"p95 {np.percentile(lat, 95):.1f} s over {len(lat)} exposures")
    backlog_lat = [first[(e.expid, "dip")] for e in backlog if (e.expid, "dip") in first]
    too_qip = first.get((too.expid, "qip"))
    too_dip = first.get((too.expid, "dip"))
    print(f"\nToO priority: backlog of {len(backlog)} exposures dropped first, then ToO {too.expid}")
    print(f"  ToO first alert (QIP lane): {too_qip if too_qip is None else round(too_qip, 1)} s after its file closed")
    print(f"  ToO DIP alert:              {too_dip if too_dip is None else round(too_dip, 1)} s")
    if backlog_lat:
        print(f"  backlog first alerts:       median {statistics.median(backlog_lat):.1f} s, "
              f"max {max(backlog_lat):.1f} s")
        if too_qip is not None:
            ahead = sum(v > too_qip for v in backlog_lat)
            print(f"  the ToO alert came before {ahead} of {len(backlog_lat)} backlog exposures' alerts; "
                  f"ratio ToO/backlog-median latency = {too_qip / statistics.median(backlog_lat):.2f}")


if __name__ == "__main__":
    main()

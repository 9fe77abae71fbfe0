"""Load: a simulated survey night through the real stack; consumer lag per stage over time and
end-to-end latency percentiles, with 1 and 2 workers per stage.

    python -m bench.load [--exposures 600] [--cadence 8] [--workers 1 2] [--scale 0.06] [--out DIR]

The night is cheap to make: ``--fields`` x ``--visits`` exposures are simulated once; the
night's raw files are copies of them with a new EXPID and MJD-OBS/DATE-OBS advancing by 60 s
of sky per file (so every file has its own content hash), the fields in turn. A field's first
file is its first visit (the template); its later files cycle through the field's other
visits. ``--too-fields`` fields carry TOO = T, so the QIP lane runs too.

For each worker count, on a fresh stack with ``kafka.partitions = 2`` (with one partition a
second worker of the group would idle): the templates are played and finished first, then the
clock starts and the science files are dropped into the watched folder every ``--cadence``
wall seconds (60 s of sky). Until every exposure is finished, the broker's consumer lag
(:func:`agents.status.topic_lag`) is sampled every ``--sample`` s; afterwards the exact backlog
of every stage's input (:func:`agents.status.stage_backlog`, from the database) is computed on
the same grid. Printed: lag per stage (max while feeding, max in the feed's first and second
half: bounded when they agree, and at the end of the feed), end-to-end latency (file closed
to the alert stage done, every science exposure; and to the first published alert) p50/p95/p99
per lane, throughput, CPU seconds per worker process (both must work), the 2-worker/1-worker
ratios. ``summary.json`` and ``lag.png`` go to ``--out``.

Choosing ``--cadence``: a worker runs each stage one message at a time, so one worker's
capacity is about one exposure per median DIP subtraction time (the slowest stage; printed in
the per-stage table). A cadence a little above it loads 1 worker near saturation: here
(scale 0.06, 2 cores shared with other jobs) subtraction took 7.4 s, hence ``--cadence 8``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time

from agents.demo import first_alert_latency, play
from agents.runner import Stack, wait_for
from agents.status import stage_backlog, topic_lag
from agents.db import Database
from ast3stream.pipeline import LANES, SLOW, STAGES
from ast3stream.simulate import simulate_night
from ast3stream.simulate.night import Night
from bench.night import night_settings, print_stage_times

SKY_CADENCE_S = 60.0


def make_night(night: Night, n: int, out: Path, too_fields: int = 1) -> tuple[list[Path], list[Path]]:
    """``n`` raw files made from the simulated ``night``; returns (templates, science files)."""
    by_field: dict[int, list] = {}
    for e in night.exposures:
        by_field.setdefault(e.field_id, []).append(e)
    fields = sorted(by_field)
    too = set(fields[:too_fields])
    out.mkdir(parents=True, exist_ok=True)
    mjd0 = night.exposures[0].mjd
    paths = []
    for i in range(n):
        field, visit = fields[i % len(fields)], i // len(fields)
        visits = by_field[field]
        base = visits[0] if visit == 0 else visits[1 + (visit - 1) % (len(visits) - 1)]
        expid = f"load_{field}_{i + 1:04d}"
        mjd = mjd0 + i * SKY_CADENCE_S / 86400
        with fits.open(base.path) as hdul:
            hdr = hdul[0].header
            hdr["EXPID"] = expid
            hdr["MJD-OBS"] = mjd
            hdr["DATE-OBS"] = Time(mjd, format="mjd", scale="utc").isot
            hdr["TOO"] = field in too
            hdul.writeto(out / f"{expid}.fits", overwrite=True)
        paths.append(out / f"{expid}.fits")
    return paths[:len(fields)], paths[len(fields):]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_night(cfg, workers: int, templates: list[Path], science: list[Path], cadence: float,
              sample_s: float, timeout: float) -> dict:
    """One night on a fresh stack; the raw measurements (see the module docstring)."""
    db = Database.from_settings(cfg)
    n = len(templates) + len(science)
    samples: list[tuple[float, dict]] = []
    loads: list[float] = []  # the machine's 1-minute load average: other jobs share the cores
    with Stack(cfg, workers=workers) as stack:
        play(templates, cfg.watch_dir)
        left = wait_for(db, [p.stem for p in templates], timeout, stack, progress=lambda s: None)
        if left:
            raise RuntimeError(f"templates not finished: {left}")
        cpu0 = [cpu_seconds(p.pid) for p in stack.procs]
        t0 = time.time()
        feeder = threading.Thread(target=play, args=(science, cfg.watch_dir, cadence), daemon=True)
        feeder.start()
        while time.time() - t0 < timeout:
            stack.check_workers()
            now = time.time()
            loads.append(os.getloadavg()[0])
            try:
                samples.append((now, asyncio.run(topic_lag(cfg))))
            except Exception as exc:  # the broker's view is a cross-check only
                print(f"topic lag not available: {type(exc).__name__}: {exc}", flush=True)
            if not feeder.is_alive() and db.count("exposures") == n \
                    and sum(int(v[0]) for v in stage_backlog(db, [now]).values()) == 0:
                break
            time.sleep(max(0.0, sample_s - (time.time() - now)))
        t_feed_end = max(e["file_closed_at"] for e in db.rows("exposures"))
        cpu = [cpu_seconds(p.pid) - c for p, c in zip(stack.procs, cpu0)]
        time.sleep(2.0)  # the last alerts' acknowledgements
    return {"db": db, "t0": t0, "t_feed_end": t_feed_end, "t_end": time.time(), "cpu": cpu,
            "samples": samples, "loads": loads, "science": [p.stem for p in science]}


def figures(raw: dict, sample_s: float) -> dict:
    """Lag, latency and throughput figures of one :func:`run_night`."""
    db, t0, t_feed = raw["db"], raw["t0"], raw["t_feed_end"]
    grid = np.arange(t0, raw["t_end"], sample_s)
    backlog = {k: v for k, v in stage_backlog(db, grid).items() if v.any()}
    first_half = grid < (t0 + t_feed) / 2
    feeding = grid <= t_feed
    lag = {f"{s}.{lane}": {"max": int(v[feeding].max()), "max_first_half": int(v[first_half].max()),
                           "max_second_half": int(v[feeding & ~first_half].max()),
                           "end_of_feed": int(v[feeding][-1])}
           for (s, lane), v in backlog.items()}
    exposures = {e["exposure_id"]: e for e in db.rows("exposures")}
    science = set(raw["science"])
    runs = db.rows("stage_runs")
    end = {(r["exposure_id"], r["lane"]): r["end"] for r in runs if r["stage"] == "alert" and r["end"]}
    latency, alert_latency = {}, {}
    first = first_alert_latency(db.rows("alerts"))
    for lane in ("qip", "dip"):
        lat = [t - exposures[e]["file_closed_at"] for (e, ln), t in end.items() if ln == lane and e in science]
        if lat:
            latency[lane] = {"n": len(lat), **{f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)}}
        lat = [v for (e, ln), v in first.items() if ln == lane and e in science]
        if lat:
            alert_latency[lane] = {"n": len(lat), **{f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)}}
    last: dict[str, float] = {}
    for (e, _), t in end.items():
        if e in science:
            last[e] = max(last.get(e, 0.0), t)
    done = list(last.values())
    closed = [exposures[e]["file_closed_at"] for e in science if e in exposures]
    statuses: dict[str, int] = {}
    for e in science:
        s = exposures[e]["status"] if e in exposures else "missing"
        statuses[s] = statuses.get(s, 0) + 1
    kafka_max: dict[str, int] = {}
    for _, lags in raw["samples"]:
        for t, v in lags.items():
            kafka_max[t] = max(kafka_max.get(t, 0), v)
    return {
        "exposures": len(science), "statuses": statuses, "dead_letters": db.count("dead_letters"),
        "alerts": db.count("alerts"), "feed_s": t_feed - t0, "run_s": raw["t_end"] - t0,
        "throughput_per_min": 60 * len(done) / (max(done) - min(closed)) if done else 0.0,
        "offered_per_min": 60 * (len(closed) - 1) / max(t_feed - min(closed), 1e-9),
        "lag": lag, "kafka_lag_max": {k: v for k, v in kafka_max.items() if v},
        "latency_s": latency, "first_alert_latency_s": alert_latency,
        "worker_cpu_s": [round(c, 1) for c in raw["cpu"]],
        "load_average": [round(float(np.mean(raw["loads"])), 2), round(max(raw["loads"]), 2)],
        "lag_series": {"t": (grid - t0).round(1).tolist(), **{f"{s}.{lane}": v.tolist() for (s, lane), v in backlog.items()}},
        "broker_lag_series": {"t": [round(t - t0, 1) for t, _ in raw["samples"]],
                              "all": [sum(lags.values()) for _, lags in raw["samples"]]},
    }


def plot(results: dict[int, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), sharey=True, squeeze=False)
    for ax, (workers, r) in zip(axes[0], results.items()):
        series = r["lag_series"]
        t = np.asarray(series["t"]) / 60
        colors = iter(plt.cm.tab20.colors)
        for name, v in series.items():
            if name.endswith(".dip"):
                ax.plot(t, v, lw=1, color=next(colors), label=name[:-4])
        dip = [v for name, v in series.items() if name.endswith(".dip")]
        if dip:
            ax.plot(t, np.sum(dip, axis=0), "k-", lw=1.5, label="DIP lane, all stages")
        qip = [v for name, v in series.items() if name.endswith(".qip")]
        if qip:
            ax.plot(t, np.sum(qip, axis=0), "k--", lw=1, label="QIP lane, all stages")
        broker = r["broker_lag_series"]
        ax.plot(np.asarray(broker["t"]) / 60, broker["all"], ":", color="grey", lw=1,
                label="broker lag, all topics")
        ax.axvline(r["feed_s"] / 60, color="k", lw=0.5)
        ax.set(title=f"{workers} worker{'s' * (workers > 1)}: p95 DIP latency "
                     f"{r['latency_s'].get('dip', {}).get('p95', float('nan')):.0f} s",
               xlabel="minutes since the first science file", ylabel="backlog of the stage's input [messages]")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(results: dict[int, dict], args) -> None:
    ws = list(results)
    print(f"\nload: {args.exposures} exposures ({args.fields} fields, {args.too_fields} ToO), scale {args.scale}, "
          f"one file every {args.cadence} s (= {SKY_CADENCE_S:.0f} s of sky), kafka.partitions = 2")
    print("NOTE: 2 CPU cores here, shared with other jobs: 2 workers run on the same 2 cores, so this is not\n"
          "      scale-out over machines. Each worker runs one message at a time per stage and lane; what a 2nd\n"
          "      worker gains here is a 2nd stage instance (e.g. two subtractions at once) on cores the 1st left idle.")
    print(f"\n{'':<22}" + "".join(f"{f'{w} worker(s)':>26}" for w in ws))
    rows = [("exposures / statuses", lambda r: f"{r['exposures']} {r['statuses']}"),
            ("offered /min", lambda r: f"{r['offered_per_min']:.2f}"),
            ("throughput /min", lambda r: f"{r['throughput_per_min']:.2f}"),
            ("feed / run s", lambda r: f"{r['feed_s']:.0f} / {r['run_s']:.0f}"),
            ("alerts / dead letters", lambda r: f"{r['alerts']} / {r['dead_letters']}"),
            ("worker CPU s", lambda r: " ".join(f"{c:.0f}" for c in r["worker_cpu_s"])),
            ("cores used (CPU/run s)", lambda r: f"{sum(r['worker_cpu_s']) / r['run_s']:.2f}"),
            ("load avg mean / max", lambda r: "{:.1f} / {:.1f}".format(*r["load_average"]))]
    for name, fmt in rows:
        print(f"{name:<22}" + "".join(f"{fmt(results[w]):>26}" for w in ws))
    print("\nlag per stage input [messages] from the database: max while feeding (1st half, 2nd half), end of feed")
    order = [f"{s.name}.{lane}" for lane in LANES for s in (*STAGES, SLOW)]
    names = [n for n in order if any(n in r["lag"] for r in results.values())]
    for name in names:
        cells = []
        for w in ws:
            g = results[w]["lag"].get(name)
            cells.append("0" if g is None else
                         f"{g['max']} ({g['max_first_half']}, {g['max_second_half']}), {g['end_of_feed']}")
        print(f"{name:<22}" + "".join(f"{c:>26}" for c in cells))
    topics = sorted({t for r in results.values() for t in r["kafka_lag_max"]})
    print("\nbroker lag (committed offsets; max over the samples), topics with any: "
          + ("none" if not topics else ""))
    for t in topics:
        print(f"{t:<30}" + "".join(f"{results[w]['kafka_lag_max'].get(t, 0):>16}" for w in ws))
    for key, what in (("latency_s", "file closed -> alert stage done"), ("first_alert_latency_s", "file closed -> first alert")):
        print(f"\nend-to-end latency [s], {what}: p50 / p95 / p99 (n)")
        for lane in ("qip", "dip"):
            cells = ["-" if c is None else f"{c['p50']:.1f} / {c['p95']:.1f} / {c['p99']:.1f} ({c['n']})"
                     for c in (results[w][key].get(lane) for w in ws)]
            print(f"{lane:<22}" + "".join(f"{c:>26}" for c in cells))
    if len(ws) == 2:
        a, b = (results[w] for w in ws)
        ratio = b["throughput_per_min"] / a["throughput_per_min"] if a["throughput_per_min"] else float("nan")
        p95 = b["latency_s"].get("dip", {}).get("p95", np.nan) / a["latency_s"].get("dip", {}).get("p95", np.nan)
        print(f"\n{ws[1]}/{ws[0]} workers: throughput x{ratio:.2f}, DIP p95 latency x{p95:.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exposures", type=int, default=600)
    ap.add_argument("--cadence", type=float, default=8.0, help="wall seconds between files (60 s of sky)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--scale", type=float, default=0.06, help="0.05 and below: astrometry fails on some frames")
    ap.add_argument("--fields", type=int, default=4)
    ap.add_argument("--visits", type=int, default=3, help="simulated visits per field (the copies cycle through them)")
    ap.add_argument("--too-fields", type=int, default=1)
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between lag samples")
    ap.add_argument("--timeout", type=float, default=7200.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-load"))
    args = ap.parse_args(argv)

    t = time.time()
    night = simulate_night(args.out / "sim", n_exposures=args.fields * args.visits, scale=args.scale,
                           seed=args.seed, n_fields=args.fields)
    templates, science = make_night(night, args.exposures, args.out / "night", args.too_fields)
    print(f"night of {args.exposures} files from {len(night.exposures)} simulated at scale {args.scale} "
          f"in {time.time() - t:.0f} s", flush=True)
    results = {}
    for workers in args.workers:
        data = args.out / f"workers{workers}"
        shutil.rmtree(data, ignore_errors=True)
        cfg = night_settings(night, data, watcher={"stable_s": 0.3}, kafka={"partitions": 2})
        raw = run_night(cfg, workers, templates, science, args.cadence, args.sample, args.timeout)
        results[workers] = figures(raw, args.sample)
        print_stage_times(raw["db"].rows("stage_runs"), f"{workers} worker(s): per-stage seconds")
        for sub in ("products", "incoming"):  # hundreds of MB a night; the database stays
            shutil.rmtree(data / sub, ignore_errors=True)
    report(results, args)
    (args.out / "summary.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "results": results}, indent=1))
    plot(results, args.out / "lag.png")
    print(f"\n{args.out / 'summary.json'}, {args.out / 'lag.png'}")


if __name__ == "__main__":
    main()

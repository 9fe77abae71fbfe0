"""Full-frame real time: full-size exposures through the real stack on one (GPU) worker.

    python -m bench.fullframe [--scale 1.0] [--fields 2] [--cadence 20] [--paced 4] [--burst 6]
                              [--workers 1] [--cache DIR] [--out DIR]

1. ``--fields`` fields are simulated at ``--scale`` (1.0 = 14304 x 10748 AST3-3 frames), two
   visits each (cached in ``--cache`` by seed and scale, so a second run does not simulate);
   the night's files are copies with their own EXPID and MJD (:func:`bench.load.make_night`);
   the first field is a ToO field (``TOO = T``: QIP lane first, then DIP).
2. ``--workers`` workers (default one; every stage, the GPU where a stage has a GPU path, all on
   the one GPU; the exposure topics get one partition per worker and each worker the CPU count
   over the workers as stage threads) on the embedded broker. The fields' first visits are
   played and finished: the templates.
3. The workers are stopped and started again, as a night begins: each prepares the templates in
   force and compiles before it consumes (``consuming`` in its log; the disk caches are warm).
4. *Paced*: ``--paced`` science files, one every ``--cadence`` s (the first one is the first
   exposure after the start; ``--cadence 20`` is the sustained 3 exposures a minute).
5. *Flat out*: ``--burst`` files at once.

Printed and written to ``summary.json`` in ``--out``: per-stage p50/p95 (both lanes), end to
end (file closed → alert stage done, and → first alert) p50/p95/max per lane and phase, the
first science exposure after the start on its own, throughput (exposures per minute) per
phase, consumer lag over time (per stage, from the database; broker lag of the exposure
topics), peak host memory of each worker (VmHWM; worker 0's series beside the stage runs' start and end) and
the GPU memory in use (``nvidia-smi``),
and bytes written per exposure (the products folder).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from agents.db import Database
from agents.demo import first_alert_latency, play
from agents.runner import Stack, wait_for
from agents.status import stage_backlog, topic_lag
from ast3stream.simulate import simulate_night
from bench.load import make_night
from bench.night import night_settings, print_stage_times


class Sampler(threading.Thread):
    """Every ``every`` s: the worker's resident memory, the GPU memory in use, broker lag."""

    def __init__(self, cfg, pid: int, every: float = 1.0):
        super().__init__(daemon=True)
        self.cfg, self.pid, self.every = cfg, pid, every
        self.rows: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            row = {"t": time.time(), "rss_gb": _status_gb(self.pid, "VmRSS"), "gpu_gb": _gpu_used_gb()}
            try:
                row["lag"] = asyncio.run(topic_lag(self.cfg))
            except Exception:  # the broker's view is a cross-check only
                row["lag"] = {}
            self.rows.append(row)
            self.stop.wait(self.every)


def _status_gb(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024 ** 2
    except OSError:
        return None
    return None


def smaps_summary(pid: int) -> dict:
    """Resident memory of a process by kind of mapping (``/proc/PID/smaps``), in GB: the heap
    (malloc arenas of the main thread), anonymous mappings by size (a full-frame plane is an
    anonymous mapping of 0.6 GB: a big one resident while idle is an array still referenced;
    many small ones are malloc arenas of threads), driver mappings (``/dev/nvidia*``), files."""
    out = {"heap": 0.0, "anon_ge_256mb": 0.0, "anon_32_256mb": 0.0, "anon_lt_32mb": 0.0, "nvidia": 0.0,
           "files": 0.0, "other": 0.0, "anon_ge_256mb_sizes_gb": []}
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return out
    name, size = "", 0
    for line in lines:
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            lo, hi = (int(v, 16) for v in head[0].split("-"))
            name, size = (head[5] if len(head) > 5 else ""), hi - lo
        elif head and head[0] == "Rss:":
            gb = int(head[1]) / 1024 ** 2
            if name == "[heap]":
                out["heap"] += gb
            elif name == "":
                key = "anon_ge_256mb" if size >= 256 << 20 else "anon_32_256mb" if size >= 32 << 20 else "anon_lt_32mb"
                out[key] += gb
                if key == "anon_ge_256mb" and gb > 0.1:
                    out["anon_ge_256mb_sizes_gb"].append(round(gb, 2))
            elif name.startswith("/dev/nvidia"):
                out["nvidia"] += gb
            elif name.startswith("/"):
                out["files"] += gb
            else:
                out["other"] += gb
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in out.items()}


def _gpu_used_gb() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout
        return float(out.split()[0]) / 1024
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def phase(stack: Stack, db: Database, files: list[Path], cadence: float, timeout: float) -> dict:
    """Play ``files`` every ``cadence`` s and wait until all are finished."""
    t0 = time.time()
    play(files, stack.cfg.watch_dir, cadence)
    left = wait_for(db, [p.stem for p in files], timeout, stack, progress=lambda s: None, poll=0.2)
    time.sleep(1.0)  # the last acknowledgements
    return {"t0": t0, "t_end": time.time(), "ids": [p.stem for p in files], "unfinished": left}


def restart_workers(stack: Stack, timeout: float) -> float:
    """Stop every worker (SIGTERM) and start them again; seconds until the last new one consumes
    (its log's ``consuming`` line, after its warm-up: templates in force prepared, kernels loaded)."""
    import signal

    logs = [stack.log_dir / f"worker{i}.log" for i in range(len(stack.procs))]
    for i in range(len(stack.procs)):
        stack.kill_worker(i, signal.SIGTERM)
    offsets = [log.stat().st_size for log in logs]
    t = time.time()
    for i in range(len(stack.procs)):
        stack.start_worker(i)
    ready = set()
    while time.time() - t < timeout:
        for i, (log, offset) in enumerate(zip(logs, offsets)):
            with log.open("rb") as f:
                f.seek(offset)
                if b"consuming" in f.read():
                    ready.add(i)
        if len(ready) == len(logs):
            return time.time() - t
        stack.check_workers()
        time.sleep(0.5)
    raise SystemExit(f"restarted workers {sorted(set(range(len(logs))) - ready)} not ready within {timeout:.0f} s")


def figures(db: Database, raw: dict) -> dict:
    """Latency per lane (file closed → alert stage done, → first alert), throughput, the
    largest backlog of each stage's input during the phase, statuses, dead letters."""
    ids = set(raw["ids"])
    exposures = {e["exposure_id"]: e for e in db.rows("exposures") if e["exposure_id"] in ids}
    runs = [r for r in db.rows("stage_runs") if r["exposure_id"] in ids]
    end = {(r["exposure_id"], r["lane"]): r["end"] for r in runs if r["stage"] == "alert" and r["end"]}
    first = first_alert_latency(db.rows("alerts"))
    out: dict = {"exposures": len(ids), "unfinished": raw["unfinished"],
                 "statuses": {s: sum(e["status"] == s for e in exposures.values())
                              for s in {e["status"] for e in exposures.values()}},
                 "dead_letters": sum(db.count("dead_letters", exposure_id=e) for e in ids)}
    for key, values in (("latency_s", {k: t - exposures[k[0]]["file_closed_at"] for k, t in end.items()}),
                        ("first_alert_latency_s", {k: v for k, v in first.items() if k[0] in ids})):
        out[key] = {}
        for lane in ("qip", "dip"):
            v = [x for (e, ln), x in values.items() if ln == lane]
            if v:
                out[key][lane] = {"n": len(v), "p50": float(np.percentile(v, 50)),
                                  "p95": float(np.percentile(v, 95)), "max": float(max(v))}
    done = {}
    for (e, _), t in end.items():
        done[e] = max(done.get(e, 0.0), t)
    closed = [e["file_closed_at"] for e in exposures.values()]
    out["throughput_per_min"] = 60 * len(done) / (max(done.values()) - min(closed)) if done else 0.0
    grid = np.arange(raw["t0"], raw["t_end"], 0.5)
    out["max_backlog"] = {f"{s}.{lane}": int(v.max()) for (s, lane), v in stage_backlog(db, grid).items() if v.any()}
    return out


def bytes_written(products: Path, exposure_ids: list[str]) -> dict:
    """Bytes under each exposure's product folder, and the templates' bytes."""
    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0

    live = products / "live"
    per = [size(live / e) for e in exposure_ids]
    return {"per_exposure_mb": {"mean": float(np.mean(per)) / 1e6 if per else None,
                                "max": float(np.max(per)) / 1e6 if per else None},
            "templates_mb": size(live / "templates") / 1e6}


def galaxy_catalogue(sim_dir: Path) -> Path:
    """The simulated galaxies as a partitioned catalogue folder, built once with astropy's CSV
    reader (so the run needs no pyarrow, which the GPU machine's carried packages leave out)."""
    from astropy.table import Table

    from ast3stream.catalogs.sky import META, build

    target = sim_dir / "galaxies.sky"
    if not (target / META).exists():
        t = Table.read(sim_dir / "galaxies.csv", format="ascii.csv")
        build([{"id": np.asarray(t["GLADE_no"], np.int64), "ra": np.asarray(t["RA"], float),
                "dec": np.asarray(t["Dec"], float), "dist_mpc": np.asarray(t["d_L"], float)}], target)
    return target


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--fields", type=int, default=2)
    ap.add_argument("--cadence", type=float, default=20.0, help="wall seconds between paced files")
    ap.add_argument("--paced", type=int, default=4)
    ap.add_argument("--burst", type=int, default=6)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--workers", type=int, default=1, help="worker processes sharing the GPU")
    ap.add_argument("--threads", type=int, help="stage threads per worker (default: CPU count / workers)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--cache", type=Path, default=Path("runs/fullframe-cache"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench-fullframe"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    t = time.time()
    sim_dir = args.cache / f"scale{args.scale:g}-seed{args.seed}-fields{args.fields}"
    night = simulate_night(sim_dir, n_exposures=2 * args.fields, scale=args.scale, seed=args.seed,
                           n_fields=args.fields)
    simulate_s = time.time() - t
    n = args.fields + args.paced + args.burst
    templates, science = make_night(night, n, args.out / "night", too_fields=1)
    print(f"{len(night.exposures)} frames simulated at scale {args.scale} in {simulate_s:.0f} s "
          f"({night.exposures[0].path}); night of {n} files", flush=True)
    data = args.out / "run"
    shutil.rmtree(data, ignore_errors=True)
    cfg = night_settings(night, data, watcher={"stable_s": 0.3, "poll_s": 0.1},
                         paths={"galaxies": galaxy_catalogue(sim_dir)}, kafka={"partitions": args.workers})
    db = Database.from_settings(cfg)
    paced, burst = science[:args.paced], science[args.paced:]
    t_start = time.time()
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.workers) if args.workers > 1 else None)
    with Stack(cfg, workers=args.workers, threads=threads) as stack:
        sampler = Sampler(cfg, stack.procs[0].pid)
        sampler.start()
        play(templates, cfg.watch_dir)
        left = wait_for(db, [p.stem for p in templates], args.timeout, stack, progress=lambda s: None, poll=0.2)
        if left:
            raise SystemExit(f"templates not finished: {left}")
        peak_before = _status_gb(stack.procs[0].pid, "VmHWM")
        restart_s = restart_workers(stack, args.timeout)
        sampler.pid = stack.procs[0].pid
        raws = {"paced": phase(stack, db, paced, args.cadence, args.timeout),
                "flat_out": phase(stack, db, burst, 0.0, args.timeout)}
        peak_rss = [_status_gb(p.pid, "VmHWM") for p in stack.procs]
        time.sleep(5.0)   # idle: what stays resident between exposures
        idle = {"rss_gb": _status_gb(stack.procs[0].pid, "VmRSS"), "smaps": smaps_summary(stack.procs[0].pid)}
        sampler.stop.set()
        sampler.join()
    runs = db.rows("stage_runs")
    print_stage_times(runs, f"per-stage seconds (scale {args.scale}, {n} exposures, {args.workers} worker(s))")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "simulate_s": simulate_s,
              "worker_start_to_end_s": time.time() - t_start, "restart_to_ready_s": restart_s}
    exposures = {e["exposure_id"]: e for e in db.rows("exposures")}
    end = {(r["exposure_id"], r["lane"]): r["end"] for r in runs if r["stage"] == "alert" and r["end"]}
    first_alert = first_alert_latency(db.rows("alerts"))
    first = paced[0].stem
    result["first_after_start"] = {
        lane: {"alert_stage_done_s": end[(first, lane)] - exposures[first]["file_closed_at"]
               if (first, lane) in end else None, "first_alert_s": first_alert.get((first, lane))}
        for lane in ("qip", "dip")}
    for name, raw in raws.items():
        result[name] = figures(db, raw)
    stages: dict = {}
    for r in runs:
        if r["end"] is not None and r["status"] == "done":
            stages.setdefault(f"{r['stage']}.{r['lane']}", []).append(r["end"] - r["start"])
    result["stages_s"] = {k: {"n": len(v), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
                          for k, v in stages.items()}
    rss = [r["rss_gb"] for r in sampler.rows if r["rss_gb"] is not None]
    gpu = [r["gpu_gb"] for r in sampler.rows if r["gpu_gb"] is not None]
    result["memory_gb"] = {"worker_peak_rss": max(peak_rss), "per_worker_peak_rss": peak_rss, "worker_peak_rss_templates_phase": peak_before, "idle": idle, "worker_rss_max_sampled": max(rss) if rss else None,
                           "gpu_used_max": max(gpu) if gpu else None}
    t0 = sampler.rows[0]["t"] if sampler.rows else t_start
    result["broker_lag_series"] = {"t": [round(r["t"] - t0, 1) for r in sampler.rows],
                                   "exposures": [sum(v for k, v in r["lag"].items() if ".exposures" in k)
                                                 for r in sampler.rows],
                                   "rss_gb": [None if r["rss_gb"] is None else round(r["rss_gb"], 2)
                                              for r in sampler.rows]}
    result["stage_runs"] = [[r["exposure_id"], r["lane"], r["stage"], round(r["start"] - t0, 1),
                             round(r["end"] - t0, 1)] for r in runs if r["end"] is not None]
    result["bytes"] = bytes_written(cfg.products_dir, [p.stem for p in science])
    (args.out / "summary.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("broker_lag_series",)}, indent=1))


if __name__ == "__main__":
    main()

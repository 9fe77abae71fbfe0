"""Where one exposure's chain holds host memory, stage by stage (no broker, one process).

    python -m bench.chain_memory [--scale 0.1] [--front-only] [--seed 13] [--out DIR] [--tracemalloc]

A simulated field's template, then a ToO science exposure of it (QIP lane, then DIP), go
through :func:`agents.chain.process_exposure` with the CPU backends. Around every stage the
process's peak resident memory is reset (``/proc/self/clear_refs``), so each stage's own
peak (``VmHWM``) is measured; after it, the arrays the chain still holds are listed by owner:
the exposure (reduced frame: data, mask, variance), each lane (aligned frame, difference:
diff, noise, mask, white; stamps), the worker's resident templates and the prepared
templates of :mod:`ast3stream.subtraction.subtract`, and the product store's pending writes.
``--front-only`` runs the template exposure alone (front half and template claim: a larger
scale fits, since the CPU SFFT of a DIP frame needs ~5 GB per 1.5 Mpx tile).
``--tracemalloc`` adds the largest live NumPy allocation sites (file:line) after each stage.
Sizes scale with the pixel count: ``x 1 / scale**2`` gives the full frame (14304 x 10748).
Written to ``memory.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np

from agents import chain as ch
from ast3stream import pipeline as pl
from ast3stream.simulate import simulate_night
from bench.load import make_night
from bench.night import night_settings


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _nbytes(obj) -> int:
    return int(obj.nbytes) if isinstance(obj, np.ndarray) else 0


def _frame(f) -> dict[str, int]:
    return {} if f is None else {"data": _nbytes(f.data), "mask": _nbytes(f.mask), "var": _nbytes(f.var)}


def held(exp: pl.Exposure | None, res: ch.Resources) -> dict[str, float]:
    """MB of the arrays the chain and the worker hold, by owner and array."""
    import importlib

    sub = importlib.import_module("ast3stream.subtraction.subtract")

    out: dict[str, int] = {}

    def add(prefix: str, parts: dict[str, int]) -> None:
        for k, v in parts.items():
            if v:
                out[f"{prefix}.{k}"] = out.get(f"{prefix}.{k}", 0) + v

    if exp is not None:
        add("exposure.frame", _frame(exp.frame))
        for name, lane in exp.lanes.items():
            add(f"{name}.aligned", _frame(lane.aligned))
            d = lane.difference
            if d is not None:
                add(f"{name}.difference", {k: _nbytes(getattr(d, k)) for k in ("diff", "noise", "mask", "white")})
            add(name, {"stamps": _nbytes(lane.stamps)})
    for tmpl in res._templates.values():
        add(f"resident_templates.{tmpl.binning}x", _frame(tmpl.frame))
    for prep, _stars in list(sub._TEMPLATES.values()) + list(sub._BY_ID.values()):
        add("prepared_templates", {k: _nbytes(getattr(prep, k)) for k in ("sub", "mask", "bad", "rms", "var")})
    out_mb = {k: v / 1e6 for k, v in sorted(out.items())}
    out_mb["store_pending_writes"] = len(res.store._pending)
    return out_mb


def instrument(rows: list[dict], res: ch.Resources, sites: bool) -> None:
    """Wrap every stage function to record its time, own peak RSS and what is held after it."""
    for st in (*pl.STAGES, pl.SLOW):
        func = st.func

        def wrapped(exp, *lane, _func=func, _name=st.name, **kw):
            gc.collect()
            before = _status_mb("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
            if sites:
                tracemalloc.reset_peak()
            t = time.time()
            out = _func(exp, *lane, **kw)
            row = {"stage": _name, "lane": lane[0].name if lane else "", "exposure": exp.exposure_id,
                   "s": round(time.time() - t, 2), "rss_before_mb": round(before),
                   "peak_mb": round(_status_mb("VmHWM")), "rss_after_mb": round(_status_mb("VmRSS"))}
            if sites:
                row["traced_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 1e6)
            gc.collect()
            row["held_mb"] = {k: round(v, 1) for k, v in held(exp, res).items()}
            if sites:
                snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, 389047)])
                row["numpy_sites_mb"] = {str(s.traceback[0]): round(s.size / 1e6, 1)
                                         for s in snap.statistics("lineno")[:8] if s.size > 1e6}
            rows.append(row)
            print(f"{_name:<12}{row['lane']:<4} {row['s']:7.1f} s  peak {row['peak_mb']:6d} MB  "
                  f"after {row['rss_after_mb']:6d} MB  held {sum(v for k, v in row['held_mb'].items() if k != 'store_pending_writes'):8.1f} MB",
                  flush=True)
            return out

        object.__setattr__(st, "func", wrapped)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--front-only", action="store_true")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path("runs/fullframe-cache"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench-chain-memory"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sim_dir = args.cache / f"scale{args.scale:g}-seed{args.seed}-fields1"
    night = simulate_night(sim_dir, n_exposures=2, scale=args.scale, seed=args.seed, n_fields=1, reuse=True)
    templates, science = make_night(night, 2, args.out / "night", too_fields=1)
    cfg = night_settings(night, args.out / "run", reduction={"backend": "numpy"},
                         subtraction={"backend": "numpy"}, detection={"backend": "numpy"})
    res = ch.Resources(cfg)
    rows: list[dict] = []
    if args.tracemalloc:
        tracemalloc.start(1)
    instrument(rows, res, args.tracemalloc)
    for path in templates if args.front_only else (*templates, *science):
        t = time.time()
        ch.process_exposure(path, res)
        gc.collect()
        rows.append({"stage": "end of chain", "exposure": path.stem, "s": round(time.time() - t, 1),
                     "rss_after_mb": round(_status_mb("VmRSS")), "held_mb": held(None, res)})
        print(f"{path.stem}: {rows[-1]['s']} s, RSS after {rows[-1]['rss_after_mb']} MB", flush=True)
    (args.out / "memory.json").write_text(json.dumps({"scale": args.scale, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

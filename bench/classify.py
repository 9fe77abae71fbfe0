"""Classifier inference throughput (stamps/s, thumbnails/s) with the shipped weights.

    python -m bench.classify [--device cpu|cuda] [--n 2048] [--batch 256] [--ztf]

``--ztf`` also scores the real ZTF alert triplets in ../shared/data/alerts/ztf and prints the
agreement with ZTF's own ``drb`` and ``rb`` scores (a generalisation check).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def _time(fn, repeat: int = 3) -> float:
    fn()                                   # warm-up (allocations, cudnn autotune)
    best = np.inf
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> None:
    from ast3stream.classify import RealBogus
    from ast3stream.classify.cloud import load_cloud_model, to_input
    from ast3stream.classify.stamps import pipeline_stamps
    from ast3stream.classify.synth import simulate_set
    from ast3stream.classify.train import predict_proba

    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--ztf", action="store_true")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    results = {}
    for lane in ("qip", "dip"):
        rb = RealBogus.load(lane, device=args.device, batch_size=args.batch)
        base = simulate_set(64, 64, lane, seed=99)
        reps = int(np.ceil(args.n / len(base["stamps"])))
        stamps = np.concatenate([base["stamps"]] * reps)[:args.n]
        fwhm = np.concatenate([base["fwhm"]] * reps)[:args.n]
        total = _time(lambda: rb.score(stamps, fwhm))
        norm = _time(lambda: pipeline_stamps(stamps, fwhm))
        results[lane] = dict(version=rb.version, stamps_per_s=round(args.n / total, 1),
                             normalise_share=round(norm / total, 3))
        print(f"{lane}: {args.n / total:8.1f} stamps/s (batch {args.batch}, {stamps.shape[-1]}x{stamps.shape[-1]}, "
              f"normalisation {100 * norm / total:.0f} % of it)  {rb.version}")
    model, info, _ = load_cloud_model(device=args.device)
    rng = np.random.default_rng(0)
    thumbs = rng.random((32, 256, 256), dtype=np.float32)
    tmaps = rng.normal(0.0, 0.1, (32, 32, 32)).astype(np.float32)          # transparency maps [mag]
    t = _time(lambda: predict_proba(model, to_input(thumbs, tmaps), dev, 32))
    results["cloud"] = dict(version=info["version"], thumbnails_per_s=round(32 / t, 1))
    print(f"cloud: {32 / t:8.1f} thumbnails/s  {info['version']}")
    if args.ztf:
        from ast3stream.classify.alertset import load_alert_set
        from ast3stream.classify.evaluate import versus_baseline

        shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "alerts" / "ztf"
        alerts = load_alert_set([shared], surveys=("ztf",))
        for lane in ("qip", "dip"):
            scores = RealBogus.load(lane, device=args.device).score_inputs(alerts["stamps"])
            results[f"ztf_{lane}"] = dict(versus_baseline(alerts["label"], scores, alerts["peak_snr"]),
                                          frac_real=float(np.mean(scores > 0.5)))
            print(f"ZTF {lane}: {json.dumps(results[f'ztf_{lane}'])}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

"""``ast3stream classify build-set | train | eval | cloud-train`` (argparse)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("classify", help="real/bogus and cloud classifiers")
    sub = p.add_subparsers(dest="classify_cmd", required=True)

    b = sub.add_parser("build-set", help="build a versioned real/bogus stamp set (.npz + .json)")
    b.add_argument("--lane", choices=("qip", "dip"), required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--source", choices=("synthetic", "pipeline"), default="synthetic")
    b.add_argument("--sim-dir", type=Path, help="pipeline source: work folder for the simulated nights")
    b.add_argument("--n-real", type=int)
    b.add_argument("--n-bogus", type=int)
    b.add_argument("--seed", type=int)
    b.add_argument("--workers", type=int, default=1)
    b.add_argument("--no-compress", action="store_true", help="plain .npz (fast for large scratch sets)")
    b.set_defaults(func=_build_set)

    t = sub.add_parser("train", help="train a real/bogus network")
    t.add_argument("--lane", choices=("qip", "dip"), required=True)
    t.add_argument("--train", type=Path, nargs="+", required=True, help="training set(s) (.npz from build-set)")
    t.add_argument("--init", type=Path, help="start from these weights (fine-tuning) instead of random")
    t.add_argument("--val", type=Path, required=True, help="held-out set, evaluated into the weights' JSON")
    t.add_argument("--out", type=Path, required=True, help="weights file rb_<lane>.pt (+ .json, .png)")
    _training_args(t)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate weights on a set: JSON + ROC/DET PNG")
    e.add_argument("--lane", choices=("qip", "dip"), required=True)
    e.add_argument("--set", type=Path, required=True)
    e.add_argument("--weights", type=Path, help="default: the shipped rb_<lane>.pt")
    e.add_argument("--out-json", type=Path, required=True)
    e.add_argument("--out-png", type=Path, required=True)
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_eval)

    c = sub.add_parser("cloud-train", help="train the cloud classifier on frame-simulator nights")
    c.add_argument("--out", type=Path, required=True, help="weights file cloud.pt (+ .json, .png)")
    c.add_argument("--train-seeds", type=int, nargs=2, default=(1, 35), metavar=("FIRST", "STOP"),
                   help="simulated nights range(FIRST, STOP), see cloud_frames.night_plan")
    c.add_argument("--val-seeds", type=int, nargs=2, default=(9101, 9126), metavar=("FIRST", "STOP"))
    c.add_argument("--init", type=Path, help="fine-tune these weights instead of starting afresh")
    c.add_argument("--drop-maps", type=float, default=0.1, help="fraction of training maps left out")
    c.add_argument("--workers", type=int, default=1)
    _training_args(c)
    c.set_defaults(func=_cloud_train)


def _training_args(p) -> None:
    for name, typ in (("epochs", int), ("batch-size", int), ("lr", float), ("gamma", float),
                      ("weight-decay", float), ("width", int), ("seed", int)):
        p.add_argument(f"--{name}", type=typ, help="default: settings.training")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-seconds", type=float, help="stop after the epoch that passes this wall time")


def _settings(args):
    from ..config import Settings

    cfg = Settings.load(getattr(args, "config", None)).training
    for key in ("epochs", "batch_size", "lr", "gamma", "weight_decay", "width", "seed", "n_real", "n_bogus"):
        if getattr(args, key, None) is not None:
            cfg = cfg.model_copy(update={key: getattr(args, key)})
    return cfg


def _build_set(args) -> None:
    from .dataset import build_synthetic, save_dataset

    cfg = _settings(args)
    if args.source == "synthetic":
        data = build_synthetic(args.lane, cfg.n_real, cfg.n_bogus, cfg.seed, (cfg.snr_min, cfg.snr_max),
                               workers=args.workers)
        manifest = save_dataset(args.out, data, args.lane, compress=not args.no_compress, source="synthetic",
                                seed=cfg.seed,
                                snr_range=[cfg.snr_min, cfg.snr_max])
    else:
        from .pipeline_set import build_from_pipeline

        data, provenance = build_from_pipeline((args.lane,), args.sim_dir, cfg.n_real, cfg.n_bogus,
                                               cfg.seed)[args.lane]
        manifest = save_dataset(args.out, data, args.lane, compress=not args.no_compress, source="pipeline",
                                **provenance)
    print(json.dumps(manifest, indent=1))


def _train(args) -> None:
    from .dataset import concat, load_dataset
    from .evaluate import evaluate
    from .model import RotationInvariantResNet
    from .stamps import normalise
    from .train import fit, load_weights, pick_device, predict_proba, save_weights

    cfg = _settings(args)
    sets = [load_dataset(path) for path in args.train]
    tr = concat(*(data for data, _ in sets))
    va, va_manifest = load_dataset(args.val)
    x, xv = normalise(tr["stamps"]), normalise(va["stamps"])
    if args.init is not None:
        model, init_info = load_weights(args.init)
        if model.config["lane"] != args.lane:
            raise ValueError(f"{args.init} is a {model.config['lane']} model, not {args.lane}")
    else:
        model, init_info = RotationInvariantResNet(args.lane, width=cfg.width), {}
    history = fit(model, x, tr["label"], xv, va["label"], epochs=cfg.epochs, batch_size=cfg.batch_size,
                  lr=cfg.lr, gamma=cfg.gamma, weight_decay=cfg.weight_decay, seed=cfg.seed,
                  device=args.device, max_seconds=args.max_seconds)
    scores = predict_proba(model, xv, pick_device(args.device))
    out = args.out.with_suffix(".pt")
    metrics = evaluate(va["label"], scores, va["snr"], va["kind"], va_manifest.get("kinds"),
                       out_png=out.with_suffix(".png"), title=f"rb-{args.lane} held-out {va_manifest.get('version')}")
    info = save_weights(model, out, f"rb-{args.lane}", stamp_size=int(x.shape[-1]),
                        normalisation="ast3stream.classify.stamps.normalise",
                        training=dict(cfg.model_dump(), device=str(pick_device(args.device)),
                                      train_sets=[m.get("version") for _, m in sets],
                                      init=init_info.get("version"), history=history),
                        heldout_set=va_manifest.get("version"), metrics=metrics)
    print(json.dumps({k: info[k] for k in ("version",)} | {"metrics": {k: metrics[k] for k in (
        "accuracy", "precision", "recall", "f1", "roc_auc", "fnr_at_fpr1")}}))


def _eval(args) -> None:
    from .dataset import load_dataset
    from .evaluate import evaluate
    from .realbogus import RealBogus

    rb = RealBogus.load(args.lane, args.device, path=args.weights)
    data, manifest = load_dataset(args.set)
    scores = rb.score(data["stamps"])
    res = evaluate(data["label"], scores, data["snr"], data["kind"], manifest.get("kinds"),
                   out_json=args.out_json, out_png=args.out_png, title=f"{rb.version} on {manifest.get('version')}",
                   model_version=rb.version, set_version=manifest.get("version"))
    print(json.dumps({k: res[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "fnr_at_fpr1")}))


def _cloud_train(args) -> None:
    from .cloud import to_input, train_cloud
    from .cloud_frames import frame_thumbnails
    from .evaluate import evaluate
    from .train import pick_device, predict_proba, save_weights

    cfg = _settings(args)
    tr = frame_thumbnails(range(*args.train_seeds), workers=args.workers)
    va = frame_thumbnails(range(*args.val_seeds), workers=args.workers)
    model, history = train_cloud(tr["thumbs"], tr["tmaps"], tr["label"], va["thumbs"], va["tmaps"], va["label"],
                                 init=args.init, drop_maps=args.drop_maps, epochs=cfg.epochs,
                                 batch_size=cfg.batch_size, lr=cfg.lr, gamma=cfg.gamma,
                                 weight_decay=cfg.weight_decay, seed=cfg.seed, device=args.device,
                                 max_seconds=args.max_seconds)
    scores = predict_proba(model, to_input(va["thumbs"], va["tmaps"]), pick_device(args.device))
    out = args.out.with_suffix(".pt")
    depth_bins = np.digitize(va["depth"], [1e-6, 0.4, 0.8])      # clear, <0.4, 0.4-0.8, >0.8 mag
    metrics = evaluate(va["label"], scores, kind=depth_bins, kinds=["clear", "<0.4mag", "0.4-0.8mag", ">0.8mag"],
                       out_png=out.with_suffix(".png"), title="cloud held-out (frame simulator)")
    info = save_weights(model, out, "cloud", release="2.0", thumbnail_size=256,
                        training=dict(cfg.model_dump(), train_seeds=list(args.train_seeds),
                                      device=str(pick_device(args.device)), history=history),
                        heldout=f"frame_thumbnails(range{tuple(args.val_seeds)})", metrics=metrics)
    print(json.dumps({"version": info["version"], "accuracy": metrics["accuracy"]}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="ast3stream")
    parser.add_argument("--config", type=Path)
    add_cli(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

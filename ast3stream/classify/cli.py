"""``ast3stream classify build-set | train | train-real | eval | eval-real | score | cloud-train`` (argparse)."""
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
    b.add_argument("--from-images", type=Path, nargs="+", metavar="DIR",
                   help="real images: PSF fakes through alignment+subtraction+detection (classify.images)")
    b.add_argument("--from-alerts", type=Path, nargs="+", metavar="DIR",
                   help="real alerts of any survey, weakly labelled by their rb/drb/reliability (classify.alertset)")
    b.add_argument("--per-frame", type=int, default=80, help="--from-images: fakes per science frame")
    b.add_argument("--exclude-radec", type=float, nargs=2, action="append", default=[], metavar=("RA", "DEC"),
                   help="--from-images: known variables/transients whose detections are not bogus (repeatable)")
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

    r = sub.add_parser("train-real", help="the shipped recipe: simulator + real-image fakes + real alerts, "
                                          "cross-validated by night/object, calibrated, thresholded")
    r.add_argument("--alerts", type=Path, required=True, help="alert set (.npz from build-set --from-alerts)")
    r.add_argument("--images", type=Path, required=True, help="image set (.npz from build-set --from-images)")
    r.add_argument("--out-dir", type=Path, required=True, help="writes rb_qip.*, rb_dip.*, eval.json, eval.png")
    r.add_argument("--folds", type=int, default=3)
    r.add_argument("--n-synth", type=int, default=400, help="simulator stamps per class and lane")
    r.add_argument("--target-fpr", type=float, default=0.01, help="alert threshold: FPR cap on simulator bogus")
    r.add_argument("--n-threshold", type=int, default=5000,
                   help="fresh simulator stamps per class and lane that set the thresholds")
    for name, typ, default in (("epochs", int, 8), ("width", int, 16), ("seed", int, 0), ("threads", int, 1),
                               ("workers", int, 1), ("batch-size", int, 128), ("lr", float, 3e-3)):
        r.add_argument(f"--{name}", type=typ, default=default)
    r.add_argument("--max-seconds", type=float, help="cap on each fold's training time")
    r.add_argument("--networks", type=Path, help="reuse the network and out-of-fold margins of an earlier run's "
                                                 "--out-dir (rb_dip.pt, crossval.npz): refit the combiner only")
    r.add_argument("--arch", nargs="+", choices=("braai", "resnet18"), default=["braai"],
                   help="several: cross-validated on the same folds, the better ZTF AUC shipped")
    r.add_argument("--device", default="cpu")
    r.set_defaults(func=_train_real)

    th = sub.add_parser("threshold", help="re-choose the alert threshold of trained weights (rb_qip, rb_dip) on a "
                                          "fresh simulator set; rewrites their JSON with a new release")
    th.add_argument("--weights-dir", type=Path, help="folder with rb_qip/rb_dip (default: the shipped models)")
    th.add_argument("--release", required=True, help="new release of the version, e.g. 3.1 (the .pt is unchanged)")
    th.add_argument("--target-fpr", type=float, default=0.01)
    th.add_argument("--n", type=int, default=5000, help="simulator stamps per class and lane")
    th.add_argument("--seed", type=int, default=0, help="the training seed (train-real --seed)")
    th.add_argument("--workers", type=int, default=1)
    th.set_defaults(func=_threshold)

    v = sub.add_parser("eval-real", help="shipped (or given) weights on real alerts per survey vs peak SNR")
    v.add_argument("--alerts", type=Path, required=True, help="alert set (.npz from build-set --from-alerts)")
    v.add_argument("--weights", type=Path, help="default: the shipped rb_dip.pt")
    v.add_argument("--out-json", type=Path, required=True)
    v.add_argument("--out-png", type=Path)
    v.set_defaults(func=_eval_real)

    sc = sub.add_parser("score", help="real/bogus scores of foreign alerts (Avro/Parquet files or folders), both lanes")
    sc.add_argument("alerts", type=Path, nargs="+")
    sc.add_argument("--weights-dir", type=Path, help="folder with rb_qip/rb_dip (default: the shipped models)")
    sc.add_argument("--json", type=Path, help="one record per alert plus the summary")
    sc.set_defaults(func=_score)

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
    if args.from_images:
        from .images import IMAGE_KINDS, build_from_images

        data, provenance = build_from_images(args.from_images, per_frame=args.per_frame, seed=cfg.seed,
                                             exclude_radec=args.exclude_radec, workers=args.workers)
        provenance.pop("kinds")
        manifest = save_dataset(args.out, data, args.lane, kinds=IMAGE_KINDS, source="images",
                                dirs=[str(d) for d in args.from_images], **provenance)
    elif args.from_alerts:
        from .alertset import load_alert_set

        data = load_alert_set(args.from_alerts, log=print)
        manifest = save_dataset(args.out, data, args.lane, kinds=["alert"], source="alerts",
                                dirs=[str(d) for d in args.from_alerts],
                                labels="ref > 0.5, ref = drb | rb | reliability | atlas_real")
    elif args.source == "synthetic":
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
    from .train import fit, load_weights, pick_device, predict_proba, save_weights

    cfg = _settings(args)
    sets = [load_dataset(path) for path in args.train]
    tr = concat(*(data for data, _ in sets))
    va, va_manifest = load_dataset(args.val)
    x, xv = tr["stamps"], va["stamps"]                      # model inputs (classify.stamps)
    if args.init is not None:
        model, init_info = load_weights(args.init)
        if model.config["lane"] != args.lane:
            raise ValueError(f"{args.init} is a {model.config['lane']} model, not {args.lane}")
    else:
        model, init_info = RotationInvariantResNet(args.lane, width=cfg.width, stem=(3, 1)), {}
    history = fit(model, x, tr["label"], xv, va["label"], epochs=cfg.epochs, batch_size=cfg.batch_size,
                  lr=cfg.lr, gamma=cfg.gamma, weight_decay=cfg.weight_decay, seed=cfg.seed,
                  device=args.device, max_seconds=args.max_seconds)
    scores = predict_proba(model, xv, pick_device(args.device))
    out = args.out.with_suffix(".pt")
    metrics = evaluate(va["label"], scores, va["snr"], va["kind"], va_manifest.get("kinds"),
                       out_png=out.with_suffix(".png"), title=f"rb-{args.lane} held-out {va_manifest.get('version')}")
    info = save_weights(model, out, f"rb-{args.lane}", stamp_size=int(x.shape[-1]),
                        normalisation="ast3stream.classify.stamps.make_stamp",
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
    scores = rb.score_inputs(data["stamps"])
    res = evaluate(data["label"], scores, data["snr"], data["kind"], manifest.get("kinds"),
                   threshold=float(rb.info.get("threshold", 0.5)),
                   out_json=args.out_json, out_png=args.out_png, title=f"{rb.version} on {manifest.get('version')}",
                   model_version=rb.version, set_version=manifest.get("version"))
    print(json.dumps({k: res[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "fnr_at_fpr1")}))


def _real_groups(alerts: dict, p: np.ndarray, sel: np.ndarray) -> dict:
    ok = sel & np.isfinite(alerts["ref"])
    return {str(s): (alerts["label"][ok & (alerts["survey"] == s)], p[ok & (alerts["survey"] == s)],
                     alerts["peak_snr"][ok & (alerts["survey"] == s)])
            for s in np.unique(alerts["survey"][ok])}


def _lanes(sim: dict, n_per_lane: int) -> dict:
    """``synthetic_inputs`` of both lanes (QIP first) with the lane of each stamp."""
    return dict(sim, lane=np.repeat(["qip", "dip"], n_per_lane))


def _train_real(args) -> None:
    import torch

    from .dataset import load_dataset
    from .evaluate import plot_real, versus_baseline
    from .hybrid import BOOST, INPUTS, fit_hybrid, report, simulator_thresholds
    from .realbogus import logit_margin
    from .recipe import SHARES, crossval, synthetic_inputs
    from .synth import KINDS
    from .train import pick_device, save_weights

    torch.set_num_threads(args.threads)
    alerts, a_manifest = load_dataset(args.alerts)
    images, i_manifest = load_dataset(args.images)
    # the combiner's simulator rows (never seen by the networks) and the simulator test set, per lane
    sim = _lanes(synthetic_inputs(args.n_synth // 4, args.n_synth // 4, args.seed + 500, workers=args.workers),
                 args.n_synth // 2)
    sim_test = _lanes(synthetic_inputs(300, 300, args.seed + 1000, workers=args.workers), 600)
    ztf_all = (alerts["survey"] == "ztf") & np.isfinite(alerts["ref"])
    runs, comparison, old = {}, {}, {}
    if args.networks:
        from .train import load_weights

        model, old = load_weights(args.networks / "rb_dip.pt", pick_device(args.device))
        with np.load(args.networks / "crossval.npz") as z:
            runs[old["arch"]] = dict({k: z[k] for k in z.files if k != "sim_margin"}, model=model)
        args.arch = [old["arch"]]
    synth = synthetic_inputs(args.n_synth, args.n_synth, args.seed, workers=args.workers) if not args.networks else None
    for arch in args.arch:           # every architecture on the same folds, the better one shipped
        if arch in runs:
            comparison[arch] = dict(versus_baseline(alerts["label"][ztf_all & runs[arch]["heldout"]],
                                                    runs[arch]["oof_alert"][ztf_all & runs[arch]["heldout"]],
                                                    alerts["peak_snr"][ztf_all & runs[arch]["heldout"]]),
                                    n_params=int(sum(p.numel() for p in model.parameters())))
            continue
        runs[arch] = crossval(alerts, images, synth, k=args.folds, epochs=args.epochs, width=args.width,
                              seed=args.seed, arch=arch, device=args.device, batch_size=args.batch_size, lr=args.lr,
                              max_seconds=args.max_seconds)
        sel = ztf_all & runs[arch]["heldout"]
        comparison[arch] = dict(versus_baseline(alerts["label"][sel], runs[arch]["oof_alert"][sel],
                                                alerts["peak_snr"][sel]),
                                n_params=int(sum(p.numel() for p in runs[arch]["model"].parameters())))
        print(json.dumps({arch: comparison[arch]}), flush=True)
    best = max(comparison, key=lambda k: comparison[k].get("roc_auc", 0.0))
    cv = runs[best]
    dev = pick_device(args.device)         # the network stays where it trained
    model = cv["model"]
    sim_margin = logit_margin(model, sim["stamps"], dev)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out_dir / "crossval.npz", sim_margin=sim_margin,   # the combiner's network inputs
                        **{k: v for k, v in cv.items() if k != "model"})
    hyb = fit_hybrid(alerts, images, sim, cv, sim_margin, k=args.folds, seed=args.seed)
    meta = dict(stamp_size=32, normalisation="ast3stream.classify.stamps.make_stamp",
                hybrid=dict(inputs=list(INPUTS), features="ast3stream.classify.features.stamp_features",
                            boost=hyb["boost"]),
                calibration=dict(method="platt", of="hybrid out-of-fold margins", a=hyb["a"], b=hyb["b"]),
                training=dict(recipe="ast3stream.classify.recipe + ast3stream.classify.hybrid", arch=best,
                              compared=list(args.arch), folds=args.folds, epochs=args.epochs, lr=args.lr,
                              max_seconds=args.max_seconds, shares=SHARES, boost=BOOST, batch_size=args.batch_size,
                              device=args.device, width=args.width, seed=args.seed, n_synth=args.n_synth,
                              alert_set=a_manifest.get("version"), image_set=i_manifest.get("version"),
                              image_groups=i_manifest.get("groups"), synth_kinds=list(KINDS),
                              networks_from=old.get("training")))
    info = save_weights(model, args.out_dir / "rb_dip.pt", "rb-dip", release="3.0", **meta)
    from .realbogus import RealBogus

    rb = RealBogus(model, info, dev)
    cal = simulator_thresholds({"qip": rb.score_inputs, "dip": rb.score_inputs}, target_fpr=args.target_fpr,
                               n=args.n_threshold, seed=args.seed + 1500, snr_range=_snr_range(args),
                               workers=args.workers)
    thresholds = {lane: cal[lane]["threshold"] for lane in ("qip", "dip")}
    meta.update(thresholds=thresholds, target_fpr=args.target_fpr, threshold_calibration=cal)
    p_all, p_sim = rb.score_inputs(alerts["stamps"]), rb.score_inputs(sim_test["stamps"])
    rep = dict(architectures=comparison, shipped_arch=best,
               **report(alerts, images, cv, hyb, k=args.folds, thresholds=thresholds, sim_test=sim_test,
                        sim_test_p=p_sim, untrained_p=p_all))
    info = save_weights(model, args.out_dir / "rb_dip.pt", "rb-dip", release="3.0", metrics=rep,
                        threshold=thresholds["dip"], **meta)
    model.config["lane"] = "qip"
    save_weights(model, args.out_dir / "rb_qip.pt", "rb-qip", release="3.0", metrics=rep,
                 threshold=thresholds["qip"], **meta)
    model.config["lane"] = "dip"
    (args.out_dir / "eval.json").write_text(json.dumps(dict(version=info["version"], **rep), indent=1, default=float))
    print(json.dumps(dict(version=info["version"], **rep), indent=1, default=float))
    ztf = ztf_all & cv["heldout"]
    groups = {"ztf (cross-val)": (alerts["label"][ztf], hyb["oof"]["alerts"][ztf], alerts["peak_snr"][ztf])}
    for s in ("rubin",):
        sel = (alerts["survey"] == s) & np.isfinite(alerts["ref"])
        groups[s] = (alerts["label"][sel], p_all[sel], alerts["peak_snr"][sel])
    groups["image fields (held out)"] = (images["label"], hyb["oof"]["images"], images["snr"])
    groups["simulator"] = (sim_test["label"], p_sim, sim_test["snr"])
    plot_real(groups, args.out_dir / "eval.png", title=f"{info['version']} held out: model (solid) vs peak SNR (dashed)")


def _snr_range(args) -> tuple[float, float]:
    """The simulated stamps' SNR range of the configuration (``training.snr_min``/``snr_max``)."""
    from ..config import Settings

    cfg = Settings.load(getattr(args, "config", None)).training
    return cfg.snr_min, cfg.snr_max


def _threshold(args) -> None:
    from .hybrid import simulator_figures, simulator_thresholds
    from .realbogus import MODELS_DIR, RealBogus
    from .recipe import synthetic_inputs

    wdir = args.weights_dir or MODELS_DIR
    models = {lane: RealBogus.load(lane, "cpu", path=wdir / f"rb_{lane}.pt") for lane in ("qip", "dip")}
    score = {lane: m.score_inputs for lane, m in models.items()}
    cal = simulator_thresholds(score, target_fpr=args.target_fpr, n=args.n, seed=args.seed + 1500,
                               snr_range=_snr_range(args), workers=args.workers)
    thresholds = {lane: cal[lane]["threshold"] for lane in models}
    test = _lanes(synthetic_inputs(300, 300, args.seed + 1000, workers=args.workers), 600)   # = train-real's
    p = np.concatenate([score[lane](test["stamps"][test["lane"] == lane]) for lane in ("qip", "dip")])
    sims = simulator_figures(test, p, thresholds)
    for lane, m in models.items():
        path = wdir / f"rb_{lane}.json"
        info = json.loads(path.read_text())
        name, sha = info["version"].split("+")
        metrics = info.get("metrics", {})
        if "thresholds" in metrics:    # the other at-threshold figures need the out-of-fold scores of train-real
            metrics["thresholds_of_other_figures"] = dict(metrics.pop("thresholds"), release=name.rsplit("-", 1)[1])
        metrics["simulator"] = sims
        info.update(version=f"{name.rsplit('-', 1)[0]}-{args.release}+{sha}", threshold=thresholds[lane],
                    thresholds=thresholds, target_fpr=args.target_fpr, threshold_calibration=cal, metrics=metrics)
        path.write_text(json.dumps(info, indent=1, default=float))
    print(json.dumps(dict(versions={lane: json.loads((wdir / f"rb_{lane}.json").read_text())["version"]
                                    for lane in models}, calibration=cal, simulator=sims), indent=1, default=float))


def _eval_real(args) -> None:
    from .dataset import load_dataset
    from .evaluate import plot_real, versus_baseline
    from .realbogus import RealBogus

    rb = RealBogus.load("dip", "cpu", path=args.weights)
    alerts, _ = load_dataset(args.alerts)
    p = rb.score_inputs(alerts["stamps"])
    groups = _real_groups(alerts, p, np.ones(len(p), bool))
    report = dict(version=rb.version, threshold=rb.info.get("threshold"),
                  **{name: versus_baseline(*g) for name, g in groups.items()})
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=1, default=float))
    if args.out_png:
        plot_real(groups, args.out_png, title=f"{rb.version} on {args.alerts.name}")
    print(json.dumps(report, indent=1, default=float))


def _score(args) -> None:
    from ..alerts.reader import read_alerts, stamp_triplet
    from .alertset import REF_ORDER, peak_snr, reference
    from .evaluate import versus_baseline
    from .realbogus import RealBogus
    from .stamps import alert_stamp

    models = {lane: RealBogus.load(lane, "cpu", path=args.weights_dir / f"rb_{lane}.pt" if args.weights_dir else None)
              for lane in ("qip", "dip")}
    records, stamps = [], []
    for source in args.alerts:
        for v in read_alerts(source):
            t = stamp_triplet(v)
            if t is None:
                continue
            stamps.append(alert_stamp(t, models["dip"].stamp_size))
            records.append(dict(survey=v.survey, id=int(v.candid), object_id=v.object_id, mjd=float(v.mjd),
                                **{k: v.scores[k] for k in REF_ORDER if k in v.scores}))
    x = np.stack(stamps) if stamps else np.zeros((0, 4, models["dip"].stamp_size, models["dip"].stamp_size), np.float32)
    scores = {lane: m.score_inputs(x) for lane, m in models.items()}
    for i, r in enumerate(records):
        r.update({f"score_{lane}": float(scores[lane][i]) for lane in models})
        print(f"{r['survey']:6s} {r['object_id']:>22s} {r['id']:>20d} {r['mjd']:.5f} qip {r['score_qip']:.4f} "
              f"dip {r['score_dip']:.4f} " + " ".join(f"{k}={r[k]:.3f}" for k in REF_ORDER if k in r))
    ref = np.array([reference(r) for r in records], float)
    ok = np.isfinite(ref)
    surveys = np.array([r["survey"] for r in records])
    summary = dict(models={lane: m.version for lane, m in models.items()}, n=len(records),
                   thresholds={lane: m.info.get("threshold") for lane, m in models.items()},
                   n_above_threshold={lane: int(np.sum(scores[lane] >= (models[lane].info.get("threshold") or 0.5)))
                                      for lane in models})
    if ok.any():
        base = peak_snr(x)
        summary["vs_reference"] = {lane: versus_baseline(ref[ok] > 0.5, scores[lane][ok], base[ok]) for lane in models}
        summary["vs_reference_by_survey"] = {
            str(sv): versus_baseline(ref[ok & (surveys == sv)] > 0.5, scores["dip"][ok & (surveys == sv)],
                                     base[ok & (surveys == sv)]) for sv in np.unique(surveys[ok])}
    print(json.dumps(summary, default=float))
    if args.json:
        args.json.write_text(json.dumps(dict(alerts=records, summary=summary), indent=1, default=float))


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

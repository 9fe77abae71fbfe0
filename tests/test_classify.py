"""Classifiers: rotation invariance, shipped weights, training, evaluation, cloud CNN, real ZTF stamps."""
from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import torch

from ast3stream.classify import RealBogus
from ast3stream.classify.cloud import make_thumbnail, predict_cloudy, simulate_thumbnails
from ast3stream.classify.dataset import build_synthetic, load_dataset, save_dataset
from ast3stream.classify.evaluate import evaluate
from ast3stream.classify.model import RotationInvariantBraai, RotationInvariantResNet
from ast3stream.classify.stamps import SIZE, make_stamp, pipeline_stamps
from ast3stream.classify.synth import BOGUS_KINDS, KINDS, REAL_KINDS, simulate_set
from ast3stream.classify.train import fit, load_weights, predict_proba, save_weights

HELDOUT_SEED = 424242      # the shipped weights were trained on simulator seeds 0-13


@pytest.fixture(scope="module", params=["qip", "dip"])
def shipped(request):
    return RealBogus.load(request.param, device="cpu")


def test_rotation_invariance_exact_untrained():
    torch.manual_seed(0)
    model = RotationInvariantResNet("dip", width=8, hidden=(32, 16)).eval()
    x = torch.randn(3, 4, 91, 91)
    with torch.no_grad():
        ref = model(x)
        for k in (1, 2, 3):
            assert torch.allclose(model(torch.rot90(x, k, dims=(2, 3))), ref, atol=1e-5)
    small = RotationInvariantBraai("dip", width=8).eval()
    x = torch.randn(3, 4, SIZE, SIZE)
    with torch.no_grad():
        assert all(torch.allclose(small(torch.rot90(x, k, dims=(2, 3))), small(x), atol=1e-5) for k in (1, 2, 3))


def test_rotation_invariance_shipped(shipped):
    data = simulate_set(8, 8, shipped.lane, seed=HELDOUT_SEED)
    s0 = shipped.score(data["stamps"], data["fwhm"])
    for k in (1, 2, 3):
        sk = shipped.score(np.rot90(data["stamps"], k, axes=(2, 3)).copy(), data["fwhm"])
        assert np.max(np.abs(sk - s0)) < 1e-4


def test_shipped_weights_score_heldout(shipped):
    assert re.fullmatch(rf"rb-{shipped.lane}-\d+\.\d+\+[0-9a-f]{{8}}", shipped.version)
    # clear cases: SNR 30-300, every kind of real and bogus candidate, decided at the alert threshold
    data = simulate_set(30, 35, shipped.lane, seed=HELDOUT_SEED + 1, snr_range=(30, 300),
                        bogus_weights=np.ones(len(BOGUS_KINDS)))
    scores = shipped.score(data["stamps"], data["fwhm"])
    thr = shipped.info["threshold"]
    assert scores.shape == (65,) and np.all((scores >= 0) & (scores <= 1))
    wrong = (scores >= thr) != (data["label"] == 1)
    assert wrong.sum() <= 1, (scores, data["label"])


def test_shipped_simulator_accuracy_at_threshold(shipped, request):
    """The pipeline's own candidates (simulator, SNR 8-300 as ``training.snr_min/max``, seeds no
    network, combiner or threshold saw), decided at the lane's alert threshold: accuracy >= 99.5 %
    (the seed's figure) and FPR within the weights' target. Not met by QIP: rb-qip-3.1 reaches
    0.993 on 18000 fresh stamps, 0.994 at the best threshold chosen on them (README)."""
    if shipped.lane == "qip":
        request.applymarker(pytest.mark.xfail(strict=True, reason="rb-qip-3.1: 0.993 < 0.995"))
    data = simulate_set(1000, 1000, shipped.lane, seed=HELDOUT_SEED + 2, snr_range=(8, 300))
    scores = shipped.score(data["stamps"], data["fwhm"])
    real, called = data["label"] == 1, scores >= shipped.info["threshold"]
    accuracy, fpr = np.mean(called == real), np.mean(called[~real])
    assert fpr <= 1.5 * shipped.info["target_fpr"], fpr
    assert accuracy >= 0.995, accuracy


def test_score_checks_input(shipped):
    with pytest.raises(ValueError):
        shipped.score(np.zeros((2, 3, 17, 17), np.float32), 3.0)
    with pytest.raises(ValueError):
        shipped.score_inputs(np.zeros((2, 4, 17, 17), np.float32))
    assert shipped.score(np.zeros((0, 4, 31, 31), np.float32), 3.0).shape == (0,)
    assert 0 < shipped.info["threshold"] < 1 and shipped.info["calibration"]["method"] == "platt"


def test_missing_weights_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        RealBogus.load("qip", device="cpu", path=tmp_path / "rb_qip.pt")


def test_stamp_is_free_of_scale_sampling_and_sign():
    data = simulate_set(3, 3, "qip", seed=5)
    s = data["stamps"].copy()
    s[:, 1] *= 7.0                               # template photometric scale
    s[:, 2] += 1234.0                            # science sky level
    ref = pipeline_stamps(data["stamps"], data["fwhm"])
    assert ref.shape == (6, 4, SIZE, SIZE) and np.allclose(pipeline_stamps(s, data["fwhm"])[:, :3], ref[:, :3], atol=1e-4)
    s[0, 0, 5, 5] = np.nan
    assert np.isfinite(pipeline_stamps(s, data["fwhm"])).all()
    # one PSF-fit SNR-50 source on unit pixel noise, sampled at 2 and at 5 px per FWHM: one model stamp
    out = []
    for n, fwhm in ((41, 2.0), (101, 5.0)):
        yy, xx = np.indices((n, n)) - (n - 1) / 2
        sig = fwhm / 2.3548
        psf = 50 * np.sqrt(4 * np.pi) * sig * np.exp(-(xx**2 + yy**2) / (2 * sig**2)) / (2 * np.pi * sig**2)
        out.append(make_stamp(psf, psf + 100, np.full((n, n), 100.0), fwhm_px=fwhm, sigma=np.ones((n, n)))[3])
    assert np.abs(np.sinh(out[0]) - np.sinh(out[1])).max() < 0.2 * np.sinh(out[1]).max()   # linear interpolation
    # a negative detection is the positive one with science and template swapped
    d, t, sc = data["stamps"][0, 0], data["stamps"][0, 1], data["stamps"][0, 2]
    assert np.allclose(make_stamp(-d, t, sc, fwhm_px=2.0, positive=False), make_stamp(d, sc, t, fwhm_px=2.0), atol=1e-5)


def test_dataset_roundtrip(tmp_path):
    data = build_synthetic("qip", 12, 10, seed=3, chunk=8)
    assert data["stamps"].shape == (22, 4, SIZE, SIZE) and data["label"].sum() == 12
    assert set(np.unique(data["kind"][data["label"] == 1])) <= set(range(len(REAL_KINDS)))
    manifest = save_dataset(tmp_path / "set.npz", data, "qip", source="synthetic", seed=3)
    back, m2 = load_dataset(tmp_path / "set.npz")
    assert m2["version"] == manifest["version"] and manifest["version"].startswith("rbset-qip-22-")
    assert m2["n_real"] == 12 and m2["n_bogus"] == 10 and m2["kinds"] == list(KINDS)
    assert all(np.array_equal(back[k], data[k], equal_nan=True) for k in data)
    assert m2["stamp"] == "ast3stream.classify.stamps.make_stamp"


def test_training_reduces_loss_and_weights_roundtrip(tmp_path):
    tr = simulate_set(64, 64, "qip", seed=11, snr_range=(20, 300))
    model = RotationInvariantBraai("qip", width=8)
    x_all = pipeline_stamps(tr["stamps"], tr["fwhm"])
    history = fit(model, x_all, tr["label"], epochs=2, batch_size=32, lr=3e-3,
                  device="cpu", seed=0, log=lambda s: None)
    assert history[1]["train_loss"] < history[0]["train_loss"]
    info = save_weights(model, tmp_path / "rb_qip.pt", "rb-qip", stamp_size=SIZE)
    assert (tmp_path / "rb_qip.json").exists()
    back, info2 = load_weights(tmp_path / "rb_qip.pt")
    x = x_all[:8]
    p1, p2 = predict_proba(model.half().float().eval(), x, torch.device("cpu")), \
        predict_proba(back, x, torch.device("cpu"))
    assert np.allclose(p1, p2, atol=1e-5) and info2["version"] == info["version"]
    rb = RealBogus.load("qip", device="cpu", path=tmp_path / "rb_qip.pt")
    assert rb.version == info["version"] and rb.score(tr["stamps"][:4], tr["fwhm"][:4]).shape == (4,)


def test_evaluate_writes_json_and_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 500)
    scores = np.clip(labels * 0.8 + rng.normal(0.1, 0.15, 1000), 0, 1)
    snr = rng.uniform(5, 100, 1000)
    res = evaluate(labels, scores, snr, out_json=tmp_path / "m.json", out_png=tmp_path / "m.png")
    on_disk = json.loads((tmp_path / "m.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "fnr_at_fpr1", "snr_bins"):
        assert key in on_disk
    assert (tmp_path / "m.png").stat().st_size > 10_000
    assert res["roc_auc"] > 0.99 and 0 <= res["fnr_at_fpr1"] <= 1
    assert len(res["snr_bins"]) == 4


def test_cloud_classifier_on_heldout_thumbnails():
    data = simulate_thumbnails(40, seed=HELDOUT_SEED)
    probs = np.array([predict_cloudy(t) for t in data["thumbs"]])
    clear, thick = data["label"] == 0, data["depth"] > 0.5
    assert np.all(probs[clear] < 0.5) and np.all(probs[thick] > 0.5)
    assert np.mean((probs > 0.5) == (data["label"] == 1)) >= 0.95


def test_make_thumbnail():
    rng = np.random.default_rng(1)
    frame = rng.normal(300, 17, (700, 1000)).astype(np.float32)
    frame[100:110, 200:210] = np.nan
    thumb = make_thumbnail(frame)
    assert thumb.shape == (256, 256) and thumb.dtype == np.float32
    assert np.isfinite(thumb).all() and thumb.min() >= 0 and thumb.max() <= 1


def test_cli_registers_subcommands():
    from ast3stream.classify.cli import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["classify", "train", "--lane", "dip", "--train", "a.npz", "--val", "b.npz",
                              "--out", "rb_dip.pt", "--epochs", "3"])
    assert args.classify_cmd == "train" and args.epochs == 3
    for cmd in ("build-set", "eval", "cloud-train"):
        with pytest.raises(SystemExit):
            parser.parse_args(["classify", cmd, "--help"])


@pytest.mark.shared
@pytest.mark.xfail(strict=True, reason="issue 11 must-show not met: rb-*-3.0+4ac289fb's AUC on Rubin equals "
                                       "the peak-SNR baseline (0.637)")
def test_shipped_model_beats_peak_snr_on_heldout_real_alerts(shared_data):
    """Real outcome on real stamps of a survey the shipped network and combiner never trained on:
    every Rubin alert (``reliability`` > 0.5): ROC AUC above the trivial peak-SNR baseline. (ZTF and
    PGIR are in the shipped model's training set; their held-out figures come from the night/object
    cross-validation of ``classify train-real``.)"""
    from ast3stream.classify.alertset import load_alert_set
    from ast3stream.classify.evaluate import versus_baseline

    rb = RealBogus.load("dip", device="cpu")
    alerts = load_alert_set([shared_data / "alerts" / "more" / "rubin", shared_data / "alerts" / "more" / "multi"],
                            surveys=("rubin",))
    p = rb.score_inputs(alerts["stamps"])
    assert np.all((p >= 0) & (p <= 1)) and len(p) == 33
    res = versus_baseline(alerts["label"], p, alerts["peak_snr"])
    assert res["roc_auc"] > res["baseline_roc_auc"], res


def test_pipeline_injection_helpers():
    from astropy.table import Table

    from ast3stream.classify.pipeline_set import PIPELINE_KINDS, empirical_psf, inject, label_candidates
    from ast3stream.classify.synth import moffat
    from ast3stream.image import Frame

    rng = np.random.default_rng(0)
    img = np.zeros((220, 220))
    for y in range(30, 200, 40):
        for x in range(30, 200, 40):
            moffat(img, x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5), 2e5, 3.0, 3.0, oversample=3)
    frame = Frame((img + 300 + rng.normal(0, 17.4, img.shape)).astype(np.float32), np.zeros(img.shape, np.uint16))
    psf = empirical_psf(frame.data, frame.mask, 3.0, 1e6)
    assert abs(psf.sum() - 1) < 1e-5 and np.unravel_index(psf.argmax(), psf.shape) == (psf.shape[0] // 2,) * 2
    assert 5 < np.sum(psf > psf.max() / 2) < 12                   # FWHM 3 px: pi 1.5^2 ~ 7 px above half max
    out = inject(frame, np.array([50.3]), np.array([70.6]), np.array([5e4]), psf, rng)
    added = out.data - frame.data
    yy, xx = np.indices(added.shape)
    assert abs(added.sum() - 5e4) < 0.02 * 5e4
    assert abs((added * xx).sum() / added.sum() - 50.3) < 0.1 and abs((added * yy).sum() / added.sum() - 70.6) < 0.1
    cands = Table(dict(x=[50.0, 120.0, 10.0, 80.0], y=[70.0, 120.0, 10.0, 80.0], sign=[1, 1, 1, -1]))
    labels, kinds = label_candidates(cands, np.array([[50.3, 70.6]]), {"transient": np.array([[80.5, 80.2]])}, 2.0)
    assert list(labels) == [1, 0, 0, -1]
    assert [PIPELINE_KINDS[k] for k in kinds] == ["injected", "bogus", "bogus", "transient"]


@pytest.mark.shared
def test_score_cli_on_foreign_alerts(shared_data, tmp_path, capsys):
    from ast3stream.classify.cli import main

    main(["classify", "score", str(shared_data / "alerts" / "more" / "rubin"), "--json", str(tmp_path / "s.json")])
    out = json.loads((tmp_path / "s.json").read_text())
    assert len(out["alerts"]) == 32 and all(r["survey"] == "rubin" for r in out["alerts"])
    assert {"survey", "id", "object_id", "mjd", "score_qip", "score_dip", "reliability"} <= set(out["alerts"][0])
    assert 0 <= out["summary"]["vs_reference"]["dip"]["roc_auc"] <= 1
    assert "rubin" in capsys.readouterr().out


def test_numpy_roc_and_platt_match_scikit_learn():
    """The training path's ROC, AUC and Platt fit (NumPy, for machines without scikit-learn)."""
    from sklearn import metrics
    from sklearn.linear_model import LogisticRegression

    from ast3stream.classify.evaluate import fnr_at_fpr, roc_auc, roc_curve
    from ast3stream.classify.recipe import platt

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.normal(y * 1.2, 1.0), 1)                     # ties on purpose
    assert abs(roc_auc(y, s) - metrics.roc_auc_score(y, s)) < 1e-12
    fpr, tpr, thr = metrics.roc_curve(y, s, drop_intermediate=False)
    mine = roc_curve(y, s)
    assert np.allclose(mine[0], fpr) and np.allclose(mine[1], tpr) and np.allclose(mine[2][1:], thr[1:])
    fnr, t = fnr_at_fpr(y, s, 0.05)
    assert np.mean(s[y == 0] >= t) <= 0.05 and abs(fnr - np.mean(s[y == 1] < t)) < 1e-12
    m = rng.normal(0, 3, 600)
    yl = (rng.random(600) < 1 / (1 + np.exp(-(0.7 * m + 0.4)))).astype(int)
    lr = LogisticRegression(C=10.0).fit(m[:, None], yl)
    assert np.allclose(platt(m, yl), (lr.coef_[0, 0], lr.intercept_[0]), atol=2e-3)


def test_best_threshold_is_the_most_accurate_within_the_fpr_cap():
    from ast3stream.classify.evaluate import best_threshold, fnr_at_fpr

    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], [700, 300])
    s = np.round(np.where(y == 1, rng.beta(5, 1.5, 1000), rng.beta(1.5, 5, 1000)), 3)     # ties on purpose
    thr, fig = best_threshold(y, s, 0.05)
    accuracy = {t: (np.mean(s[y == 1] >= t) + np.mean(s[y == 0] < t)) / 2 for t in np.unique(s)
                if np.mean(s[y == 0] >= t) <= 0.05}                                      # brute force
    assert np.mean(s[y == 0] >= thr) <= 0.05 and abs(fig["accuracy"] - max(accuracy.values())) < 1e-12
    assert abs(accuracy[thr] - fig["accuracy"]) < 1e-12 and abs(fig["fpr"] - np.mean(s[y == 0] >= thr)) < 1e-12
    _, lowest = fnr_at_fpr(y, s, 0.05)                     # spends the whole FPR budget
    assert thr >= lowest and accuracy[lowest] <= fig["accuracy"]


def test_stamp_features_measure_what_they_name():
    """Simulator truth: a point source is PSF-sized and round, a cosmic ray is sharper than the PSF,
    a misregistered star leaves negative flux; every feature is invariant to 90-degree rotations."""
    from ast3stream.classify.features import NAMES, stamp_features

    parts = {k: simulate_set(0, 40, "dip", seed=8 + i, snr_range=(30, 300),
                             bogus_weights=np.eye(len(BOGUS_KINDS))[BOGUS_KINDS.index(k)])
             for i, k in enumerate(("cosmic", "dipole"))}
    parts["point"] = simulate_set(40, 0, "dip", seed=12, snr_range=(30, 300), real_weights=(1, 0, 0))
    feats = {k: stamp_features(pipeline_stamps(d["stamps"], d["fwhm"])) for k, d in parts.items()}
    col = {n: i for i, n in enumerate(NAMES)}
    size = {k: np.median(10 ** f[:, col["size"]]) for k, f in feats.items()}
    assert 0.8 < size["point"] < 1.25 and size["cosmic"] < 0.7 * size["point"], size
    assert np.median(feats["point"][:, col["elongation"]]) < 1.3
    assert np.median(feats["dipole"][:, col["neg_share"]]) > np.median(feats["point"][:, col["neg_share"]]) + 0.1
    x = pipeline_stamps(parts["point"]["stamps"], parts["point"]["fwhm"])
    for k in (1, 2, 3):
        assert np.allclose(stamp_features(np.rot90(x, k, axes=(2, 3)).copy()), feats["point"], rtol=1e-9, atol=1e-9)


def test_boosted_trees_learn_an_interaction_a_linear_score_cannot():
    from ast3stream.classify.boost import boost_margin, fit_boost
    from ast3stream.classify.evaluate import roc_auc

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    y = ((X[:, 0] * X[:, 1] > 0) ^ (rng.random(3000) < 0.05)).astype(int)       # XOR of two signs, 5 % noise
    model = fit_boost(X[:2000], y[:2000], n_trees=60, depth=3, rate=0.2)
    m = boost_margin(model, X[2000:])
    assert roc_auc(y[2000:], m) > 0.9
    assert abs(roc_auc(y[2000:], X[2000:, 0] + X[2000:, 1]) - 0.5) < 0.1
    assert json.loads(json.dumps(model)) == model
    with pytest.raises(ValueError):
        boost_margin(model, X[:, :2])

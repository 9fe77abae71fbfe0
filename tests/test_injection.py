"""Injection-recovery on a small simulated night (DIP lane): efficiency, completeness, photometry.

The full study (both lanes, more frames, bogus counts) is ``python -m bench.injection``.
"""
import numpy as np
import pytest

from ast3stream.catalogs.refcat import RefCat
from ast3stream.config import Settings
from ast3stream.detection.injection import (completeness_fit, frame_psf, free_area, inject, match, random_sites,
                                            recover)
from ast3stream.image import Frame
from ast3stream.rawfile import detector_from_header
from ast3stream.reduction import Calibration
from ast3stream.simulate import simulate_night
from ast3stream.front import reduce_file
from ast3stream.subtraction.synthetic import render_stars


def test_inject_and_match_helpers():
    rng = np.random.default_rng(0)
    img = render_stars((120, 120), [40.0, 80.0], [60.0, 30.0], [5e4, 5e4], 3.0) + rng.normal(100, 10, (120, 120))
    frame = Frame(img.astype(np.float32), np.zeros(img.shape, np.uint16))
    free = free_area(frame, 3.0, 10)
    assert not free[60, 40] and not free[:10].any() and free[100, 100]
    x, y = random_sites(free, 20, 12.0, rng)
    assert len(x) == 20 and free[np.rint(y).astype(int), np.rint(x).astype(int)].all()
    assert np.min(np.hypot(x[:, None] - x, y[:, None] - y) + 1e9 * np.eye(20)) >= 12.0
    fit = completeness_fit(np.linspace(18, 22, 400), np.linspace(18, 22, 400) < 20.3)
    assert fit["m50"] == pytest.approx(20.3, abs=0.02) and fit["eff_max"] > 0.99


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("inject")
    night = simulate_night(out, n_exposures=2, scale=0.08, seed=11, n_fields=1)
    cfg = Settings(subtraction=dict(kernel_half_width=8, backend="numpy"))
    cfg.detector = detector_from_header(night.exposures[0].path, cfg.detector)
    calib = Calibration.build(sorted((out / "calib").glob("bias_*.fits")), sorted((out / "calib").glob("flat_*.fits")),
                              cfg.reduction, cfg.detector)
    refcat = RefCat.from_file(out / "refcat.fits")
    (tpl, _), (sci, rep) = (reduce_file(e.path, cfg, calibration=calib, refcat=refcat) for e in night.exposures)
    tpl, sci = tpl.frame, sci.frame
    return cfg, tpl, sci, rep


@pytest.mark.slow
def test_dip_injection_recovery(night):
    """200 PSF-model stars, uniform in maglim - 3 ... maglim + 1, into the calibrated science frame.

    Asserted on the injections on unmasked pixels: > 90 % found 1.5 mag above the frame's limit;
    the 50 % completeness (logistic fit) within 0.3 mag of the difference image's own 5-sigma limit
    and within 0.6 mag of the science frame's (the difference adds the template's noise: 0.38 mag
    for a template as deep as the science); recovered magnitudes of the bright half unbiased
    (median < 0.05 mag) with errors that describe their scatter.
    """
    cfg, tpl, sci, rep = night
    rng = np.random.default_rng(5)
    zp, maglim, fwhm = rep["zp"], rep["maglim"], rep["fwhm_px"]
    psf = frame_psf(sci, cfg)
    x, y = random_sites(free_area(sci, fwhm, 48), 200, 6 * fwhm, rng)
    mag = rng.uniform(maglim - 3, maglim + 1, len(x))
    inj, cands, diff = recover(sci, tpl, psf, x, y, mag, zp, fwhm, cfg, "dip", rng, 1.5)
    inj = inj[inj["usable"]]
    assert len(inj) > 150
    bright = inj["mag"] < maglim - 1.5
    assert inj["found"][bright].mean() > 0.9
    fit = completeness_fit(inj["mag"], inj["found"])
    assert abs(fit["m50"] - cands.meta["maglim"]) < 0.3
    assert abs(fit["m50"] - maglim) < 0.6
    b = inj[bright & inj["found"]]
    assert abs(np.median(b["mag_rec"] - b["mag"])) < 0.05
    pull = (b["flux_rec"] - b["flux"]) / b["flux_err"]
    assert 0.6 < 1.4826 * np.median(np.abs(pull - np.median(pull))) < 1.6
    # the injected flux is in the science frame, not in the template: found ones match positive candidates
    assert (cands["sign"][b["cand"]] == 1).all()
    # and injecting nothing recovers nothing at those positions
    assert (match(cands, inj["x"][~inj["found"]], inj["y"][~inj["found"]], 1.5) == -1).all()
    assert inject(sci, psf, x[:1], y[:1], [0.0], rng).data.sum() == pytest.approx(sci.data.sum())


@pytest.mark.slow
def test_qip_injection_recovery(night):
    """The QIP lane (aligned at full resolution, then 3x3 binned, against the binned template):
    > 90 % found 1.5 mag above the limit, 50 % completeness within 0.3 mag of the binned difference's
    own limit, correlated-noise factor near 1, unbiased bright magnitudes."""
    from ast3stream.templates import bin_frame

    cfg, tpl, sci, rep = night
    rng = np.random.default_rng(6)
    zp, maglim, fwhm = rep["zp"], rep["maglim"], rep["fwhm_px"]
    x, y = random_sites(free_area(sci, fwhm, 48), 200, 6 * fwhm, rng)
    mag = rng.uniform(maglim - 3, maglim + 1, len(x))
    inj, cands, diff = recover(sci, bin_frame(tpl, 3), frame_psf(sci, cfg), x, y, mag, zp, fwhm, cfg, "qip", rng, 1.0)
    inj = inj[inj["usable"]]
    assert len(inj) > 120
    bright = inj["mag"] < maglim - 1.5
    assert inj["found"][bright].mean() > 0.9
    assert abs(completeness_fit(inj["mag"], inj["found"])["m50"] - cands.meta["maglim"]) < 0.3
    assert 0.85 < diff.stats["errscale"] < 1.15
    b = inj[bright & inj["found"]]
    assert abs(np.median(b["mag_rec"] - b["mag"])) < 0.05

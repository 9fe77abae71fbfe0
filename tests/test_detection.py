"""Detection on a synthetic difference: the injected transient found at the right place and magnitude."""
import numpy as np
import pytest

from ast3stream.alignment import align
from ast3stream.config import Settings
from ast3stream.detection import detect, psf_flux
from ast3stream.subtraction import subtract
from ast3stream.subtraction.synthetic import render_stars, synthetic_pair

CFG = Settings(subtraction=dict(kernel_half_width=8, backend="numpy"))


def test_psf_flux_unbiased_on_gaussian():
    img = render_stars((64, 64), [30.3], [31.7], [5000.0], 4.0)
    noise = np.ones_like(img)
    f, e = psf_flux(img, noise, [30.3], [31.7], 4.0)
    assert f[0] == pytest.approx(5000.0, rel=1e-3) and e[0] > 0


def test_detect_transient_and_stamps():
    sci, tpl, _ = synthetic_pair((384, 384), n_stars=350, fwhm=(3.0, 4.0), sky=(300, 500), shift=(2.3, -1.6),
                                 rotation_deg=0.2, seed=3, transient=(190.3, 200.6, 17.5))
    aligned = align(sci, tpl, CFG)
    d = subtract(aligned, tpl, CFG)
    for lane, size in (("qip", 31), ("dip", 91)):
        cands, stamps = detect(d, aligned, tpl, 4.0, 27.0, CFG.detection, lane=lane,
                               binning=CFG.detector.qip_binning if lane == "qip" else 1)
        assert stamps.shape == (len(cands), 4, size, size) and stamps.dtype == np.float32
    near = np.hypot(cands["x"] - 190.3, cands["y"] - 200.6) < 1.0
    assert near.sum() == 1
    c = cands[near][0]
    assert c["sign"] == 1 and c["snr"] > 10
    assert abs(c["mag"] - 17.5) < max(3 * c["mag_err"], 0.1)
    assert len(cands) <= 3  # bogus
    assert 18.0 < cands.meta["maglim"] < 22.0
    assert set(cands.colnames) >= {"x", "y", "ra", "dec", "flux", "flux_err", "snr", "mag", "mag_err", "sign",
                                   "fwhm", "elongation", "isoarea", "flag"}

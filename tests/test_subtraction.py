"""SFFT subtraction: synthetic transient recovered, X2NRM ~ N(0,1), DECam transient, tiling."""
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from ast3stream.alignment import align
from ast3stream.config import Settings
from ast3stream.image import Frame
from ast3stream.subtraction import subtract
from ast3stream.subtraction.synthetic import synthetic_pair
from ast3stream.subtraction.tiles import tiles

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: small kernel: the CPU NumPy backend's cost grows with the number of kernel unknowns
CFG = Settings(subtraction=dict(kernel_half_width=8, backend="numpy"))


def test_tiles_one_shape_weights_sum_to_one():
    layout = tiles((1000, 1300), (400, 512), 64, 8)
    assert {(sy.stop - sy.start, sx.stop - sx.start) for sy, sx, _ in layout} == {(400, 512)}
    total = np.zeros((1000, 1300))
    for sy, sx, w in layout:
        total[sy, sx] += w
    assert np.allclose(total, 1.0)


@pytest.fixture(scope="module")
def synthetic():
    sci, tpl, truth = synthetic_pair((384, 384), n_stars=350, fwhm=(3.0, 4.0), sky=(300, 500), shift=(2.3, -1.6),
                                     rotation_deg=0.2, seed=3, transient=(190.3, 200.6, 17.5))
    aligned = align(sci, tpl, CFG)
    return aligned, tpl, subtract(aligned, tpl, CFG)


def test_synthetic_difference(synthetic):
    aligned, tpl, d = synthetic
    s = d.stats
    assert s["backend"] == "numpy" and s["n_tiles"] == 1 and s["conv"] == "REF"
    assert 0.9 < s["x2nrm_rstd"] < 1.15 and abs(s["x2nrm_mean"]) < 0.1
    assert s["flux_ratio"] == pytest.approx(1.0, abs=0.03)
    snr = d.snr
    assert snr[198:204, 187:194].max() > 10
    away = np.abs(snr)
    away[185:216, 175:206] = 0
    assert (away > 5).sum() < 10
    assert d.diff.dtype == np.float32 and d.mask.dtype == np.uint16


@pytest.mark.shared
def test_decam_known_transient():
    root = DATA / "images" / "decam-sfft" / "4check"
    if not root.exists():
        pytest.skip("../shared/data/images/decam-sfft is absent")

    def load(name):
        h = fits.open(root / name)[0]
        return Frame(h.data.astype(np.float32), np.zeros(h.data.shape, np.uint16), h.header)

    tpl, sci = load("Stack-DEC-OBS18.fits"), load("Stack-DEC-OBS04.fits")
    d = subtract(align(sci, tpl, CFG), tpl, CFG)
    snr = d.snr
    assert snr[178:185, 57:64].max() > 15          # the SN at x=60, y=181
    away = np.abs(snr)
    away[165:198, 45:78] = 0
    assert (away > 5).mean() < 2e-3                 # the rest is consistent with noise
    assert 0.85 < d.stats["x2nrm_rstd"] < 1.2


@pytest.mark.shared
@pytest.mark.xfail(reason="LT header WCSs leave ~1.4 px scatter after the shift refinement; needs a refit WCS")
def test_lt_series_only_variable_remains():
    files = sorted((DATA / "images" / "lt-rise").glob("q_e_*.fits"))
    if not files:
        pytest.skip("../shared/data/images/lt-rise is absent")

    def load(p):
        h = fits.open(p)[0]
        return Frame(h.data.astype(np.float32), np.zeros(h.data.shape, np.uint16), h.header)

    tpl, sci = load(files[0]), load(files[3])
    d = subtract(align(sci, tpl, CFG), tpl, CFG)
    from ast3stream.detection import detect

    cands, _ = detect(d, align(sci, tpl, CFG), tpl, d.stats["psf_fwhm"], 25.0, CFG, "dip")
    bright = cands[cands["snr"] > 5]
    assert len(bright) <= 3

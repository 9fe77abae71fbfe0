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


def _injected_difference(seed, n=700, shape=(1200, 1200), fwhm=3.5, sigma=10.0):
    """White-noise difference with ``n`` point sources of both signs at PSF-fit SNR 3-12 and a masked band."""
    from astropy.io import fits

    from ast3stream.subtraction import Difference

    rng = np.random.default_rng(seed)
    x, y = rng.uniform(30, shape[1] - 30, n), rng.uniform(30, shape[0] - 30, n)
    snr, sign = rng.uniform(3, 12, n), np.where(rng.random(n) < 0.5, 1, -1)
    flux = snr * sigma * np.sqrt(4 * np.pi) * fwhm / 2.3548
    img = render_stars(shape, x, y, flux * sign, fwhm).astype(np.float32) + rng.normal(0, sigma, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint16)
    mask[600:610] = 4
    hdr = fits.Header(dict(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=10.0, CRVAL2=20.0, CRPIX1=600, CRPIX2=600,
                           CD1_1=-1e-4, CD2_2=1e-4))
    return Difference(img, np.full(shape, sigma, np.float32), mask, hdr, {"psf_fwhm": fwhm}), x, y, snr, sign


def test_detection_completeness_as_sep():
    """Completeness per PSF-fit SNR of injected sources. sep.extract (detection version 2) gave, on
    three such images, 0.11 0.29 0.70 0.88 0.95 0.97 0.98 0.97 0.97 for SNR 3-4 ... 11-12 and 13 false
    detections; the own footprints give 0.11 0.29 0.69 0.88 0.95 0.97 0.98 0.96 0.97 and 10."""
    from scipy.spatial import cKDTree

    from ast3stream.image import Frame

    d, x, y, snr, sign = _injected_difference(0)
    frame = Frame(d.diff, d.mask)
    cands, _ = detect(d, frame, frame, 3.5, 25.0, CFG.detection, lane="dip")
    dist, j = cKDTree(np.c_[cands["x"], cands["y"]]).query(np.c_[x, y], distance_upper_bound=1.5)
    found = np.isfinite(dist)
    found[found] = np.asarray(cands["sign"])[j[found]] == sign[found]
    eff = [found[(snr >= lo) & (snr < lo + 1)].mean() for lo in range(3, 12)]
    assert eff[0] < 0.25 and 0.55 < eff[2] < 0.85 and 0.8 < eff[3]
    assert min(eff[5:]) > 0.9
    assert len(cands) - found.sum() <= 8


def test_gpu_formulation_of_the_filter_and_pixel_lists_matches_numba():
    """The CuPy path's array code (run here with NumPy and SciPy's ndimage) equals the numba kernels."""
    from scipy import ndimage

    from ast3stream.detection.footprints import _pixels, gaussian_1d, matched_snr, matched_snr_xp, pixels_xp

    d, *_ = _injected_difference(1, n=200, shape=(300, 420))
    noise = d.noise * np.random.default_rng(2).uniform(0.8, 1.2, d.noise.shape).astype(np.float32)
    cpu = matched_snr(d.diff, noise, d.mask, 3.5)
    arr = matched_snr_xp(d.diff, noise, d.mask, gaussian_1d(3.5, 6), np, ndimage)
    np.testing.assert_allclose(cpu, arr, atol=2e-4)
    for a, b in zip(_pixels(cpu, d.diff, d.mask, 3.0), pixels_xp(cpu, d.diff, d.mask, 3.0)):
        np.testing.assert_array_equal(a, b)

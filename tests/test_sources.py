"""Sources: sep extraction, the paper's cleaning cuts, stellarity and the image FWHM."""
import numpy as np
import pytest
from scipy.spatial import cKDTree

from ast3stream.config import Settings
from ast3stream.image import Frame
from ast3stream.reduction import Calibration, reduce_raw
from ast3stream.sources import clean_star_list, extract, image_fwhm

CFG = Settings()


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    from ast3stream.simulate import simulate_night
    night = simulate_night(tmp_path_factory.mktemp("sim"), n_exposures=1, scale=0.1, seed=1, n_fields=1)
    d = night.out_dir / "calib"
    cal = Calibration.build(sorted(d.glob("bias_*.fits")), sorted(d.glob("flat_*.fits")), CFG.reduction, CFG.detector)
    exp = night.exposures[0]
    return night, exp, reduce_raw(exp.path, cal, CFG.reduction, CFG.detector)


def test_extract_finds_stars_at_truth(reduced):
    night, exp, frame = reduced
    cfg = Settings()
    table = extract(frame, cfg.sources)
    for col in ("x", "y", "flux", "fluxerr", "a", "b", "theta", "fwhm", "elongation", "flag", "stellarity", "mag_inst"):
        assert col in table.colnames
    truth = night.truth(exp.expid)
    every = truth[truth["kind"] == "star"]
    stars = every[every["flux_e"] > 20000]
    # isolated: no other star of a tenth of the flux within 6 px (blends are measured as one)
    k, nbr = cKDTree(np.column_stack([every["x"], every["y"]])).query(np.column_stack([stars["x"], stars["y"]]), 8,
                                                                         distance_upper_bound=6.0)
    flux = np.append(np.asarray(every["flux_e"]), 0.0)[nbr[:, 1:]]
    stars = stars[~np.any(flux > 0.1 * np.asarray(stars["flux_e"])[:, None], axis=1)]
    # and clean: no masked (bad, saturated, trail) pixel within 3 px, which moves the windowed centroid
    ix, iy = np.rint(stars["x"]).astype(int), np.rint(stars["y"]).astype(int)
    masked = [frame.mask[max(y - 3, 0):y + 4, max(x - 3, 0):x + 4].any() for x, y in zip(ix, iy)]
    stars = stars[~np.asarray(masked, bool)]
    assert len(stars) >= 10
    d, _ = cKDTree(np.column_stack([table["x"], table["y"]])).query(np.column_stack([stars["x"], stars["y"]]))
    assert np.mean(d < 1.0) > 0.9                          # bright stars found at their 0-based positions
    assert np.median(d[d < 1.0]) < 0.1                     # windowed centroids


def test_clean_list_and_fwhm(reduced):
    night, exp, frame = reduced
    cfg = Settings()
    table = extract(frame, cfg.sources)
    clean = clean_star_list(table, cfg.sources)
    assert 20 < len(clean) < len(table)
    assert np.all(clean["flag"] == 0)
    assert np.all(clean["flux"] / clean["fluxerr"] > cfg.sources.snr_min)
    # the least star-like 20 % are gone: the clean list is more stellar than the cut list
    assert np.median(clean["stellarity"]) >= np.median(table["stellarity"][table["flag"] == 0])
    true_fwhm = float(night.table["fwhm_px"][0])
    assert image_fwhm(clean) == pytest.approx(true_fwhm, rel=0.08)


def test_stellarity_separates_galaxies():
    rng = np.random.default_rng(3)
    img = rng.normal(100.0, 5.0, (400, 400)).astype(np.float32)
    yy, xx = np.mgrid[:400, :400]
    for k in range(40):                                  # stars, sigma 1.5 px, on a grid
        x0, y0 = 30 + 45 * (k % 8), 30 + 70 * (k // 8)
        img += (3000 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 4.5)).astype(np.float32)
    gal = [(52, 65), (142, 205), (232, 345)]
    for x0, y0 in gal:                                   # exponential discs between them
        img += (300 * np.exp(-np.hypot(xx - x0, yy - y0) / 4.0)).astype(np.float32)
    frame = Frame(img, np.zeros(img.shape, np.uint16))
    table = extract(frame, CFG.sources)
    d, j = cKDTree(np.column_stack([table["x"], table["y"]])).query(gal)
    assert np.all(d < 2)
    stars = np.setdiff1d(np.arange(len(table)), j)
    assert np.all(table["stellarity"][j] < np.percentile(table["stellarity"][stars], 20))


def test_strips_in_worker_processes_give_the_same_catalogue(reduced, monkeypatch):
    import importlib

    from ast3stream.sources import strips
    from ast3stream.sources.extract import bit_mask, measure

    _, _, frame = reduced
    monkeypatch.setattr(importlib.import_module("ast3stream.sources.extract"), "STRIP_MIN_PIXELS", 0)
    monkeypatch.setattr(strips, "STRIP_ROWS", 300)                 # 4 strips on this frame (in both runs)
    one = extract(frame, CFG.sources.model_copy(update={"workers": 1}))
    two = extract(frame, CFG.sources.model_copy(update={"workers": 2}))
    assert len(one) > 100 and one.colnames == two.colnames
    for name in one.colnames:
        np.testing.assert_array_equal(np.asarray(one[name]), np.asarray(two[name]), err_msg=name)
    # one sep call on the whole frame: the same sources (only blends' pixel draws differ)
    import sep
    data = np.ascontiguousarray(frame.data, np.float32)
    mask = bit_mask(frame.mask, CFG.sources.mask_bits)
    sub = data - sep.Background(data, mask=mask, bw=CFG.sources.mesh, bh=CFG.sources.mesh, fw=3, fh=3).back()
    whole = measure(sub, mask, float(one.meta["BKGRMS"]), CFG.sources)
    d, _ = cKDTree(np.column_stack([whole["x"], whole["y"]])).query(np.column_stack([one["x"], one["y"]]))
    assert len(whole["x"]) == len(one) and np.mean(d < 1e-6) > 0.97


def test_a_sep_call_offloaded_to_the_worker_pool_finds_the_same_objects(reduced):
    """sep holds the GIL: full-frame calls run in the pool (strips.offload), with the same result."""
    import sep

    from ast3stream.sources import strips
    from ast3stream.subtraction.psf import _extract

    _, _, frame = reduced
    data = np.ascontiguousarray(frame.data, np.float32)
    bad = frame.mask != 0
    bkg = sep.Background(data, mask=bad)
    sub, rms = data - bkg.back(), np.full(data.shape, bkg.globalrms, np.float32)
    here = strips.offload(_extract, sub, rms, bad, min_pixels=sub.size + 1, thresh=5.0)
    assert strips.pool(2) is strips.current() is not None
    there = strips.offload(_extract, sub, rms, bad, min_pixels=0, thresh=5.0)
    assert len(here) > 100 and here.dtype == there.dtype
    for name in here.dtype.names:   # per field: NaN equals NaN
        np.testing.assert_array_equal(here[name], there[name], err_msg=name)

"""Reduction: overscan/trim on real SAAO and LCO frames, calibration masters, cosmic rays, trails."""
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from ast3stream.config import Settings
from ast3stream.image import MaskBits
from ast3stream.reduction import BadFrameError, Calibration, read_raw, reduce_raw

CFG = Settings()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} not available (../shared/data is absent)")
    return path


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    from ast3stream.simulate import simulate_night
    cfg = Settings(simulation={"cosmics_full_frame": 40000.0, "trail_fraction": 0.5})
    return simulate_night(tmp_path_factory.mktemp("sim"), n_exposures=2, scale=0.1, seed=5, cfg=cfg)


@pytest.fixture(scope="module")
def calib(night):
    d = night.out_dir / "calib"
    return Calibration.build(sorted(d.glob("bias_*.fits")), sorted(d.glob("flat_*.fits")), CFG.reduction, CFG.detector)


def test_overscan_trim_saao():
    path = _shared("raw/saao/a8280271.fits")
    raw = fits.getdata(path).astype(float)
    img = read_raw(path, CFG.detector)
    assert img.data.shape == (520, 512)                     # TRIMSEC [17:528,1:520]
    level = np.median(raw[:, 3:13], axis=1)                 # BIASSEC [4:13,1:520], per row
    np.testing.assert_allclose(img.data, raw[:, 16:528] - level[:, None], atol=1e-3)
    assert img.gain == 1.9 and img.read_noise == 5.0


def test_overscan_assembly_lco_mef():
    path = _shared("raw/lco/mef_raw_test_frame.fits")
    img = read_raw(path, CFG.detector)
    assert img.data.shape == (1024, 1024) and img.gain == 1.0
    sky = [np.median(q) for q in (img.data[:512, :512], img.data[:512, 512:], img.data[512:, :512], img.data[512:, 512:])]
    # four amplifiers with gains 6.2-6.4 e-/ADU give one sky level in electrons (raw ADU differ by ~2 %)
    assert np.ptp(sky) / np.mean(sky) < 0.03
    frame = reduce_raw(path, None, CFG.reduction, CFG.detector)
    assert "CRVAL1" in frame.header and frame.primary["SITEID"] == "elp"
    assert (frame.mask & MaskBits.SATURATED).any()


def test_bad_frames_raise(tmp_path):
    wrong = tmp_path / "wrong.fits"
    fits.PrimaryHDU(np.zeros((100, 120), np.uint16)).writeto(wrong)
    with pytest.raises(BadFrameError, match="without TRIMSEC"):
        reduce_raw(wrong, None, CFG.reduction, CFG.detector)
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"not a fits file" * 300)
    with pytest.raises(BadFrameError):
        reduce_raw(junk, None, CFG.reduction, CFG.detector)


def test_calibration_masters_and_bad_pixels(night, calib, tmp_path):
    defects = fits.getdata(night.out_dir / "truth" / "defects.fits") > 0
    assert calib.bpm.shape == defects.shape
    found = (calib.bpm & defects).sum()
    assert found / defects.sum() > 0.5                       # bad columns / dead pixels recovered
    assert found / calib.bpm.sum() > 0.95                    # and few false bad pixels
    assert abs(np.median(calib.flat) - 1) < 1e-3
    back = Calibration.load(calib.save(tmp_path / "cal"))
    np.testing.assert_array_equal(back.bpm, calib.bpm)
    np.testing.assert_allclose(back.flat, calib.flat)


@pytest.mark.parametrize("method", ["auto", "lacosmic"])
def test_cosmics_masked_not_stars(night, calib, method):
    """Both cosmic-ray paths of ``reduce_raw`` (on the host ``auto`` is astroscrappy on candidate
    cells; ``lacosmic`` is the GPU's array L.A.Cosmic, run here on NumPy): >= 95 % of the simulated
    hits masked, < 1 % of stars; NCOSMIC counts the flagged pixels."""
    n_cr = n_hit = n_star = n_star_hit = 0
    params = CFG.reduction.model_copy(update={"cosmic_method": method})
    for exp in night.exposures:
        frame = reduce_raw(exp.path, calib, params, CFG.detector)
        truth = night.truth(exp.expid)
        cosmic = (frame.mask & MaskBits.COSMIC) > 0
        near = np.zeros_like(cosmic)                         # a track's centre may fall between its pixels
        near[1:-1, 1:-1] = cosmic[:-2, 1:-1] | cosmic[2:, 1:-1] | cosmic[1:-1, :-2] | cosmic[1:-1, 2:] | cosmic[1:-1, 1:-1]
        bad = (frame.mask & (MaskBits.BAD | MaskBits.SATURATED)) > 0
        cr = truth[truth["kind"] == "cosmic"]
        ix, iy = np.rint(cr["x"]).astype(int), np.rint(cr["y"]).astype(int)
        ok = (ix > 1) & (iy > 1) & (ix < frame.shape[1] - 2) & (iy < frame.shape[0] - 2)
        ok &= ~bad[np.clip(iy, 0, frame.shape[0] - 1), np.clip(ix, 0, frame.shape[1] - 1)]
        n_cr += ok.sum()
        n_hit += near[iy[ok], ix[ok]].sum()
        st = truth[(truth["kind"] == "star") & (truth["flux_e"] > 500)]
        sx, sy = np.rint(st["x"]).astype(int), np.rint(st["y"]).astype(int)
        on = (sx >= 0) & (sy >= 0) & (sx < frame.shape[1]) & (sy < frame.shape[0])
        n_star += on.sum()
        n_star_hit += cosmic[sy[on], sx[on]].sum()
        assert frame.primary["NCOSMIC"] == cosmic.sum() == ((frame.mask & MaskBits.INTERP) > 0).sum()
    assert n_cr > 300
    assert n_hit / n_cr >= 0.95
    assert n_star_hit / n_star < 0.01


def test_satellite_trail_masked(night, calib):
    exp = [e for e, t in zip(night.exposures, night.table["trail"]) if t][0]
    frame = reduce_raw(exp.path, calib, CFG.reduction, CFG.detector)
    tr = night.truth(exp.expid)
    tr = tr[tr["kind"] == "trail"][0]
    pa = np.radians(tr["trail_pa"])
    t = np.arange(-3000, 3000, 2.0)
    x, y = tr["x"] + t * np.cos(pa), tr["y"] + t * np.sin(pa)
    ny, nx = frame.shape
    inside = (x > 20) & (y > 20) & (x < nx - 20) & (y < ny - 20)
    trail = (frame.mask & MaskBits.TRAIL) > 0
    assert trail[np.rint(y[inside]).astype(int), np.rint(x[inside]).astype(int)].mean() > 0.9
    assert trail.mean() < 0.05


def test_cosmics_in_worker_processes_as_in_process(night, monkeypatch):
    import importlib

    from ast3stream.sources import strips

    cosmics = importlib.import_module("ast3stream.reduction.cosmics")
    monkeypatch.setattr(cosmics, "GROUP_CELLS", 64)                  # several groups on a small frame
    frame = reduce_raw(night.exposures[0].path, None, CFG.reduction.model_copy(update={"cosmics": False}), CFG.detector)
    runs = []
    for workers in (None, strips.pool(2)):
        data = frame.data.copy()
        hits = cosmics.detect_cosmics(data, frame.mask, 2.5, 1e30, workers=workers)
        runs.append((hits, data))
    assert len(runs[0][0]) > 100
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_overscan_array_path_as_numba():
    """The GPU path's array code of the overscan step (run here on NumPy) equals the numba kernel."""
    from types import SimpleNamespace

    from ast3stream.reduction import subtract_overscan

    raw = np.random.default_rng(4).integers(900, 65535, (60, 80)).astype(np.uint16)
    host = subtract_overscan(raw, "[71:80,1:60]", "[1:68,1:60]", 60000.0)
    arrays = subtract_overscan(raw, "[71:80,1:60]", "[1:68,1:60]", 60000.0,
                               SimpleNamespace(asarray=np.asarray, float32=np.float32))
    np.testing.assert_allclose(arrays[0], host[0], rtol=0, atol=1e-3)
    np.testing.assert_array_equal(arrays[1], host[1])


def _frame_with_cosmics(n=600, sky=600.0, read_noise=3.0, saturation=60000.0, n_stars=150, n_cr=300, seed=1):
    """``n x n`` e- frame: sky, Gaussian stars (FWHM 2.5-3.5 px, 300 e- to 3e6 e-, the brightest
    saturated), Poisson and read noise, clipped at ``saturation``, then cosmic rays (150-20000 e- a
    pixel; single pixels, 2-4 px blobs, 4-15 px tracks) away from stars above 3000 e-.
    Returns the frame, its noiseless image without cosmics, the cosmics' charge and the stars."""
    from scipy.special import erf

    rng = np.random.default_rng(seed)
    truth = np.full((n, n), sky)
    sx, sy = rng.uniform(10, n - 10, n_stars), rng.uniform(10, n - 10, n_stars)
    flux, fwhm = 10 ** rng.uniform(np.log10(300), np.log10(3e6), n_stars), rng.uniform(2.5, 3.5, n_stars)
    r = 15
    edges = np.arange(-r, r + 2) - 0.5
    for x, y, f, w in zip(sx, sy, flux, fwhm):       # pixel-integrated Gaussian, 31 x 31 px
        ix, iy, s = int(x), int(y), w / 2.3548 * np.sqrt(2)
        stamp = f * np.outer(np.diff(erf((iy + edges - y) / s)), np.diff(erf((ix + edges - x) / s))) / 4
        ys, xs = slice(max(iy - r, 0), min(iy + r + 1, n)), slice(max(ix - r, 0), min(ix + r + 1, n))
        truth[ys, xs] += stamp[ys.start - iy + r:ys.stop - iy + r, xs.start - ix + r:xs.stop - ix + r]
    data = rng.poisson(truth) + rng.normal(0, read_noise, truth.shape)
    cr = np.zeros((n, n))
    blobs = [[(0, 0), (0, 1)], [(0, 0), (1, 0)], [(0, 0), (0, 1), (1, 0)], [(0, 0), (0, 1), (1, 0), (1, 1)],
             [(0, 0), (1, 0), (1, 1)], [(0, 0), (0, 1), (0, 2), (1, 1)]]
    k = 0
    while k < n_cr:
        x, y = rng.uniform(8, n - 8, 2)
        if np.any(np.hypot(sx - x, sy - y)[flux > 3e3] < 10):
            continue
        amp = 10 ** rng.uniform(np.log10(150), np.log10(20000))
        if k % 3 == 0:
            pix = [(0, 0)]
        elif k % 3 == 1:
            pix = blobs[rng.integers(len(blobs))]
        else:
            length, pa = rng.uniform(4, 15), rng.uniform(0, np.pi)
            pix = {(round(t * np.sin(pa)), round(t * np.cos(pa))) for t in np.linspace(0, length, int(3 * length))}
        for dy, dx in pix:
            cr[int(y) + dy, int(x) + dx] += amp * rng.uniform(0.5, 1.5)
        k += 1
    return np.minimum(data + cr, saturation).astype(np.float32), truth, cr, (sx, sy, flux)


def test_subsampled_laplacian_closed_form():
    """The native-resolution ``L+`` equals its definition: subsample 2x, Laplacian, clip at 0, rebin 2x2."""
    from scipy.ndimage import convolve

    from ast3stream.reduction.cosmics import subsampled_laplacian

    img = np.random.default_rng(3).normal(600, 30, (40, 50)).astype(np.float32)
    img[20, 25] += 5000                                              # a hit, a track, a star-like blob
    img[5:15, 10] += 800
    img[30:33, 40:43] += 300
    sub = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1).astype(np.float64)
    lap = convolve(sub, np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]]), mode="nearest").clip(0)
    rebinned = lap.reshape(40, 2, 50, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(subsampled_laplacian(img, np), rebinned, rtol=0, atol=1e-2)


def _hit_mask(hits, shape):
    m = np.zeros(shape, bool)
    m[hits[:, 0], hits[:, 1]] = True
    return m


def test_lacosmic_finds_injected_cosmics_not_stars():
    """The array L.A.Cosmic (NumPy path): >= 95 % of the injected hit pixels of >= 250 e- (10 sky
    sigma) found, no star pixel flagged, cleaned pixels within the noise of the truth."""
    from scipy.ndimage import binary_dilation

    from ast3stream.reduction.cosmics import lacosmic

    data, truth, cr, (sx, sy, flux) = _frame_with_cosmics()
    clean = data.copy()
    hits = lacosmic(clean, np.zeros(data.shape, bool), 3.0, 60000.0, 4.5, 0.3, 5.0, 2)
    found = _hit_mask(hits, data.shape)
    assert hits.shape[1] == 2 and np.all(np.diff(hits[:, 0] * data.shape[1] + hits[:, 1]) > 0)
    strong = cr >= 250
    assert strong.sum() > 1000 and found[strong].mean() >= 0.95
    near_cr = binary_dilation(cr > 0, iterations=4)
    yy, xx = np.mgrid[:data.shape[0], :data.shape[1]]
    star = np.zeros(data.shape, bool)
    for x, y in zip(sx, sy):
        star |= np.hypot(xx - x, yy - y) < 2.5
    star &= ~near_cr
    assert star.sum() > 2000 and found[star].sum() == 0
    assert (found & ~near_cr).sum() < 0.01 * found.sum()          # sky-noise pairs at most
    np.testing.assert_array_equal(clean[~found], data[~found])
    on_cr = found & (cr > 0)
    err = np.abs(clean[on_cr] - truth[on_cr]) / np.sqrt(truth[on_cr] + 9.0)
    assert np.median(err) < 0.5 and np.percentile(err, 95) < 1.5


@pytest.mark.parametrize("sepmed", [True, False])
def test_lacosmic_as_astroscrappy(sepmed):
    """Same hits as ``astroscrappy.detect_cosmics`` with the same parameters (>= 99 % both ways away
    from the 4-px border, where astroscrappy does not filter), same cleaned values; the saturated
    stars' cores masked by ``satlevel`` in both."""
    import astroscrappy

    from ast3stream.reduction.cosmics import lacosmic

    data, truth, cr, _ = _frame_with_cosmics(seed=2)
    inmask = np.zeros(data.shape, bool)
    inmask[100:103, 200:260] = True                                  # a bad column segment
    ref, ref_clean = astroscrappy.detect_cosmics(data, inmask=inmask, sigclip=4.5, sigfrac=0.3, objlim=5.0,
                                                 niter=2, gain=1.0, readnoise=3.0, satlevel=60000.0,
                                                 sepmed=sepmed, cleantype="medmask", verbose=False)
    clean = data.copy()
    found = _hit_mask(lacosmic(clean, inmask, 3.0, 60000.0, 4.5, 0.3, 5.0, 2, sepmed=sepmed), data.shape)
    inner = np.zeros(data.shape, bool)
    inner[4:-4, 4:-4] = True
    both = found & ref & inner
    print(f"sepmed={sepmed}: {(ref & inner).sum()} astroscrappy, {(found & inner).sum()} lacosmic, {both.sum()} both")
    assert both.sum() > 1000
    assert both.sum() >= 0.99 * (ref & inner).sum() and both.sum() >= 0.99 * (found & inner).sum()
    assert (np.abs(clean[both] - ref_clean[both]) < 0.01).mean() >= 0.99
    assert not found[data >= 60000.0].any() and (data >= 60000.0).sum() > 20


def test_the_array_candidate_cells_are_the_numba_ones(night, calib):
    """The candidate-cell test written on whole arrays (the GPU's) marks the cells the host's numba pass does."""
    from ast3stream.reduction.cosmics import _candidate_cells_array, candidate_cells

    params = CFG.reduction.model_copy(update={"cosmics": False})
    frame = reduce_raw(night.exposures[0].path, calib, params, CFG.detector)
    sky = float(np.median(frame.data[::16, ::16]))
    host = candidate_cells(frame.data, frame.mask, sky, 3.0, 4.5, 4)
    array = _candidate_cells_array(frame.data, frame.mask, sky, 3.0, 4.5, 4, np)
    assert host.sum() > 100
    assert (host != array).sum() <= 1e-3 * host.sum()


def test_both_cosmic_paths_flag_the_same_pixels(night, calib):
    """``reduce_raw`` with astroscrappy on the host's cells and with the array L.A.Cosmic (the
    GPU's code, on NumPy here) restricted to the same cells: the same cosmic-ray pixels."""
    masks = {}
    for method in ("cells", "lacosmic"):
        params = CFG.reduction.model_copy(update={"cosmic_method": method})
        frame = reduce_raw(night.exposures[0].path, calib, params, CFG.detector)
        masks[method] = (frame.mask & MaskBits.COSMIC) > 0
    both = (masks["cells"] & masks["lacosmic"]).sum()
    print({k: int(v.sum()) for k, v in masks.items()}, both)
    assert masks["cells"].sum() > 300
    assert both >= 0.98 * masks["cells"].sum() and both >= 0.98 * masks["lacosmic"].sum()

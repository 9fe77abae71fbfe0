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


def test_cosmics_masked_not_stars(night, calib):
    n_cr = n_hit = n_star = n_star_hit = 0
    for exp in night.exposures:
        frame = reduce_raw(exp.path, calib, CFG.reduction, CFG.detector)
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

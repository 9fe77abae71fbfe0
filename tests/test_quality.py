"""Quality: Pearson r (eq. 4) on clear and cloudy frames, thumbnail, flags, and the driver/CLI."""
import json

import numpy as np
import pytest
from astropy.io import fits

from ast3stream.config import Settings
from ast3stream.image import Frame
from ast3stream.quality import pearson_r, thumbnail
from ast3stream.reduction import Calibration
from ast3stream.front import reduce_file


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    from ast3stream.simulate import simulate_night
    return simulate_night(tmp_path_factory.mktemp("sim"), n_exposures=4, scale=0.1, seed=1, cloud_fraction=0.5)


@pytest.fixture(scope="module")
def reports(night, tmp_path_factory):
    d = night.out_dir / "calib"
    cal = Calibration.build(sorted(d.glob("bias_*.fits")), sorted(d.glob("flat_*.fits")), Settings().reduction,
                            Settings().detector)
    out = tmp_path_factory.mktemp("out")
    return [_frame_report(e.path, cal, night.out_dir / "refcat.fits", out) for e in night.exposures], out


def _frame_report(path, cal, refcat, out):
    exp, report = reduce_file(path, Settings(), calibration=cal, refcat=refcat, out_dir=out)
    return exp.frame, report


def test_pearson_r():
    m = np.linspace(14, 19, 50)
    assert pearson_r(m, m + 0.01) == pytest.approx(1.0)
    assert pearson_r(m, -m) == pytest.approx(-1.0)


def test_pcc_clear_and_cloudy(night, reports):
    results, _ = reports
    cloud = np.asarray(night.table["cloud"])
    clear = [r for (f, r), c in zip(results, cloud) if c == 0]
    cloudy = [r for (f, r), c in zip(results, cloud) if c > 0]
    assert clear and cloudy
    for r in clear:
        assert r["pcc"] > 0.98 and "low_pcc" not in r["flags"] and "cloudy" not in r["flags"]
    for r in cloudy:
        assert r["pcc"] < min(c["pcc"] for c in clear)
        assert "cloudy" in r["flags"]


def test_report_header_and_thumbnail(reports):
    results, out = reports
    frame, report = results[0]
    for key in ("fwhm_px", "n_stars", "rms_arcsec", "zp", "zp_err", "maglim", "pcc", "flags", "timings"):
        assert key in report
    assert {"reduction", "sources", "astrometry", "photometry", "quality"} <= set(report["timings"])
    saved = json.loads((out / f"{report['expid']}.json").read_text())
    assert saved["zp"] == pytest.approx(report["zp"])
    back = Frame.read(report["reduced"])
    assert back.primary["MAGZP"] == pytest.approx(report["zp"]) and "PCC" in back.primary
    assert back.header["CTYPE1"].startswith("RA---TAN") and len(back.sources) == report["n_sources"]
    thumb = fits.getdata(report["thumbnail"])
    assert thumb.shape == (256, 256) and 0 <= thumb.min() and thumb.max() <= 1
    assert (out / f"{report['expid']}_thumb.png").stat().st_size > 1000


def test_thumbnail_zscale():
    rng = np.random.default_rng(0)
    frame = Frame(rng.normal(100, 10, (600, 900)).astype(np.float32), np.zeros((600, 900), np.uint16))
    t = thumbnail(frame, 256)
    assert t.shape == (256, 256) and 0.2 < np.median(t) < 0.8


def test_cli_reduce(night, tmp_path):
    from ast3stream.cli import main
    exp = night.exposures[0]
    rc = main(["reduce", str(exp.path), "--calib", str(night.out_dir / "calib"),
               "--refcat", str(night.out_dir / "refcat.fits"), "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / f"{exp.expid}.json").read_text())
    assert report["status"] == "ok" and (tmp_path / f"{exp.expid}.fits").exists()


def test_warm_up_loads_the_front_half():
    from ast3stream.front import warm_up

    assert warm_up(Settings()) > 0

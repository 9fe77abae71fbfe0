"""Astrometry: triangle matching from a header WCS off by minutes and degrees, TAN-SIP, RMS."""
import copy
import glob
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import fit_wcs_from_points
from scipy.spatial import cKDTree

from ast3stream.astrometry import AstrometryError, apply_wcs, fit_similarity, match_triangles, solve
from ast3stream.catalogs.refcat import RefCat
from ast3stream.config import Settings
from ast3stream.image import Frame
from ast3stream.sources import extract

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def night(solved_night):
    return solved_night[0]


@pytest.fixture(scope="module")
def solved(solved_night):
    return [(exp, copy.deepcopy(frame), clean, wcs, stats) for exp, frame, _, clean, wcs, stats in solved_night[1]]


def test_triangle_match_recovers_similarity():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 2000, (80, 2))
    true = fit_similarity(np.array([[0, 0], [1, 0], [0, 1.0]]), np.array([[300, -200], [301.01, -199.96], [299.96, -198.99]]))
    a = (b[:60] - true.shift) @ np.linalg.inv(true.matrix).T + rng.normal(0, 0.2, (60, 2))
    a = np.vstack([a, rng.uniform(0, 2000, (15, 2))])      # 15 stars not in the reference list
    t, ia, ib = match_triangles(a, b, tol=3.0, scale_range=(0.95, 1.05), max_rotation=np.radians(5))
    assert len(ia) >= 55 and np.mean(ib[ia < 60] == ia[ia < 60]) > 0.95
    assert t.scale == pytest.approx(true.scale, rel=1e-3)
    assert t.rotation == pytest.approx(true.rotation, abs=1e-3)


def test_sip_solution_against_truth(night, solved):
    for exp, frame, clean, wcs, stats in solved:
        row = night.table[night.index(exp.expid)]
        assert row["hdr_offset_arcmin"] > 1.0              # the header really was off
        assert stats["n_matched"] >= 20 and stats["sip_order"] >= 3
        assert stats["rms_arcsec"] < 0.1
        assert stats["offset_arcmin"] == pytest.approx(row["hdr_offset_arcmin"], abs=0.1)
        # star positions through the fitted WCS against the simulator's true positions
        truth = night.truth(exp.expid)
        stars = truth[truth["kind"] == "star"]
        d, j = cKDTree(np.column_stack([stars["x"], stars["y"]])).query(np.column_stack([clean["x"], clean["y"]]))
        ok = d < 1.0
        ra, dec = wcs.all_pix2world(clean["x"][ok], clean["y"][ok], 0)
        sep = SkyCoord(ra, dec, unit="deg").separation(SkyCoord(stars["ra"][j[ok]], stars["dec"][j[ok]], unit="deg"))
        assert np.sqrt(np.mean(sep.arcsec ** 2)) < 0.1
        # and the WCS itself against the true one over the image
        ny, nx = frame.shape
        gx, gy = np.meshgrid(np.linspace(0, nx - 1, 15), np.linspace(0, ny - 1, 15))
        true = night.true_wcs(exp.expid)
        a = SkyCoord(*wcs.all_pix2world(gx.ravel(), gy.ravel(), 0), unit="deg")
        b = SkyCoord(*true.all_pix2world(gx.ravel(), gy.ravel(), 0), unit="deg")
        assert np.sqrt(np.mean(a.separation(b).arcsec ** 2)) < 0.1


def test_apply_wcs_round_trip(solved, tmp_path):
    exp, frame, clean, wcs, stats = solved[0]
    apply_wcs(frame, wcs)
    back = Frame.read(frame.write(tmp_path / "f.fits"))
    assert back.header["CTYPE1"] == "RA---TAN-SIP" and "AP_ORDER" in back.header
    x, y = np.array([10.0, 700.0]), np.array([20.0, 500.0])
    np.testing.assert_allclose(back.wcs.all_pix2world(x, y, 0), wcs.all_pix2world(x, y, 0), atol=1e-9)
    # the inverse SIP agrees with the forward one to 0.01 px
    r, d = wcs.all_pix2world(x, y, 0)
    xx, yy = back.wcs.all_world2pix(r, d, 0)
    np.testing.assert_allclose([xx, yy], [x, y], atol=0.01)


def test_no_solution_is_a_clear_error(night, solved):
    exp, frame, clean, wcs, stats = solved[0]
    far = RefCat.from_file(night.out_dir / "refcat.fits").table.copy()
    far["dec"] = np.clip(far["dec"] - 30.0, -89, 89)       # the catalogue of another part of the sky
    with pytest.raises(AstrometryError, match="reference stars"):
        solve(frame, clean, far, Settings().astrometry, Settings().detector)


def test_legacypipe_cutout_against_gaia():
    case = SHARED / "images" / "legacypipe" / "testcase8"
    if not case.exists():
        pytest.skip(f"{case} not available (../shared/data is absent)")
    path = glob.glob(str(case / "images/**/*ooi*N6.fits"), recursive=True)[0]
    with fits.open(path) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        data, own = hdul[1].data.astype(np.float32), WCS(hdul[1].header)
    ny, nx = data.shape
    gx, gy = (g.ravel() for g in np.meshgrid(np.linspace(0, nx - 1, 8), np.linspace(0, ny - 1, 8)))
    ra, dec = own.all_pix2world(gx, gy, 0)
    # a header WCS: TAN approximation of the file's TPV, pointing off by 3.6"
    approx = fit_wcs_from_points((gx, gy), SkyCoord(ra + 3 / 3600, dec - 2 / 3600, unit="deg"), projection="TAN")
    frame = Frame(data, np.zeros(data.shape, np.uint16), approx.to_header())
    cfg = Settings(astrometry={"max_offset_arcmin": 0.3, "match_radius_arcsec": 1.5})
    src = extract(frame, cfg.sources)
    stars = src[(src["flux"] / src["fluxerr"] > 10) & (src["flag"] <= 1)]
    gaia = RefCat.from_file(sorted(case.glob("gaia/*.fits")))
    wcs, stats = solve(frame, stars, gaia, cfg.astrometry, cfg.detector)
    assert stats["n_matched"] >= 4 and stats["rms_arcsec"] < 0.5
    sep = SkyCoord(*wcs.all_pix2world(gx, gy, 0), unit="deg").separation(SkyCoord(ra, dec, unit="deg"))
    assert sep.arcsec.max() <= 0.2                      # agrees with the file's own WCS


def test_fit_on_spread_subset(night, solved):
    """A fit on a subset spread over the frame (as ``max_fit_stars`` picks on full frames) is as good."""
    from ast3stream.astrometry.solve import spread_stars
    from ast3stream.catalogs.refcat import RefCat

    exp, frame, clean, _, _ = solved[0]
    n = len(clean) * 2 // 3
    sub = spread_stars(clean, frame.shape, n)                   # on a 3 x 3 grid
    assert len(sub) == n and np.all(np.diff(sub["flux"]) <= 0)
    cells = {(int(x * 3 / frame.shape[1]), int(y * 3 / frame.shape[0])) for x, y in zip(sub["x"], sub["y"])}
    assert len(cells) == 9
    params = Settings().astrometry.model_copy(update={"max_fit_stars": n})
    wcs, stats = solve(frame, clean, RefCat.from_file(night.out_dir / "refcat.fits"), params, Settings().detector)
    assert stats["n_matched"] >= 0.9 * n and stats["rms_arcsec"] < 0.1
    ny, nx = frame.shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 15), np.linspace(0, ny - 1, 15))
    a = SkyCoord(*wcs.all_pix2world(gx.ravel(), gy.ravel(), 0), unit="deg")
    b = SkyCoord(*night.true_wcs(exp.expid).all_pix2world(gx.ravel(), gy.ravel(), 0), unit="deg")
    assert np.sqrt(np.mean(a.separation(b).arcsec ** 2)) < 0.1

"""Photometry: aperture (eq. 1), chi-square zero point (eq. 2), residual (eq. 3), limit, PSF."""
import copy

import numpy as np
import pytest

from ast3stream.astrometry import apply_wcs
from ast3stream.catalogs.refcat import RefCat
from ast3stream.config import Settings
from ast3stream.photometry import calibrate, zero_point
from ast3stream.photometry.psf import build_psf, psf_photometry


@pytest.fixture(scope="module")
def calibrated(solved_night):
    night, solved = solved_night
    cfg = Settings()
    ref = RefCat.from_file(night.out_dir / "refcat.fits")
    out = []
    for exp, frame, src, _, wcs, _ in solved:
        frame = copy.deepcopy(frame)
        apply_wcs(frame, wcs)
        table, stats = calibrate(frame, src, ref, cfg.photometry, extraction=cfg.sources,
                                 match_radius_arcsec=cfg.astrometry.match_radius_arcsec)
        out.append((night, exp, frame, table, stats))
    return out


def test_zero_point_rejects_outliers():
    rng = np.random.default_rng(1)
    dm = 25.0 + rng.normal(0, 0.02, 200)
    dm[:20] += 1.0                                        # variables / blends
    zp, err, used = zero_point(dm, np.full(200, 0.02), 3.0, 10)
    assert zp == pytest.approx(25.0, abs=0.005) and not used[:20].any() and used[20:].mean() > 0.95


def test_zero_point_and_limit_against_truth(calibrated):
    for night, exp, frame, table, stats in calibrated:
        row = night.table[night.index(exp.expid)]
        assert stats["aperture_px"] == pytest.approx(6 * np.median(table["a"][table["clean"]]))   # eq. 1
        assert stats["n_zp"] >= 20
        assert abs(stats["zp"] - row["zp_true"]) < 0.02
        assert abs(stats["maglim"] - row["maglim_true"]) < 0.2
        truth = night.truth(exp.expid)
        stars = truth[(truth["kind"] == "star") & (truth["mag"] < 18)]
        m = table[table["zp_star"]]
        d = np.hypot(m["x"][:, None] - stars["x"][None], m["y"][:, None] - stars["y"][None])
        j = np.argmin(d, axis=1)
        ok = d[np.arange(len(m)), j] < 1
        assert np.median(np.abs(m["mag"][ok] - stars["mag"][j[ok]])) < 0.03       # calibrated mags


def test_psf_photometry_matches_aperture(calibrated):
    night, exp, frame, table, stats = calibrated[0]
    cfg = Settings()
    model = build_psf(frame, table[table["clean"]], 8, 2)
    assert model.degree >= 1 and np.allclose(model.at([10.0, 1000.0], [10.0, 900.0]).sum(axis=(1, 2)), 1)
    psf = psf_photometry(frame, table, cfg.photometry, extraction=cfg.sources)
    good = table["zp_star"]
    diff = psf["mag_psf"][good] - table["mag"][good]
    assert abs(np.median(diff)) < 0.01 and 1.4826 * np.median(np.abs(diff - np.median(diff))) < 0.04
    bright = good & (table["mag"] < 17)
    assert np.median(psf["mag_psf_err"][bright]) <= np.median(table["mag_err"][bright]) * 1.1

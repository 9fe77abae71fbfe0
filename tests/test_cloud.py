"""Cloud CNN on frame-simulator nights it was not trained on, and the transparency map it reads."""
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from ast3stream.classify.cloud import predict_cloudy
from ast3stream.classify.cloud_frames import night_thumbnails
from ast3stream.config import Settings
from ast3stream.quality.transparency import clear_zero_point, transparency_map


@pytest.mark.parametrize("seed, n_exposures, cloud_max_mag", [(9201, 6, 2.0), (9202, 4, 0.35)])
def test_cloud_cnn_on_heldout_frames(seed, n_exposures, cloud_max_mag):
    d = night_thumbnails(seed, 0.08, n_exposures=n_exposures, n_fields=2, cloud_max_mag=cloud_max_mag)
    assert d["thumbs"].shape[1:] == (256, 256) and d["tmaps"].shape[1:] == (32, 32)
    assert np.all(d["label"] == (d["depth"] >= 0.15))
    clear, cloudy = d["depth"] == 0, d["depth"] >= 0.3
    assert clear.sum() >= 2 and cloudy.sum() >= 2
    assert cloud_max_mag > 1 or np.all(d["depth"][cloudy] < 0.4)      # the thin-cloud night is thin
    probs = np.array([predict_cloudy(t, m) for t, m in zip(d["thumbs"], d["tmaps"])])
    assert np.all(probs[clear] < 0.5) and np.all(probs[cloudy] > 0.5)


def _stars(zp_clear, extinction, n=400, shape=(1000, 1200), seed=0):
    rng = np.random.default_rng(seed)
    y, x = rng.uniform(0, shape[0], n), rng.uniform(0, shape[1], n)
    ref = rng.uniform(14, 19, n)
    inst = ref - zp_clear + extinction(x, y) + rng.normal(0, 0.02, n)
    inst[:5] -= 2.0                                                  # variables/blends: rejected
    return Table(dict(x=x, y=y, ref_mag=ref, mag_aper_inst=inst, clean=np.ones(n, bool),
                      aper_flag=np.zeros(n, np.int32)))


def test_transparency_map_shows_grey_and_patchy_extinction():
    cfg = Settings()
    hdr = fits.Header(dict(EXPTIME=cfg.detector.exptime, AIRMASS=1.5))
    zp = clear_zero_point(hdr, cfg.detector, cfg.quality.extinction_k)
    assert zp == pytest.approx(cfg.detector.zeropoint - 0.5 * cfg.quality.extinction_k)
    grey = transparency_map(_stars(zp, lambda x, y: np.full_like(x, 0.2)), (1000, 1200), zp, cfg.quality,
                            cfg.photometry)
    assert grey.shape == (32, 32) and np.isfinite(grey).mean() > 0.95
    assert np.nanmedian(grey) == pytest.approx(0.2, abs=0.01)
    patchy = transparency_map(_stars(zp, lambda x, y: np.where(x < 600, 0.8, 0.0)), (1000, 1200), zp,
                              cfg.quality, cfg.photometry)
    assert np.nanmedian(patchy[:, :12]) == pytest.approx(0.8, abs=0.05)      # [y, x]: left columns
    assert np.nanmedian(patchy[:, 20:]) == pytest.approx(0.0, abs=0.05)
    assert np.isnan(transparency_map(None, (1000, 1200), zp, cfg.quality, cfg.photometry)).all()

"""Light curves: association within 1.5 arcsec and forced photometry with upper limits."""
import numpy as np
import pytest
from astropy.table import Table

from ast3stream.lightcurves import associate, forced_photometry
from ast3stream.subtraction import Difference
from ast3stream.subtraction.synthetic import render_stars


def test_associate():
    objects = Table(dict(ra=[10.0, 10.01], dec=[5.0, 5.0]))
    cands = Table(dict(ra=[10.0 + 1.0 / 3600, 10.01, 11.0], dec=[5.0, 5.0 + 2.0 / 3600, 5.0]))
    assert list(associate(cands, objects, 1.5)) == [0, -1, -1]
    assert list(associate(cands, Table(dict(ra=[], dec=[])), 1.5)) == [-1, -1, -1]


def test_forced_photometry_flux_and_limit():
    rng = np.random.default_rng(1)
    img = render_stars((80, 80), [40.2], [39.6], [2000.0], 3.0) + rng.normal(0, 5.0, (80, 80))
    d = Difference(diff=img.astype(np.float32), noise=np.full((80, 80), 5.0, np.float32),
                   mask=np.zeros((80, 80), np.uint16), stats={"psf_fwhm": 3.0, "apcorr": 1.0})
    t = forced_photometry(d, [40.2, 20.0], [39.6, 20.0], 3.0, 25.0)
    assert t["detected"][0] and not t["detected"][1]
    assert t["flux"][0] == pytest.approx(2000.0, abs=3 * t["flux_err"][0])
    assert t["mag"][0] == pytest.approx(25 - 2.5 * np.log10(2000), abs=0.05)
    assert np.isnan(t["mag"][1]) and t["upper_limit"][1] == pytest.approx(25 - 2.5 * np.log10(5 * t["flux_err"][1]))

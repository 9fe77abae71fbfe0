"""Cross-match: GLADE hosts and known asteroids from an MPCORB file."""
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from ast3stream.config import Settings
from ast3stream.crossmatch import GalaxyCatalog, asteroids_in_field, crossmatch, read_mpcorb

CAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "catalogs"
CFG = Settings()
pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def catalogs():
    if not CAT.exists():
        pytest.skip("../shared/data/catalogs is absent")
    return GalaxyCatalog.from_csv(CAT / "GLADE.csv"), read_mpcorb(CAT / "mpcorb.dat")


def test_read_mpcorb(catalogs):
    _, orbits = catalogs
    assert len(orbits) == 22304
    ceres = orbits[0]
    assert ceres.designation == "1" and ceres.name == "Ceres" and ceres.a == pytest.approx(2.7656157)


def test_hosts_and_asteroids(catalogs):
    galaxies, orbits = catalogs
    mjd = 61000.5
    field = asteroids_in_field(orbits, mjd, 30.0, 10.0, 5.0)
    assert len(field) > 10
    ast = field[0]
    g = galaxies.table[0]
    cands = Table(dict(ra=[ast["ra"] + 2 / 3600, g["ra"] + 5 / 3600, 0.0], dec=[ast["dec"], g["dec"], -89.0]))
    out = crossmatch(cands, mjd, CFG, galaxies=galaxies, asteroids=orbits)
    assert out["ssnamenr"][0] == ast["designation"] and out["ss_sep_arcsec"][0] < 3
    assert out["host_id"][1] == g["id"] and out["host_dist_mpc"][1] == pytest.approx(g["dist_mpc"])
    assert out["host_sep_arcsec"][1] == pytest.approx(5 / 3600 * 3600 * np.cos(np.radians(g["dec"])), rel=0.01)
    assert out["ssnamenr"][2] == "" and np.isnan(out["host_sep_arcsec"][2])

"""The exposure bundle: its HDUs, compressed side by side, read back as one valid FITS file."""
from types import SimpleNamespace

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ast3stream.products import write_bundle


def test_a_bundle_reads_back_with_every_plane_within_its_quantisation(tmp_path):
    rng = np.random.default_rng(3)
    shape = (300, 400)
    sky = [rng.normal(0.0, 2.0, shape).astype(np.float32) for _ in range(3)]
    sky[0][150, 200] = 500.0   # a transient in the difference
    mask = np.zeros(shape, np.uint16)
    mask[10:20, 30:40] = 4
    hdr = fits.Header({"NOISERAT": 1.03})
    diff = SimpleNamespace(diff=sky[0], header=hdr, mask=mask)
    cands = Table({"candidate_id": ["c1"], "x": [200.0], "y": [150.0], "score": [0.97]})
    path = write_bundle(tmp_path / "b.fits", {"expid": "e1", "lane": "dip", "maglim": float("nan")}, diff,
                        SimpleNamespace(data=sky[1], header=fits.Header()), SimpleNamespace(data=sky[2], header=fits.Header()),
                        cands)
    with fits.open(path, checksum=True) as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == ["PRIMARY", "DIFF", "SCI", "TMPL", "MASK", "CANDS"]
        assert hdul[0].header["EXPID"] == "e1" and "MAGLIM" not in hdul[0].header
        assert hdul["DIFF"].header["NOISERAT"] == 1.03
        for name, plane in zip(("DIFF", "SCI", "TMPL"), sky):   # quantised at noise/16: error << sigma
            err = hdul[name].data - plane
            assert np.abs(err).max() < 0.2 and abs(hdul[name].data[150, 200] - plane[150, 200]) < 0.2
        assert np.array_equal(hdul["MASK"].data, mask.astype(np.int16))   # lossless
        assert list(Table(hdul["CANDS"].data)["candidate_id"]) == ["c1"]
    assert path.stat().st_size < 3 * sky[0].nbytes   # compressed: less than the float planes
    assert not list(tmp_path.glob("*.part"))

import numpy as np
import pytest
from astropy.io import fits

from ast3stream.rawfile import IncompleteFile, check_complete, exposure_id, science_header


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "ast3_x_0001.fits"
    hdr = fits.Header({"FIELD": "f001", "MJD-OBS": 61000.5})
    fits.PrimaryHDU(np.zeros((50, 60), np.uint16), hdr).writeto(path)
    return path


def test_complete_file(raw):
    assert check_complete(raw) == 1
    assert exposure_id(raw, science_header(raw)) == "ast3_x_0001"


def test_fpack_file_is_complete_and_readable(tmp_path):
    path = tmp_path / "a.fits.fz"
    hdr = fits.Header({"FIELD": "f002", "EXPID": "e42"})
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.arange(100 * 80, dtype=np.int32).reshape(100, 80), hdr)]).writeto(path)
    assert check_complete(path) == 2
    header = science_header(path)
    assert header["FIELD"] == "f002" and exposure_id(path, header) == "e42"


@pytest.mark.parametrize("cut", [1, 2880, 2880 * 2])
def test_truncated_file_is_incomplete(raw, cut):
    data = raw.read_bytes()
    raw.write_bytes(data[:-cut])
    with pytest.raises(IncompleteFile, match="truncated|END|multiple"):
        check_complete(raw)


def test_non_fits_file(tmp_path):
    path = tmp_path / "junk.fits"
    path.write_bytes(b"hello world\n" * 240)  # 2880 bytes, right size, wrong content
    with pytest.raises(IncompleteFile, match="not a FITS file"):
        check_complete(path)


def test_garbage_after_last_hdu(raw):
    raw.write_bytes(raw.read_bytes() + b"x" * 2880)
    with pytest.raises(IncompleteFile, match="garbage"):
        check_complete(raw)

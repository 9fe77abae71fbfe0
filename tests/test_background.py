"""The numba port of sep's mesh background (sources.background) against sep itself: the same maps
bit for bit, the same global values, the same source catalogue from ``extract``."""
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import sep

from ast3stream.config import SourcesConfig
from ast3stream.image import Frame
from ast3stream.sources.background import mesh_background

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
LT = IMAGES / "lt-rise" / "q_e_20200830_1_1_1_1.fits"
DECAM = IMAGES / "decam-sfft" / "input_data" / "DEC-OBS04a.mini.fits"
PRIME = IMAGES / "legacypipe/mzlsbass2/images/90prime/CP/V2.3/CP20180312/ksb_180313_081856_oo{}_g_ls9.CCD4.fits"


def assert_same_as_sep(data, mask, **kw):
    ref = sep.Background(data, mask=mask, **kw)
    port = mesh_background(data, mask, **kw)
    assert np.float32(port.globalback) == np.float32(ref.globalback)
    assert np.float32(port.globalrms) == np.float32(ref.globalrms)
    np.testing.assert_array_equal(port.back(), ref.back())
    np.testing.assert_array_equal(port.rms(), ref.rms())
    np.testing.assert_array_equal(port.subtracted(data), data - ref.back())
    a, b = data.astype(np.float64), data.astype(np.float64)
    ref.subfrom(a)
    port.subfrom(b)
    np.testing.assert_array_equal(a, b)
    return port


def _real(name):
    from astropy.io import fits

    if not IMAGES.exists():
        pytest.skip("../shared/data is absent")
    if name == "lt":
        return fits.getdata(LT).astype(np.float32), None
    if name == "decam":
        return fits.getdata(DECAM).astype(np.float32), None
    return fits.getdata(str(PRIME).format("i"), 1).astype(np.float32), fits.getdata(str(PRIME).format("d"), 1) != 0


@pytest.mark.parametrize("name, kw", [
    ("lt", dict(bw=64, bh=64, fw=3, fh=3)),        # 1030 x 1026: partial meshes on both axes
    ("lt", dict(bw=256, bh=256, fw=3, fh=3)),      # the pipeline's mesh
    ("lt", dict(bw=100, bh=37, fw=5, fh=3)),
    ("decam", dict(bw=32, bh=32, fw=3, fh=3)),
    ("prime", dict(bw=32, bh=32, fw=3, fh=3)),     # 118 x 119 with the CP's mask (ood) applied
    ("prime", dict(bw=16, bh=24, fw=3, fh=3)),
])
def test_equals_sep_on_real_frames(name, kw):
    data, mask = _real(name)
    port = assert_same_as_sep(data, mask, **kw)
    assert port.globalrms > 0


@lru_cache
def simulated(shape=(700, 913), seed=1):
    """Sky with a gradient, 300 stars, 5 % masked pixels, a masked block wider than a mesh (bad
    meshes), a NaN row band and a few -2e30 pixels (cached: do not modify)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    data = (rng.normal(500, 10, shape) + 0.05 * xx + 1e-4 * (yy - 300) ** 2).astype(np.float32)
    for x0, y0, f in zip(rng.uniform(0, nx, 300), rng.uniform(0, ny, 300), rng.uniform(100, 1e5, 300)):
        data += (f * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 4.5)).astype(np.float32)
    mask = rng.random(shape) < 0.05
    mask[100:400, 200:600] = True
    data[150:160] = np.nan
    data[300:310, 50:60] = -2e30
    return data, mask


@pytest.mark.parametrize("kw", [dict(bw=64, bh=64, fw=3, fh=3), dict(bw=64, bh=48, fw=5, fh=3),
                                dict(bw=128, bh=128, fw=1, fh=1)])
def test_equals_sep_on_a_masked_frame_not_a_multiple_of_the_mesh(kw):
    data, mask = simulated()
    port = assert_same_as_sep(data, mask, **kw)
    assert_same_as_sep(data, mask.astype(np.uint8), **kw)     # any nonzero mask value masks
    assert_same_as_sep(data, None, **kw)
    # the masked block makes bad meshes, which were filled from their neighbours
    bw, bh = kw["bw"], kw["bh"]
    inside = port.grid[-(-100 // bh):400 // bh, -(-200 // bw):600 // bw]
    assert inside.size and np.all(np.abs(inside - 520) < 100)


@pytest.mark.parametrize("cut", [np.s_[:50], np.s_[:, :40], np.s_[:40, :40], np.s_[:, :]])
def test_equals_sep_on_one_row_or_column_of_meshes_and_all_bad(cut):
    data, mask = simulated()
    data, mask = np.ascontiguousarray(data[cut]), np.ascontiguousarray(mask[cut])
    assert_same_as_sep(data, mask, bw=64, bh=64, fw=3, fh=3)
    assert_same_as_sep(data, np.ones_like(mask), bw=64, bh=64, fw=3, fh=3)   # no good mesh: 0 and 1
    assert_same_as_sep(np.full(data.shape, 7.0, np.float32), None, bw=64, bh=64, fw=3, fh=3)


def test_extract_catalogue_is_the_one_from_seps_background():
    from ast3stream.sources import strips
    from ast3stream.sources.extract import bit_mask, catalogue, extract

    data, mask = simulated((900, 1100), seed=4)
    data = np.nan_to_num(data, nan=500.0, neginf=500.0)
    data[data < -1e29] = 500.0
    bits = np.where(mask, 1, 0).astype(np.uint16)
    cfg = SourcesConfig(workers=1, mesh=128)
    table = extract(Frame(data, bits), cfg)
    m = bit_mask(bits, cfg.mask_bits)
    ref = sep.Background(data, mask=m, bw=cfg.mesh, bh=cfg.mesh, fw=3, fh=3)
    sub = data.copy()
    ref.subfrom(sub)
    want = catalogue(strips.extract_strips(sub, m, ref.globalrms, cfg), data, sub, ref.globalrms, ref.globalback)
    assert len(table) > 200 and table.colnames == want.colnames and table.meta == want.meta
    for name in table.colnames:
        np.testing.assert_array_equal(np.asarray(table[name]), np.asarray(want[name]), err_msg=name)


def _longest_stall(fn) -> float:
    """Longest gap between this thread's 1 ms wake-ups while ``fn`` runs in another thread [s]."""
    import threading
    import time

    worker = threading.Thread(target=fn)
    longest, last = 0.0, time.perf_counter()
    worker.start()          # the new thread may take the GIL before start() returns
    while worker.is_alive():
        time.sleep(0.001)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    worker.join()
    return longest


def test_the_port_leaves_the_gil_to_other_threads():
    """sep.Background holds the GIL for its whole call (why it ran in the pool); the port does not."""
    rng = np.random.default_rng(2)
    data = rng.normal(600, 15, (6000, 6000)).astype(np.float32)
    mask = rng.random(data.shape) < 0.01
    mesh_background(data[:600, :600], mask[:600, :600], bw=256, bh=256)     # kernels loaded
    held = _longest_stall(lambda: sep.Background(data, mask=mask, bw=256, bh=256).subfrom(data.copy()))
    port = _longest_stall(lambda: mesh_background(data, mask, bw=256, bh=256).subtracted(data))
    assert held > 0.1 and port < held / 3, (held, port)

"""``ast3stream template rebuild --field F --stack N`` on a simulated field's epochs: the stack
becomes the field's template for both lanes, deeper than one epoch by about ``2.5 log10 sqrt(N)``, and the difference of an epoch left out
against it has the noise it predicts."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats

from agents.templates import _front, stack_template
from ast3stream.image import Frame
from ast3stream.subtraction.pair import subtract_pair


def _sky_rms(frame: Frame) -> float:
    good = (frame.mask == 0) & np.isfinite(frame.data)
    return float(sigma_clipped_stats(frame.data[good], sigma=3, maxiters=10)[2])


@pytest.mark.slow
def test_a_stacked_template_is_registered_deeper_and_subtracts_to_unit_noise(small_night_processed):
    res = small_night_processed
    [field] = {r["field_id"] for r in res.db.rows("exposures")}
    single = res.db.template(field, "dip")
    row = stack_template(res, field, 2)
    assert row["exposure_id"].startswith("stack2-") and row["exposure_id"] != single["exposure_id"]
    qip = res.db.template(field, "qip")
    assert qip["exposure_id"] == row["exposure_id"]

    stack = Frame.read(res.store.path(row["path"]))
    ref_id = row["exposure_id"].split("-", 1)[1]
    ref = _front(res, res.db.rows("exposures", exposure_id=ref_id)[0])
    measured = 2.5 * np.log10(_sky_rms(ref.frame) / _sky_rms(stack))
    assert 0.2 < measured < 0.6  # two epochs of similar depth: 0.38 mag
    assert stack.header["DEPTHGN"] == pytest.approx(measured, abs=0.15)
    assert row["maglim"] == pytest.approx(ref.metrics["maglim"] + stack.header["DEPTHGN"])
    binned = Frame.read(res.store.path(qip["path"]))
    n = res.cfg.detector.qip_binning
    assert binned.var is not None and binned.var.shape == (stack.shape[0] // n, stack.shape[1] // n)

    # the epoch left out against the stack: the difference's predicted noise is its real scatter
    # (an epoch inside the stack would scatter less than predicted: its own noise is in both)
    stacked = {ref_id, *(stack.header["STKID*"].values())}
    [left] = [r for r in res.db.rows("exposures") if r["exposure_id"] not in stacked]
    sci = _front(res, left)
    d = subtract_pair(sci.frame, stack, res.cfg).difference
    z = d.snr[(d.mask == 0) & np.isfinite(d.snr)]
    robust = 1.4826 * np.median(np.abs(z - np.median(z)))
    assert 0.85 < robust < 1.2


def test_a_stack_leaves_out_broad_epochs_and_flags_the_stars_an_epoch_lacks():
    """Four epochs of one synthetic field, FWHM 3.0, 3.1, 3.2 and 3.8 px: the 3.8 px one is beyond
    ``template.stack_fwhm_ratio`` (1.1) of the sharpest and weighs 0. Epoch 1 has a masked patch
    on half of the brightest star and one on empty sky: the stack keeps the flag on the star's
    pixels (their mix of epochs, hence PSF, is not the stack's: SFFT must not fit on them) and
    fills the sky patch from the other epochs."""
    from ast3stream.config import Settings
    from ast3stream.image import MaskBits
    from ast3stream.subtraction.synthetic import observe, tan_header
    from ast3stream.templates import stack_frames

    rng = np.random.default_rng(5)
    shape = (200, 200)
    n = 120
    x, y = rng.uniform(10, 190, n), rng.uniform(10, 190, n)
    flux = 10 ** rng.uniform(3.3, 5.3, n)
    d = np.hypot(x[:, None] - x, y[:, None] - y) + np.eye(n) * 1e9
    star = int(np.argmax(np.where((d.min(axis=1) > 15) & (x > 30) & (x < 170) & (y > 30) & (y < 170), flux, 0)))
    sx, sy = int(round(x[star])), int(round(y[star]))
    frames = []
    for fwhm in (3.0, 3.1, 3.2, 3.8):
        img, mask = observe(shape, x, y, flux, fwhm, 300.0, rng)
        header = tan_header(shape)
        header["GAIN"] = 1.0
        frames.append(Frame(img, mask, header))
    frames[1].mask[sy - 4:sy + 5, sx:sx + 5] |= np.uint16(MaskBits.BAD)
    gy, gx = np.mgrid[20:180:4, 20:180:4].reshape(2, -1)
    far = int(np.argmax(np.hypot(gx[:, None] - x, gy[:, None] - y).min(axis=1)))   # the emptiest sky
    kx, ky = int(gx[far]), int(gy[far])
    frames[1].mask[ky - 4:ky + 5, kx:kx + 5] |= np.uint16(MaskBits.BAD)
    stack = stack_frames(frames, Settings(subtraction=dict(backend="numpy")))
    assert stack.header["NCOMBINE"] == 3 and stack.header["STKW3"] == 0 and stack.header["STKW1"] > 0
    assert (stack.mask[sy - 4:sy + 5, sx:sx + 5] & np.uint16(MaskBits.BAD)).all()
    assert (stack.mask[ky - 4:ky + 5, kx:kx + 5] == 0).all() and (stack.mask[sy - 4:sy + 5, sx - 5:sx - 1] == 0).all()

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

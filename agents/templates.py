"""Operator actions on field templates: make an exposure, or a stack of epochs, the template of its field.

The chain registers a field's first acceptable exposure by itself; ``ast3stream template
set EXPOSURE`` replaces it, and ``ast3stream template rebuild --field F --stack N`` replaces it
with the co-add of the field's N best acceptable epochs (run it again as epochs accumulate).
Only templates are kept on disk, not every calibrated frame, so each exposure's raw file is
taken through the front half again (the same stage functions as the stream) and the frames
are stored as the field's templates for both lanes. Exposures already subtracted keep their
results; the new template (a new version in the worker's cache) serves what comes next.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from ast3stream.front import run_front
from ast3stream.pipeline import Exposure, acceptable_template, template_frames, template_stats
from ast3stream.templates import bin_frame, stack_frames

from .chain import Resources, template_key


log = logging.getLogger("ast3stream.templates")


def _front(res: Resources, row: dict) -> Exposure:
    """The exposure of a database row, through the front half again from its raw file."""
    exp = Exposure(exposure_id=row["exposure_id"], raw_path=row["path"], field_id=row["field_id"], mjd=row["mjd"],
                   too=bool(row["too"]), namespace=res.db.namespace)
    run_front(exp, res.cfg, calibration=res.calibration, refcat=res.refcat)
    return exp


def set_template(res: Resources, exposure_id: str) -> dict:
    """Make ``exposure_id`` the template of its field (both lanes); return the DIP template row."""
    rows = res.db.rows("exposures", exposure_id=exposure_id)
    if not rows:
        raise KeyError(f"unknown exposure {exposure_id}")
    row = rows[0]
    if not row["field_id"]:
        raise ValueError(f"exposure {exposure_id} has no field (FIELD header)")
    exp = _front(res, row)
    det = res.cfg.detector
    for lane, frame in template_frames(exp, detector=det).items():
        key = template_key(res.store, exp.namespace, exp.field_id, exposure_id, lane)
        res.store.put(key, frame.write, sync=True)
        res.db.set_template(exp.field_id, lane, exposure_id, key, **template_stats(exp, lane, detector=det))
    return res.db.template(exp.field_id, "dip")


def _rank(row: dict) -> tuple[float, float]:
    """Deeper first, then sharper: the depth and seeing the quality stage recorded."""
    q = row["quality"] or {}
    return (-(q.get("maglim") or -math.inf), q.get("fwhm_px") or math.inf)


def stack_template(res: Resources, field_id: str, n: int) -> dict:
    """Make the co-add of the field's ``n`` best acceptable epochs its template (both lanes); return the DIP row.

    Epochs are taken deepest first (then sharpest) among those whose raw file is still there,
    through the front half again, and kept when :func:`~ast3stream.pipeline.acceptable_template`
    accepts them, until ``n`` are in; :func:`~ast3stream.templates.stack_frames` co-adds them
    (registration, scaling, depth/seeing weights, clipping) and the QIP template is the stack
    binned. The template's id is ``stack{k}-{reference epoch}``, ``k`` the epochs co-added (``NCOMBINE``:
    those within ``template.stack_fwhm_ratio`` of the sharpest FWHM); its limiting magnitude is the
    reference's plus the stack's depth gain (``DEPTHGN``).
    """
    if n < 2:
        raise ValueError(f"a stacked template needs at least 2 epochs, got --stack {n}")
    rows = sorted((r for r in res.db.rows("exposures", field_id=field_id) if Path(r["path"]).is_file()), key=_rank)
    if not rows:
        raise KeyError(f"no exposure of field {field_id} with its raw file at hand")
    epochs = []
    for row in rows:
        exp = _front(res, row)
        ok, why = acceptable_template(exp, template=res.cfg.template)
        if not ok:
            log.info("template stack of %s: %s left out (%s)", field_id, exp.exposure_id, why)
            continue
        epochs.append(exp)
        if len(epochs) == n:
            break
    if len(epochs) < 2:
        raise ValueError(f"field {field_id}: only {len(epochs)} acceptable epoch(s) with raw files; a stack needs 2")
    stack = stack_frames([e.frame for e in epochs], res.cfg)
    for i, e in enumerate(epochs):
        stack.header[f"STKID{i}"] = (e.exposure_id, f"exposure of epoch {i}")
    ref = epochs[int(stack.header["STACKREF"])]
    used = int(stack.header["NCOMBINE"])   # epochs much broader than the sharpest are left out (template.stack_fwhm_ratio)
    stack_id = f"stack{used}-{ref.exposure_id}"
    det = res.cfg.detector
    for lane, frame in {"dip": stack, "qip": bin_frame(stack, det.qip_binning)}.items():
        stats = template_stats(ref, lane, detector=det)
        if stats["maglim"] is not None:
            stats["maglim"] += float(stack.header["DEPTHGN"])
        key = template_key(res.store, ref.namespace, field_id, stack_id, lane)
        res.store.put(key, frame.write, sync=True)
        res.db.set_template(field_id, lane, stack_id, key, **stats)
    log.info("template of %s: %s (%d of %d epochs, depth gain %.2f mag)", field_id, stack_id, used, len(epochs),
             stack.header["DEPTHGN"])
    return res.db.template(field_id, "dip")

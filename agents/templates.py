"""Operator actions on field templates: make an exposure the template of its field.

The chain registers a field's first acceptable exposure by itself; ``ast3stream template
set EXPOSURE`` replaces it. Only templates are kept on disk, not every calibrated frame, so
the exposure's raw file is taken through the front half again (the same stage functions as
the stream) and its frames are stored as the field's templates for both lanes.
"""
from __future__ import annotations

from ast3stream.front import run_front
from ast3stream.pipeline import Exposure, template_frames, template_stats

from .chain import Resources, template_key


def set_template(res: Resources, exposure_id: str) -> dict:
    """Make ``exposure_id`` the template of its field (both lanes); return the DIP template row."""
    rows = res.db.rows("exposures", exposure_id=exposure_id)
    if not rows:
        raise KeyError(f"unknown exposure {exposure_id}")
    row = rows[0]
    if not row["field_id"]:
        raise ValueError(f"exposure {exposure_id} has no field (FIELD header)")
    exp = Exposure(exposure_id=exposure_id, raw_path=row["path"], field_id=row["field_id"], mjd=row["mjd"],
                   too=bool(row["too"]), namespace=res.db.namespace)
    run_front(exp, res.cfg, calibration=res.calibration, refcat=res.refcat)
    det = res.cfg.detector
    for lane, frame in template_frames(exp, detector=det).items():
        key = template_key(res.store, exp.namespace, exp.field_id, exposure_id, lane)
        res.store.put(key, frame.write, sync=True)
        res.db.set_template(exp.field_id, lane, exposure_id, key, **template_stats(exp, lane, detector=det))
    return res.db.template(exp.field_id, "dip")

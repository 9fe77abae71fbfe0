"""Per-stage backlog from the database (agents.status.stage_backlog)."""
import time

from agents.status import stage_backlog
from agents.db import Database
from ast3stream.events import ExposureEvent


def test_stage_backlog_follows_events_through_the_lanes(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    for eid, too in (("e1", False), ("e2", True)):
        db.register_exposure(ExposureEvent(eid, f"/raw/{eid}.fits", eid * 32, 1, 99.0, 100.0, "f1", 60000.0, too))
    db.record_stage("e1", "dip", "reduction", "1", 101.0, 110.0)
    db.record_stage("e1", "dip", "sources", "1", 111.0, 120.0)
    for k, stage in enumerate(("reduction", "sources", "astrometry", "photometry", "quality")):
        db.record_stage("e2", "qip", stage, "1", 100.0 + 10 * k, 110.0 + 10 * k)
    db.record_stage("e2", "qip", "subtraction", "1", 151.0, 160.0)
    db.record_stage("e2", "dip", "subtraction", "", 152.0, None, status="deferred")
    db.record_dead_letter("ast3.sources.dip", "astrometry", "e1", "no WCS solution")  # failed_at = now
    later = time.time() + 1
    lag = stage_backlog(db, [99.5, 105.0, 115.0, 155.0, 165.0, later])
    assert lag[("reduction", "dip")].tolist() == [0, 1, 0, 0, 0, 0]
    assert lag[("reduction", "qip")].tolist() == [0, 1, 0, 0, 0, 0]  # a ToO exposure enters the QIP lane
    assert lag[("sources", "dip")].tolist() == [0, 0, 1, 0, 0, 0]
    assert lag[("astrometry", "dip")].tolist() == [0, 0, 0, 1, 1, 0]  # finished by its dead letter
    assert lag[("psf", "qip")].tolist() == [0, 0, 0, 1, 1, 1]  # the slow lane never ran
    assert lag[("subtraction", "qip")].tolist() == [0, 0, 0, 1, 0, 0]
    # QIP quality also hands the ToO exposure to the DIP lane; deferred is not finished
    assert lag[("subtraction", "dip")].tolist() == [0, 0, 0, 1, 1, 1]
    assert lag[("detection", "qip")].tolist() == [0, 0, 0, 0, 1, 1]

import time

import pytest
from astropy.table import Table

from agents.db import Database
from ast3stream.events import ExposureEvent


def _exp(eid, sha):
    return ExposureEvent(exposure_id=eid, path=f"/r/{eid}.fits", sha256=sha, size=1, file_closed_at=0.0,
                         detected_at=0.0, field_id="f1")


def test_exposures_are_deduplicated_by_content_once_published(db_url):
    db = Database(db_url)
    assert db.register_exposure(_exp("e1", "a" * 64))
    # registered but not published (a crash in between): offered again
    assert db.register_exposure(_exp("e1", "a" * 64))
    db.mark_published("e1")
    assert not db.register_exposure(_exp("e1-copy", "a" * 64))
    assert db.count("exposures") == 1 and db.rows("exposures")[0]["status"] == "ingested"
    db.update_exposure("e1", status="reduced")
    db.mark_published("e1")  # a late acknowledgement never moves an exposure back
    assert db.rows("exposures")[0]["status"] == "reduced"


def test_template_waits_for_earlier_exposures_until_judged(db_url):
    db = Database(db_url)
    for eid, mjd in (("e1", 1.0), ("e2", 2.0), ("e3", 3.0)):
        db.register_exposure(ExposureEvent(exposure_id=eid, path=f"/r/{eid}.fits", sha256=eid * 32, size=1,
                                           file_closed_at=0.0, detected_at=0.0, field_id="f1", mjd=mjd))
    assert db.earlier_undecided("f1", 3.0) == ["e1", "e2"]
    db.update_exposure("e1", status="calibrated")  # calibrated is not yet judged
    db.update_exposure("e2", status="no_template")
    assert db.earlier_undecided("f1", 3.0) == ["e1"]
    db.update_exposure("e1", status="template")
    assert db.earlier_undecided("f1", 3.0) == []
    first = db.deferred_since("e3", "qip", "subtraction")
    assert db.deferred_since("e3", "qip", "subtraction") == first


def test_namespaces_are_separate_tables(db_url):
    live, replay = Database(db_url), Database(db_url, "rb2")
    live.register_exposure(_exp("e1", "a" * 64))
    assert replay.count("exposures") == 0
    assert replay.register_exposure(_exp("e1", "a" * 64))


def test_template_claim_is_first_come(db_url):
    db = Database(db_url)
    first = db.claim_template("f1", "dip", "e1", "/p/e1.fits", maglim=19.0)
    second = db.claim_template("f1", "dip", "e2", "/p/e2.fits", maglim=20.0)
    assert first["exposure_id"] == second["exposure_id"] == "e1"


def test_too_fields_and_retraction(db_url):
    db = Database(db_url)
    t = Table({"field_id": ["f1", "f2"], "prob": [0.3, 0.1], "cum_prob": [0.3, 0.4]})
    assert db.store_too_fields("S1", t) == 2
    assert db.too_event_for_field("f1")["event_id"] == "S1"
    db.retract_too("S1")
    assert db.too_event_for_field("f1") is None


def test_alert_records_are_idempotent(db_url):
    db = Database(db_url)
    row = dict(alert_id="a1", candidate_id="c", object_id="o", exposure_id="e", lane="dip", score=0.9,
               digest="d", published_at=1.0, latency_s=2.0)
    db.record_alert(row)
    db.record_alert({**row, "score": 0.1})
    assert db.count("alerts") == 1 and db.rows("alerts")[0]["score"] == 0.9


def test_retention_keeps_templates_in_force_bundles_and_alerts_only(db_url, tmp_path):
    from agents.store import ProductStore

    db = Database(db_url)
    store = ProductStore(tmp_path / "products")
    for eid, status in (("e1", "template"), ("e2", "alerted"), ("e3", "reduced")):
        db.register_exposure(_exp(eid, eid * 32))
        db.update_exposure(eid, status=status)
        for name in (("bundle.fits",), ("alerts.avro",), ("thumbnail.png",), ("psf.fits",), ("state", "frame.fits")):
            store.put(store.key("live", eid, "dip", *name), lambda p: p.write_bytes(b"x"), sync=True)
    (tmp_path / "products" / "live" / "e2" / "dip" / ".bundle.fits.1.part").write_bytes(b"x")  # being written
    for eid in ("e1", "e0"):  # e0: a template no longer in force
        store.put(store.key("live", "templates", "f1", f"{eid}_dip.fits"), lambda p: p.write_bytes(b"x"), sync=True)
    db.set_template("f1", "dip", "e1", store.key("live", "templates", "f1", "e1_dip.fits"))
    now = time.time()
    assert store.prune(db, retention_days=0, now=now + 60) == 6  # e1, e2: thumbnail, psf, state
    left = sorted(p.relative_to(tmp_path / "products" / "live").as_posix()
                  for p in (tmp_path / "products").rglob("*") if p.is_file())
    assert left == ["e1/dip/alerts.avro", "e1/dip/bundle.fits", "e2/dip/.bundle.fits.1.part", "e2/dip/alerts.avro",
                    "e2/dip/bundle.fits", "e3/dip/alerts.avro", "e3/dip/bundle.fits", "e3/dip/psf.fits",
                    "e3/dip/state/frame.fits", "e3/dip/thumbnail.png", "templates/f1/e0_dip.fits",
                    "templates/f1/e1_dip.fits"]
    # after a day: a stuck exposure's files, a template not in force (superseded or about to be claimed),
    # a write's temporary file (of a writer killed)
    assert store.prune(db, retention_days=0, now=now + 2 * 86400) == 5
    assert store.disk_use("live") == 7


@pytest.mark.slow
def test_a_night_gives_the_same_alerts_on_postgresql_as_on_sqlite(small_night, small_night_alerts, night_settings,
                                                                   pg_db_url):
    from agents.chain import Resources, process_exposure

    ctx = Resources(night_settings(database={"url": pg_db_url}))
    for exp in small_night[1].exposures:
        process_exposure(exp.path, ctx)
    assert small_night_alerts
    assert {r["alert_id"]: r["digest"] for r in ctx.db.rows("alerts")} == small_night_alerts


def test_workers_starting_together_create_the_tables_once(db_url):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        dbs = list(pool.map(lambda ns: Database(db_url, ns), ["", "", "", "rb2", "rb2", "rb2"]))
    dbs[0].register_exposure(_exp("e1", "a" * 64))
    assert [db.count("exposures") for db in dbs] == [1, 1, 1, 0, 0, 0]


def test_association_waits_for_earlier_lanes_in_observing_order(db_url):
    db = Database(db_url)
    for eid, mjd, too in (("e1", 1.0, False), ("e2", 2.0, False), ("e3", 3.0, True)):
        db.register_exposure(ExposureEvent(exposure_id=eid, path=f"/r/{eid}.fits", sha256=eid * 32, size=1,
                                           file_closed_at=0.0, detected_at=0.0, field_id="f1", mjd=mjd, too=too))
    db.update_exposure("e1", status="template")
    assert db.unassociated_before("f1", 3.0, "e3", "qip") == ["e2/dip"]
    assert sorted(db.unassociated_before("f1", 3.0, "e3", "dip")) == ["e2/dip", "e3/qip"]
    db.record_stage("e2", "dip", "crossmatch", "1", 0.0, 1.0)
    db.record_stage("e3", "qip", "crossmatch", "1", 0.0, 1.0)
    assert db.unassociated_before("f1", 3.0, "e3", "dip") == []
    assert db.unassociated_before("f1", 2.0, "e2", "dip") == []
    db.register_exposure(ExposureEvent(exposure_id="e0", path="/r/e0.fits", sha256="0" * 64, size=1,
                                       file_closed_at=0.0, detected_at=0.0, field_id="f1", mjd=0.5))
    assert db.unassociated_before("f1", 2.0, "e2", "dip") == ["e0/dip"]
    db.record_dead_letter("t", "reduction", "e0", "bad frame")  # dead-lettered: stopped
    assert db.unassociated_before("f1", 2.0, "e2", "dip") == []

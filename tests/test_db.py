from astropy.table import Table

from ast3stream.db import Database
from ast3stream.events import ExposureEvent


def _exp(eid, sha):
    return ExposureEvent(exposure_id=eid, path=f"/r/{eid}.fits", sha256=sha, size=1, file_closed_at=0.0,
                         detected_at=0.0, field_id="f1")


def test_exposures_are_deduplicated_by_content(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/a.db")
    assert db.register_exposure(_exp("e1", "a" * 64))
    assert not db.register_exposure(_exp("e1-copy", "a" * 64))
    assert db.exposure_known("a" * 64, "zzz")
    assert db.count("exposures") == 1


def test_namespaces_are_separate_tables(tmp_path):
    url = f"sqlite:///{tmp_path}/a.db"
    live, replay = Database(url), Database(url, "rb2")
    live.register_exposure(_exp("e1", "a" * 64))
    assert replay.count("exposures") == 0
    assert replay.register_exposure(_exp("e1", "a" * 64))


def test_template_claim_is_first_come(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/a.db")
    first = db.claim_template("f1", "dip", "e1", "/p/e1.fits", maglim=19.0)
    second = db.claim_template("f1", "dip", "e2", "/p/e2.fits", maglim=20.0)
    assert first["exposure_id"] == second["exposure_id"] == "e1"


def test_too_fields_and_retraction(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/a.db")
    t = Table({"field_id": ["f1", "f2"], "prob": [0.3, 0.1], "cum_prob": [0.3, 0.4]})
    assert db.store_too_fields("S1", t) == 2
    assert db.too_event_for_field("f1")["event_id"] == "S1"
    db.retract_too("S1")
    assert db.too_event_for_field("f1") is None


def test_alert_records_are_idempotent(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/a.db")
    row = dict(alert_id="a1", candidate_id="c", object_id="o", exposure_id="e", lane="dip", score=0.9,
               digest="d", published_at=1.0, latency_s=2.0)
    db.record_alert(row)
    db.record_alert({**row, "score": 0.1})
    assert db.count("alerts") == 1 and db.rows("alerts")[0]["score"] == 0.9


def test_products_prune_keeps_templates_and_bundles(tmp_path):
    from ast3stream.products import prune

    db = Database(f"sqlite:///{tmp_path}/a.db")
    for eid, status in (("e1", "template"), ("e2", "alerted"), ("e3", "reduced")):
        db.register_exposure(_exp(eid, eid * 32))
        db.update_exposure(eid, status=status)
        lane = tmp_path / "products" / "live" / eid / "dip"
        lane.mkdir(parents=True)
        for name in ("reduced.fits", "calibrated.fits", "difference.fits", f"{eid}_dip.fits"):
            (lane / name).write_bytes(b"x")
    db.set_template("f1", "dip", "e1", str(tmp_path / "products" / "live" / "e1" / "dip" / "calibrated.fits"))
    assert prune(tmp_path / "products", db, retention_days=1, now=1e12) == 4  # e1 and e2: reduced + difference
    left = sorted(p.relative_to(tmp_path / "products" / "live").as_posix()
                  for p in (tmp_path / "products").rglob("*.fits"))
    assert left == ["e1/dip/calibrated.fits", "e1/dip/e1_dip.fits", "e2/dip/calibrated.fits", "e2/dip/e2_dip.fits",
                    "e3/dip/calibrated.fits", "e3/dip/difference.fits", "e3/dip/e3_dip.fits", "e3/dip/reduced.fits"]

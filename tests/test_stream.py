"""End to end through the real embedded broker: files dropped into the folder become alerts.

One simulated night (one field: a template visit, then science visits with transients) is
played into the watched folder of a running stack (broker + faust worker + watcher), with
bad files mixed in. Then the night is replayed into a new namespace. (Faults: test_faults.py.)
"""
from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.table import Table

from agents.demo import alert_view, play, read_topic, summarize
from agents.replay import replay
from agents.runner import Stack, wait_for
from agents.topics import topic
from ast3stream.alerts import decode
from ast3stream.config import Settings
from agents.db import Database
from ast3stream.events import decode as decode_event
from ast3stream.rawfile import detector_from_header
from waiting import until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SCALE = 0.06
TIMEOUT = 900


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    from ast3stream.simulate import simulate_night

    out = tmp_path_factory.mktemp("night")
    return out, simulate_night(out, n_exposures=4, scale=SCALE, seed=11, n_fields=1)


def _settings(root: Path, sim: Path, prefix: str) -> Settings:
    cfg = Settings.load(None, paths={"data_dir": root, "refcat": sim / "refcat.fits", "galaxies": sim / "galaxies.csv",
                                     "mpcorb": sim / "MPCORB.DAT", "fields": sim / "fields.csv",
                                     "calib_dir": sim / "calib"},
                        kafka={"prefix": prefix}, watcher={"stable_s": 0.5, "giveup_s": 3.0})
    cfg.detector = detector_from_header(next((sim / "raw").glob("*.fits")), cfg.detector)
    return cfg


def _changed_fields(a: dict, b: dict | None, path: str = "") -> list[str]:
    """Paths of the fields that differ between two alert packets."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [c for k in sorted(set(a) | set(b))
                for c in _changed_fields(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [path or "<missing>"]


def _alerts(bootstrap: str, prefix: str) -> list[dict]:
    return [decode(m.value) for m in asyncio.run(read_topic(bootstrap, topic(prefix, "alerts"), 3.0))]


@pytest.fixture(scope="module")
def live_run(night, broker, tmp_path_factory):
    sim, nt = night
    root = tmp_path_factory.mktemp("live")
    cfg = _settings(root, sim, "e2e")
    cfg.kafka.bootstrap = broker.bootstrap
    raws = [Path(e.path) for e in nt.exposures]
    with Stack(cfg) as stack:
        db = Database.from_settings(cfg)
        play(raws[:2], cfg.watch_dir)
        # bad input in the middle of the night: half-written, not FITS at all, wrong frame size
        data = raws[2].read_bytes()
        (cfg.watch_dir / "truncated_0001.fits").write_bytes(data[: len(data) // 2])
        (cfg.watch_dir / "notfits_0002.fits").write_bytes(b"SIMPLEX" + bytes(2880 * 3 - 7))
        header = fits.getheader(raws[2])
        del header["EXPID"]
        fits.PrimaryHDU(fits.getdata(raws[2])[:100, :120], header).writeto(cfg.watch_dir / "wrongsize_0003.fits")
        play(raws[2:3], cfg.watch_dir)
        until(lambda: db.count("exposures") == 4, "3 good exposures and the wrong-size one to be registered",
              TIMEOUT, stack.check_workers)
        # a gravitational-wave notice puts the field on the ToO list: the last visit takes the quick lane too
        db.store_too_fields("S250101x", Table({"field_id": [nt.exposures[3].field_id], "prob": [0.4], "cum_prob": [0.4]}))
        play(raws[3:], cfg.watch_dir)
        left = wait_for(db, [e.expid for e in nt.exposures] + ["wrongsize_0003"], TIMEOUT, stack, progress=lambda s: None)
        until(lambda: db.count("dead_letters") >= 3, "the watcher to give up on the bad files (giveup_s)",
              TIMEOUT, stack.check_workers)
        dead = [decode_event(m.value, "deadletter") for m in
                asyncio.run(read_topic(broker.bootstrap, topic("e2e", "deadletter"), 2.0))]
        alerts = _alerts(broker.bootstrap, "e2e")
    return cfg, db, left, dead, alerts


def test_night_becomes_alerts_with_transients_recovered(live_run, night):
    cfg, db, left, dead, alerts = live_run
    assert left == []
    assert alerts, "no alert came out of the pipeline"
    view = [alert_view(a) for a in alerts]
    summary = summarize(cfg, night[0], view, len(dead))
    assert summary["injected_transients"] > 0
    assert summary["recovered_transients"] >= 0.8 * summary["injected_transients"], summary
    statuses = Counter(r["status"] for r in db.rows("exposures"))
    assert statuses["template"] == 1 and statuses["alerted"] == 3, statuses


def test_too_exposure_takes_the_quick_lane_and_the_deep_lane(live_run, night, broker):
    cfg, db, _, _, alerts = live_run
    too_id = night[1].exposures[3].expid
    lanes = {a["candidate"]["lane"] for a in alerts if a["candidate"]["exposure_id"] == too_id}
    assert lanes == {"qip", "dip"}
    qip = [decode(m.value) for m in asyncio.run(read_topic(broker.bootstrap, topic("e2e", "alerts.qip"), 2.0))]
    assert qip and {a["candidate"]["exposure_id"] for a in qip} == {too_id}
    assert {a["crossmatch"]["gw_event"] for a in qip} == {"S250101x"}
    assert all(a["candidate"]["too"] for a in qip)


def test_every_alert_is_published_once_and_recorded(live_run):
    cfg, db, _, _, alerts = live_run
    ids = [str(a["alertId"]) for a in alerts]
    assert len(ids) == len(set(ids))
    assert set(ids) == {r["alert_id"] for r in db.rows("alerts")}


def test_bad_files_go_to_dead_letters_with_a_reason(live_run):
    _, db, _, dead, _ = live_run
    reasons = {d["exposure_id"]: d["reason"] for d in dead}
    assert "truncated" in reasons["truncated_0001.fits"]
    assert "not a FITS file" in reasons["notfits_0002.fits"]
    assert "120x100 frame" in reasons["wrongsize_0003"]
    assert len(dead) == 3, reasons
    assert db.count("dead_letters") == 3


def test_replay_reproduces_the_same_alerts_and_a_new_version_stays_in_its_namespace(live_run, broker):
    cfg, db, _, _, alerts = live_run
    live_digests = {r["alert_id"]: r["digest"] for r in db.rows("alerts")}
    same = replay(cfg, "same", timeout=TIMEOUT)
    assert same["unfinished"] == []
    replayed = Database(cfg.database_url, "same")
    again = {str(a["alertId"]): a for a in _alerts(broker.bootstrap, same["prefix"])}
    changed = {aid: _changed_fields(a, again.get(aid)) for aid, a in ((str(a["alertId"]), a) for a in alerts)}
    assert {aid: c for aid, c in changed.items() if c} == {}
    assert {r["alert_id"]: r["digest"] for r in replayed.rows("alerts")} == live_digests
    assert len(again) == len(alerts)

    # a new version: the template visit (offset 0 of the exposures) and the ToO visit (offset 0 of
    # the priority topic), both lanes
    newer = replay(cfg, "rb2", to_offset=0, overrides=["classify.version=2"], timeout=TIMEOUT)
    assert newer["unfinished"] == [] and newer["exposures"] == 2
    rb2 = Database(cfg.database_url, "rb2")
    new_ids = {r["alert_id"] for r in rb2.rows("alerts")}
    assert new_ids and not (new_ids & set(live_digests))
    assert {r["alert_id"]: r["digest"] for r in db.rows("alerts")} == live_digests  # live untouched
    assert len(_alerts(broker.bootstrap, "e2e")) == len(alerts)

    # the namespace holds a replay: refused, unless --force, which deletes it first
    with pytest.raises(SystemExit, match="'rb2' holds a replay already .* --force"):
        replay(cfg, "rb2", overrides=["classify.version=2"], timeout=TIMEOUT)
    assert {r["alert_id"] for r in rb2.rows("alerts")} == new_ids
    products = cfg.products_dir / "rb2"
    assert products.is_dir()
    cleared = replay(cfg, "rb2", night="19000101", overrides=["classify.version=2"], timeout=TIMEOUT, force=True)
    assert cleared["exposures"] == 0
    assert rb2.count("exposures") == rb2.count("alerts") == rb2.count("stage_runs") == 0
    assert not products.exists()
    assert db.count("alerts") == replayed.count("alerts") == len(live_digests)  # the others untouched

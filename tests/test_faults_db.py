"""Faults on the database: dropped connections and a PostgreSQL restart lose and duplicate nothing.

Each test runs its own throwaway PostgreSQL server (``pg_server``), so it can cut every
connection (``pg_terminate_backend``) and stop and start the server under a running stack.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from pg_server import create_database
from waiting import until

from agents.broker import free_port
from agents.demo import play, read_topic
from agents.runner import Stack, wait_for
from agents.topics import topic
from ast3stream.alerts import decode
from agents.db import Database, DatabaseUnavailable
from ast3stream.events import ExposureEvent

TIMEOUT = 900


def _terminate_connections(admin_url: str, url: str) -> int:
    """Cut every connection to the database of ``url`` (waiting until they are gone); returns how many."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
                                        "WHERE datname = :db AND pid <> pg_backend_pid()"),
                                {"db": sa.make_url(url).database}).scalar_one()
    finally:
        engine.dispose()


def test_an_unreachable_server_raises_database_unavailable():
    with pytest.raises(DatabaseUnavailable, match="unreachable for 1 s"):
        Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing", retry_s=1.0)


def test_errors_that_are_not_transient_are_not_retried(tmp_path):
    with pytest.raises(sa.exc.OperationalError, match="unable to open database file"):
        Database(f"sqlite:///{tmp_path}/missing/folder/a.db", retry_s=600.0)


def test_calls_ride_out_dropped_connections_and_a_server_restart(pg_server):
    url = create_database(pg_server.url)
    db = Database(url, retry_s=300.0)  # a bound for a loaded machine: the calls return once the server is back
    db.register_exposure(ExposureEvent(exposure_id="e1", path="/r/e1.fits", sha256="a" * 64, size=1,
                                       file_closed_at=0.0, detected_at=0.0, field_id="f1"))
    assert _terminate_connections(pg_server.url, url) == 1  # the pooled connection: the next call reconnects
    assert db.count("exposures") == 1

    cut = []

    @sa.event.listens_for(db.engine, "before_cursor_execute")
    def drop_the_connection_once(conn, cursor, statement, *args):  # inside the transaction, before the update
        if statement.startswith("UPDATE") and not cut:
            cut.append(_terminate_connections(pg_server.url, url))

    db.update_exposure("e1", status="reduced")
    assert cut == [1] and db.rows("exposures")[0]["status"] == "reduced"

    pg_server.stop()
    done = []
    call = threading.Thread(target=lambda: done.append(db.update_exposure("e1", status="calibrated")))
    call.start()  # retried while the server is down
    time.sleep(3.0)  # the outage
    # started from this thread: the server's parent-death signal follows the thread that started it
    pg_server.start(timeout=600.0)
    call.join(600.0)
    assert done == [None] and db.rows("exposures")[0]["status"] == "calibrated"


@pytest.mark.slow
@pytest.mark.broker
def test_dropped_connections_and_a_server_restart_mid_night_lose_and_duplicate_nothing(
        small_night, small_night_alerts, night_settings, broker, pg_server):
    nt = small_night[1]
    url = create_database(pg_server.url)
    cfg = night_settings(database={"url": url}, kafka={"prefix": "dbfault", "bootstrap": broker.bootstrap},
                         watcher={"stable_s": 0.5, "giveup_s": 3.0})
    ids = [e.expid for e in nt.exposures]
    science = ids[1]
    with Stack(cfg) as stack:
        db = Database.from_settings(cfg)
        play([Path(e.path) for e in nt.exposures], cfg.watch_dir)

        def reached(stage: str) -> bool:
            return stage in {r["stage"] for r in db.rows("stage_runs", exposure_id=science)}

        until(lambda: reached("reduction"), f"reduction of {science}", TIMEOUT, stack.check_workers)
        cuts = []  # from reduction to photometry, cut every connection five times a second

        def cut_until_photometry() -> bool:
            cuts.append(_terminate_connections(pg_server.url, url))
            return reached("photometry")

        until(cut_until_photometry, f"photometry of {science}", TIMEOUT, stack.check_workers)
        assert not reached("alert")
        pg_server.stop()
        time.sleep(3)
        pg_server.start(timeout=600.0)  # a loaded machine restarts it slowly
        left = wait_for(db, ids, TIMEOUT, stack, progress=lambda s: None)
        alerts = [decode(m.value) for m in asyncio.run(read_topic(broker.bootstrap, topic("dbfault", "alerts"), 3.0))]
        dead = asyncio.run(read_topic(broker.bootstrap, topic("dbfault", "deadletter"), 1.0))
        rows = db.rows("alerts")
        statuses = Counter(r["status"] for r in db.rows("exposures"))
    assert sum(cuts) > len(cuts)  # the worker's connections were cut, not only this test's
    assert left == [] and not dead and db.count("dead_letters") == 0
    assert statuses == {"template": 1, "alerted": 2}
    topic_ids = [str(a["alertId"]) for a in alerts]
    assert len(topic_ids) == len(set(topic_ids)), Counter(topic_ids).most_common(3)
    assert set(topic_ids) == {r["alert_id"] for r in rows} == set(small_night_alerts)
    assert {(r["exposure_id"], r["lane"]) for r in rows} == {(eid, "dip") for eid in ids[1:]}

"""Fault injection: after each fault every exposure has alerted exactly once.

One small simulated night (one field: a template visit, a science visit, and a visit of a
field put on the ToO list, so both lanes run) is dropped into the watched folder of a
running stack on the real embedded broker while a fault hits it:

* every broker client is restarted: the worker (with the watcher) is stopped (SIGTERM)
  mid-night and started again beside a second worker, so the consumer group rebalances
  (two partitions per topic) with the night half done;
* the broker itself is restarted mid-night (Tansu on S3 storage, a local moto server).

After recovery the pipeline's consumer group has consumed everything, and: every exposure
finished, the files dropped are the exposures known, each (exposure, lane) that should
alert did, the alert ids on the topic are unique and are those of the ``alerts`` table,
which are those of the candidates above the score threshold, and nothing was dead-lettered.
Errors of infrastructure that comes back (database or broker away) hold a message: the
step is tried again, never dead-lettered. A worker that dies between the broker taking an
alert and the database recording it does not send it twice (:mod:`agents.outbox`).
(``kill -9`` of the worker or of ``run`` itself, eight exposures in flight: test_faults_run.py.)
"""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError
from astropy.table import Table

from agents.status import consumed_topics
from agents.retry import retrying, transient
from agents.broker import EmbeddedBroker, die_with_parent, free_port
from agents.chain import Resources
from agents.demo import play, read_topic
from agents.runner import Stack, wait_for
from agents.topics import topic
from ast3stream.alerts import decode
from ast3stream.config import Settings
from agents.db import Database, DatabaseUnavailable
from ast3stream.pipeline import StageError
from ast3stream.rawfile import detector_from_header
from waiting import until


TIMEOUT = 600


def test_infrastructure_errors_hold_the_message_and_other_errors_do_not(monkeypatch):
    monkeypatch.setattr("agents.retry.RETRY_FIRST_S", 0.01)
    outages = [DatabaseUnavailable("database away"), KafkaConnectionError("broker away"), KafkaTimeoutError()]
    calls = []

    async def step(topic, *, key):
        calls.append(len(calls))
        if outages:
            raise outages.pop(0)
        return f"published to {topic} with key {key}"

    assert asyncio.run(retrying("test", step, "alerts", key="o1")) == "published to alerts with key o1"
    assert len(calls) == 4

    async def bad_frame():
        calls.append(len(calls))
        raise StageError("no WCS solution")

    with pytest.raises(StageError):
        asyncio.run(retrying("test", bad_frame))
    assert len(calls) == 5  # tried once
    assert not transient(MessageSizeTooLargeError())
    try:
        raise RuntimeError("stage failed") from DatabaseUnavailable("away")
    except RuntimeError as exc:
        assert transient(exc)


def _settings(root: Path, sim: Path, prefix: str, bootstrap: str, **kafka) -> Settings:
    cfg = Settings.load(None, paths={"data_dir": root, "refcat": sim / "refcat.fits", "galaxies": sim / "galaxies.csv",
                                     "mpcorb": sim / "MPCORB.DAT", "fields": sim / "fields.csv",
                                     "calib_dir": sim / "calib"},
                        kafka={"prefix": prefix, "bootstrap": bootstrap, **kafka},
                        watcher={"stable_s": 0.5, "giveup_s": 3.0})
    cfg.detector = detector_from_header(next((sim / "raw").glob("*.fits")), cfg.detector)
    return cfg


def _stages_done(db: Database, exposure_id: str) -> set[str]:
    return {r["stage"] for r in db.rows("stage_runs", exposure_id=exposure_id) if r["end"] is not None}


async def _unconsumed(cfg: Settings) -> int:
    """Messages past the pipeline's committed offsets on the topics it reads (fetched: on S3
    storage Tansu's end offsets are wrong)."""
    names = set(consumed_topics(cfg.kafka.prefix))
    tps = [TopicPartition(t, p) for t in sorted(names) for p in range(cfg.kafka.partitions)]
    # assigned, never joined: reads the group's committed offsets and nothing else
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, group_id=f"{cfg.kafka.prefix}-pipeline",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, await consumer.committed(tp) or 0)
        return sum(len(m) for m in (await consumer.getmany(timeout_ms=1000)).values())
    finally:
        await consumer.stop()


async def _members(cfg: Settings) -> int:
    """Members of the pipeline's consumer group once it is stable (0 while it rebalances)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap)
    await admin.start()
    try:
        [group] = (await admin.describe_consumer_groups([f"{cfg.kafka.prefix}-pipeline"]))[0].groups
        _, _, state, _, _, members, *_ = group
        return len(members) if state == "Stable" else 0
    finally:
        await admin.close()


def play_night(stack: Stack, db: Database, nt) -> list[str]:
    """Drop the night's files; the last visit's field goes on the ToO list first (quick lane too)."""
    raws = [Path(e.path) for e in nt.exposures]
    play(raws[:-1], stack.cfg.watch_dir)
    until(lambda: db.count("exposures") == len(raws) - 1, "the first exposures to be registered",
          check=stack.check_workers)
    db.store_too_fields("S250101x", Table({"field_id": [nt.exposures[-1].field_id], "prob": [0.4],
                                           "cum_prob": [0.4]}))
    play(raws[-1:], stack.cfg.watch_dir)
    return [e.expid for e in nt.exposures]


def recover(stack: Stack, db: Database, ids: list[str]) -> tuple[list[dict], list]:
    """Wait until every exposure finished and every message was consumed; the alerts and dead letters."""
    assert wait_for(db, ids, TIMEOUT, stack, progress=lambda s: None) == []
    until(lambda: asyncio.run(_unconsumed(stack.cfg)) == 0, "the consumer group to catch up", check=stack.check_workers)
    prefix, bootstrap = stack.cfg.kafka.prefix, stack.cfg.kafka.bootstrap
    alerts = [decode(m.value) for m in asyncio.run(read_topic(bootstrap, topic(prefix, "alerts"), 3.0))]
    dead = asyncio.run(read_topic(bootstrap, topic(prefix, "deadletter"), 1.0))
    return alerts, dead


def assert_exactly_once(cfg: Settings, db: Database, nt, alerts: list[dict], dead: list) -> None:
    assert not dead and db.count("dead_letters") == 0, [m.value[:300] for m in dead]
    assert db.count("exposures") == len(nt.exposures)
    statuses = Counter(r["status"] for r in db.rows("exposures"))
    assert statuses == {"template": 1, "alerted": len(nt.exposures) - 1}, statuses
    template, science, too = (e.expid for e in nt.exposures)
    alerted = Counter((a["candidate"]["exposure_id"], a["candidate"]["lane"]) for a in alerts)
    assert set(alerted) == {(science, "dip"), (too, "qip"), (too, "dip")}, alerted
    ids = [str(a["alertId"]) for a in alerts]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    recorded = db.rows("alerts")
    assert set(ids) == {r["alert_id"] for r in recorded}
    res = Resources(cfg, db=db)
    expected = {c["candidate_id"] for c in db.rows("candidates") if c["score"] >= res.threshold(c["lane"])}
    assert {r["candidate_id"] for r in recorded} == expected


@pytest.mark.broker
@pytest.mark.slow
def test_restarted_clients_and_a_rebalance_lose_nothing_and_duplicate_nothing(small_night, broker, tmp_path):
    sim, nt = small_night
    cfg = _settings(tmp_path, sim, "fclients", broker.bootstrap, partitions=2)
    with Stack(cfg) as stack:
        db = Database.from_settings(cfg)
        ids = play_night(stack, db, nt)
        until(lambda: "sources" in _stages_done(db, ids[1]), "sources of the science visit", check=stack.check_workers)
        stack.kill_worker(0, signal.SIGTERM)  # the worker and its watcher stop cleanly
        assert stack.procs[0].returncode == 0
        stack.start_worker(0)
        assert stack.add_worker() == 1  # a second worker joins: the group rebalances mid-night
        until(lambda: asyncio.run(_members(cfg)) == 2, "both workers in the consumer group", check=stack.check_workers)
        assert "alert" not in _stages_done(db, ids[2])
        alerts, dead = recover(stack, db, ids)
        joined = (stack.log_dir / "worker1.log").read_text(errors="replace")
    assert_exactly_once(cfg, db, nt, alerts, dead)
    assert "Traceback" not in joined


@pytest.fixture
def s3_env(tmp_path):
    """A local S3 server (moto) with a bucket ``tansu``: the environment Tansu needs to use it."""
    pytest.importorskip("moto.server", reason="moto[server] gives the local S3 server")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                            stdout=open(tmp_path / "moto.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=die_with_parent)
    try:
        until(lambda: _listening(port), "the S3 server", timeout=60)
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/tansu", method="PUT"))
        yield {"AWS_ENDPOINT": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.mark.broker
@pytest.mark.slow
def test_restarted_broker_loses_nothing_and_duplicates_nothing(small_night, s3_env, tmp_path):
    sim, nt = small_night
    with EmbeddedBroker(log_path=tmp_path / "broker.log", storage="s3://tansu/", env=s3_env) as broker:
        cfg = _settings(tmp_path, sim, "frestart", broker.bootstrap)
        with Stack(cfg) as stack:
            db = Database.from_settings(cfg)
            ids = play_night(stack, db, nt)
            until(lambda: "sources" in _stages_done(db, ids[1]), "sources of the science visit",
                  check=stack.check_workers)
            broker.stop()  # every client loses its connections mid-night
            time.sleep(2)
            broker.start()
            alerts, dead = recover(stack, db, ids)
    assert_exactly_once(cfg, db, nt, alerts, dead)


class _Crash(BaseException):
    """The worker dies here (not an Exception: nothing in the chain catches it)."""


@pytest.mark.broker
def test_a_crash_between_sending_an_alert_and_recording_it_sends_it_once(small_night, night_settings,
                                                                         small_night_alerts, broker):
    """The window no producer closes: the broker has the lane's first candidates on ``candidates``
    and the first alert on ``alerts`` (not yet on ``alerts.dip``), and the database has not
    recorded them. Run again (by another worker, once the dead one's claim has run out), the
    chain finds them on their topics and sends only the rest: the night's alerts are those of a
    run without faults, each once on each topic, and every candidate is once on ``candidates``.
    The last exposure is run by two workers at once (a rebalance handed it on mid-chain): one of
    them sends, the other waits for it and sends nothing, even while the sender's first message
    waits for the broker longer than the claim's lease (the claim is renewed while it waits)."""
    from functools import partial

    from aiokafka import AIOKafkaProducer

    from agents.broker import ensure_topics_sync
    from agents.chain import Chain
    from agents.outbox import topics_holding
    from agents.topics import topic_configs
    from ast3stream.rawfile import describe

    cfg = night_settings("window", kafka={"prefix": "fwindow", "bootstrap": broker.bootstrap})
    ensure_topics_sync(broker.bootstrap, topic_configs(cfg.kafka), cfg.kafka.partitions, cfg.kafka.replication)
    cut = []

    async def run(path, crash: bool) -> None:
        res = Resources(cfg)  # a fresh worker: nothing in memory from the one that died
        await worker(res, path, crash, lease_s=1.0)   # the dead worker's claim runs out at once

    async def worker(res, path, crash: bool, lease_s: float = 10.0, stall_s: float = 0.0) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()

        async def publish(name: str, key: bytes, value: bytes) -> None:
            if stall_s and name == "candidates" and not stalled:   # the lane's first message: in flight for 8 leases
                stalled.append(name)
                await asyncio.sleep(stall_s)
            await producer.send_and_wait(topic(cfg.kafka.prefix, name), value, key=key)
            if crash and name == "alerts" and not cut:
                cut.append(decode(value)["alertId"])
                raise _Crash  # acknowledged by the broker, not recorded in the database

        try:
            ev = describe(path, res)
            res.db.register_exposure(ev)
            res.db.mark_published(ev.exposure_id)
            await Chain(res, publish, sent=partial(topics_holding, cfg.kafka, cfg.security),
                        lease_s=lease_s).run(ev)
        finally:
            await producer.stop()
            res.store.flush()

    template, science, last = (e.path for e in small_night[1].exposures)
    asyncio.run(run(template, crash=False))
    with pytest.raises(_Crash):
        asyncio.run(run(science, crash=True))
    db = Database.from_settings(cfg)
    assert cut and not db.alert_published(str(cut[0]))
    asyncio.run(run(science, crash=False))  # redelivered

    stalled: list = []

    async def two_workers():   # the sender's first message waits 8 s for the broker (past a 1 s lease and the read-back)
        await asyncio.gather(*(worker(Resources(cfg), last, False, lease_s=1.0, stall_s=8.0) for _ in range(2)))

    asyncio.run(two_workers())

    assert {r["alert_id"]: r["digest"] for r in db.rows("alerts")} == small_night_alerts
    on = {name: [str(decode(m.value)["alertId"])
                 for m in asyncio.run(read_topic(broker.bootstrap, topic(cfg.kafka.prefix, name), 2.0))]
          for name in ("alerts", "alerts.dip", "candidates")}
    for name in ("alerts", "alerts.dip"):
        assert sorted(on[name]) == sorted(small_night_alerts), (name, Counter(on[name]).most_common(2))
    assert len(set(on["candidates"])) == len(on["candidates"]) == db.count("candidates"), \
        Counter(on["candidates"]).most_common(2)
    assert set(small_night_alerts) < set(on["candidates"])



def test_a_lanes_send_claim_fences_a_second_worker_and_passes_on_when_its_lease_runs_out(db_url, monkeypatch):
    """:meth:`Database.claim_sends` on SQLite and PostgreSQL: the first worker's claim is fresh, a
    second one waits while it is live, takes it over (resumed: read the topics back) once its
    lease ran out, and the first one then cannot renew it; a finished lane is done for both."""
    db = Database(db_url)
    clock = [1000.0]
    monkeypatch.setattr("agents.db.time.time", lambda: clock[0])
    assert db.claim_sends("e1", "dip", "a", lease_s=10) == "fresh"
    assert db.claim_sends("e1", "dip", "b", lease_s=10) == "busy"
    clock[0] += 6
    assert db.renew_sends("e1", "dip", "a")                            # a is still sending
    clock[0] += 6
    assert db.claim_sends("e1", "dip", "b", lease_s=10) == "busy"       # renewed 6 s ago
    clock[0] += 5
    assert db.claim_sends("e1", "dip", "b", lease_s=10) == "resumed"    # a stalled past its lease
    assert not db.renew_sends("e1", "dip", "a") and not db.renew_sends("e1", "dip", "a", done=True)
    assert db.claim_sends("e1", "qip", "a", lease_s=10) == "fresh"      # one claim per lane
    assert db.renew_sends("e1", "dip", "b", done=True)
    assert {db.claim_sends("e1", "dip", w, lease_s=10) for w in "abc"} == {"done"}

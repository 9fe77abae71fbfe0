"""``ast3stream run`` as a site operator runs it, on the embedded default broker (in memory).

``kill -9`` of the worker with eight exposures in flight: ``run`` starts it again and each
exposure alerts once; after the rest of that 24-exposure night, with retention at 0 days, only
templates, bundles and alerts stay. ``kill -9`` of ``run`` itself takes the broker and its messages with
it; a fresh ``run`` resumes every exposure the database shows unfinished, and the alerts are
those of a run without faults, each published once. SIGTERM to ``run`` leaves no child behind.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.chain import Resources
from agents.db import Database
from agents.demo import play, read_topic
from agents.runner import lanes_done
from agents.topics import topic
from ast3stream.alerts import decode
from waiting import running, until

ROOT = Path(__file__).resolve().parents[1]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _workers(pid: int) -> set[int]:
    """The live workers (``python -m agents.app``) among the descendants of ``pid``."""
    out = set()
    for child in _alive(_descendants(pid)):
        try:
            if b"agents.app" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.add(child)
        except OSError:
            continue
    return out


def _stages_done(db: Database, exposure_id: str) -> set[str]:
    return {r["stage"] for r in db.rows("stage_runs", exposure_id=exposure_id) if r["end"] is not None}


def _alert_ids(cfg) -> list[str]:
    """The alert ids on the ``alerts`` topic of the embedded broker ``run`` started."""
    bootstrap = json.loads((cfg.paths.data_dir / "settings.json").read_text())["kafka"]["bootstrap"]
    return [str(decode(m.value)["alertId"])
            for m in asyncio.run(read_topic(bootstrap, topic(cfg.kafka.prefix, "alerts"), 2.0))]


def _products(cfg) -> list[str]:
    """The files of the live namespace in the product store, relative to it."""
    root = cfg.products_dir / "live"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _on_disk(cfg) -> dict[str, set[str]]:
    """Every file in the data folder by kind: the pipeline's ``products`` (relative to the live
    namespace), the operator's raw ``inputs``, the running ``state`` (SQLite and its journal, settings, lock,
    logs, the galaxy catalogue's index) and ``other``, which should stay empty."""
    data, products, inputs = cfg.paths.data_dir, cfg.products_dir / "live", cfg.watch_dir
    state = {data / "settings.json", data / "run.lock"}
    kinds: dict[str, set[str]] = {"products": set(), "inputs": set(), "state": set(), "other": set()}
    for path in (p for p in data.rglob("*") if p.is_file()):
        if path.is_relative_to(products):
            kinds["products"].add(path.relative_to(products).as_posix())
        elif path.parent == inputs:
            kinds["inputs"].add(path.name)
        elif path in state or path.parent == data and path.name.startswith("ast3stream.db") \
                or path.parent == data / "logs" or path.parent.parent == data / "catalogs":
            kinds["state"].add(path.relative_to(data).as_posix())
        else:
            kinds["other"].add(path.relative_to(data).as_posix())
    return kinds


def _sigterm_leaves_no_child(proc: subprocess.Popen) -> None:
    children = _descendants(proc.pid)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    until(lambda: not _alive(children), "every child of `run` to stop after SIGTERM", timeout=30)
    assert time.monotonic() - start < 30


def _run(settings: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "ast3stream.cli", "--config", str(settings), "run"],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.mark.slow
@pytest.mark.broker
def test_a_killed_run_resumes_in_flight_exposures_and_sigterm_leaves_no_child(small_night, night_settings,
                                                                               small_night_alerts, tmp_path):
    cfg = night_settings("site", watcher={"stable_s": 0.5, "giveup_s": 3.0})
    settings = cfg.save(tmp_path / "site.json")
    db = Database.from_settings(cfg)
    ids = [e.expid for e in small_night[1].exposures]

    first = _run(settings, tmp_path / "run1.log")
    try:
        play([Path(e.path) for e in small_night[1].exposures], cfg.watch_dir)
        until(lambda: any(r["stage"] == "astrometry" and r["end"] for r in db.rows("stage_runs", exposure_id=ids[1])),
              "astrometry of the first science visit", check=running(first))
        assert not lanes_done(db, ids[2])
        children = _descendants(first.pid)
        assert len(children) >= 2  # the broker and the worker
        first.kill()  # kill -9: the broker and its messages go too
        first.wait(10)
        until(lambda: not _alive(children), "the first run's children to go", timeout=60)
    finally:
        first.kill()
    published_before = {r["alert_id"] for r in db.rows("alerts")}

    second = _run(settings, tmp_path / "run2.log")
    try:
        until(lambda: all(lanes_done(db, e) for e in ids), "every exposure to finish after the restart",
              timeout=600, check=running(second))
        assert "resumed" in (tmp_path / "run2.log").read_text()
        again = _alert_ids(cfg)
        _sigterm_leaves_no_child(second)
    finally:
        second.kill()
    assert {r["alert_id"]: r["digest"] for r in db.rows("alerts")} == small_night_alerts  # a run without faults
    assert len(again) == len(set(again)) and not set(again) & published_before  # each alert sent once
    assert set(again) | published_before == set(small_night_alerts)
    assert db.count("dead_letters") == 0


@pytest.fixture(scope="module")
def busy_night(tmp_path_factory):
    """A night of one field: a template visit, then 23 science visits (scale 0.06: each one solves)."""
    from ast3stream.simulate import simulate_night

    out = tmp_path_factory.mktemp("busy_night")
    return out, simulate_night(out, n_exposures=24, scale=0.06, seed=11, n_fields=1)


@pytest.mark.slow
@pytest.mark.broker
def test_a_worker_killed_with_eight_exposures_in_flight_is_restarted_and_a_24_exposure_night_leaves_only_what_retention_keeps(
        busy_night, settings_for, tmp_path):
    # a smaller SFFT kernel (half-width 6 px, linear variation) than a site's: ~2 s a subtraction here, not ~12
    cfg = settings_for(busy_night, "busy", watcher={"stable_s": 0.5, "giveup_s": 3.0},
                       products={"retention_days": 0.0, "prune_every_s": 2.0},
                       subtraction={"kernel_half_width": 6, "kernel_poly_order": 1, "background_poly_order": 1})
    settings = cfg.save(tmp_path / "busy.json")
    db = Database.from_settings(cfg)
    exposures = busy_night[1].exposures
    ids = [e.expid for e in exposures]
    assert len(ids) == 24
    template, science = ids[0], ids[1:]
    run = _run(settings, tmp_path / "run.log")
    try:
        until(lambda: len(_workers(run.pid)) == 1, "the worker to start", check=running(run))
        [worker] = _workers(run.pid)
        play([Path(e.path) for e in exposures[:9]], cfg.watch_dir)   # the template and eight visits at once
        until(lambda: db.count("exposures") == 9 and not db.count("exposures", status="registered")
              and any("astrometry" in _stages_done(db, e) for e in science[:8]), "a science visit past "
              "astrometry with the first nine exposures published", check=running(run))
        os.killpg(worker, signal.SIGKILL)  # kill -9 of the worker and its process group
        in_flight = [e for e in science[:8] if not lanes_done(db, e)]
        assert len(in_flight) == 8
        until(lambda: _workers(run.pid) - {worker}, "`run` to start the worker again", timeout=60, check=running(run))
        until(lambda: all(lanes_done(db, e) for e in ids[:9]), "the eight to finish", timeout=600, check=running(run))
        assert "restarting it" in (tmp_path / "run.log").read_text()
        play([Path(e.path) for e in exposures[9:]], cfg.watch_dir)   # the rest of the night
        until(lambda: all(lanes_done(db, e) for e in ids), "every exposure to finish", timeout=900, check=running(run))
        # retention at 0 days: once the slow lane (PSF) is done too, only templates, bundles and alerts stay
        until(lambda: all("psf" in _stages_done(db, e) for e in science) and not _not_kept(cfg, db),
              "retention (0 days) to prune every other product", check=running(run))
        published = _alert_ids(cfg)
        _sigterm_leaves_no_child(run)
    finally:
        run.kill()
    logs = "".join(p.read_text(errors="replace") for p in (cfg.paths.data_dir / "logs").glob("worker*.log"))
    assert "pruned" in logs   # intermediates were written, then pruned
    disk = _on_disk(cfg)   # every file left, by kind: no calibrated copy, stamp, PSF table or stray file
    assert not _not_kept(cfg, db) and not disk["other"], (_not_kept(cfg, db), disk["other"])
    alerted_lanes = {(r["exposure_id"], r["lane"]) for r in db.rows("alerts")}
    assert disk["products"] == {r["path"].split("/", 1)[1] for r in db.rows("templates")} | {
        f"{e}/dip/bundle.fits" for e in science} | {f"{e}/{lane}/alerts.avro" for e, lane in alerted_lanes}
    assert disk["inputs"] == {Path(e.path).name for e in exposures}
    statuses = {r["exposure_id"]: r["status"] for r in db.rows("exposures")}
    assert statuses == {template: "template", **{e: "alerted" for e in science}}
    assert db.count("dead_letters") == 0
    recorded = db.rows("alerts")
    assert {r["exposure_id"] for r in recorded} >= set(in_flight)  # the eight killed mid-chain alerted
    assert len(published) == len(set(published)) == len(recorded)  # each once
    assert set(published) == {r["alert_id"] for r in recorded}
    res = Resources(cfg, db=db)
    assert {r["candidate_id"] for r in recorded} == {
        c["candidate_id"] for c in db.rows("candidates") if c["score"] >= res.threshold(c["lane"])}


def _not_kept(cfg, db: Database) -> list[str]:
    """Product files that are neither a template in force nor an exposure lane's bundle or alert packets."""
    templates = {r["path"].split("/", 1)[1] for r in db.rows("templates")}
    return [f for f in _products(cfg) if f not in templates and not (
        len(parts := f.split("/")) == 3 and parts[1] in ("qip", "dip") and parts[2] in ("bundle.fits", "alerts.avro"))]


async def _members(bootstrap: str, group: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [found] = (await admin.describe_consumer_groups([group]))[0].groups
        return len(found[5])
    finally:
        await admin.close()


@pytest.mark.broker
def test_the_supervisor_restarts_a_dead_embedded_broker_and_the_workers(night_settings):
    import threading

    from agents.runner import Stack

    settings = night_settings("supervised")   # the small night's frame size: the workers' warm-ups take seconds

    group = f"{settings.kafka.prefix}-pipeline"
    with Stack(settings) as stack:
        until(lambda: asyncio.run(_members(settings.kafka.bootstrap, group)) == 1, "the worker to join")
        old = stack.procs[0].pid
        stack.broker.proc.kill()
        stop = threading.Event()

        def watch():
            try:
                until(lambda: stack.broker.proc.poll() is None and stack.procs[0].pid != old
                      and asyncio.run(_members(settings.kafka.bootstrap, group)) == 1, "the stack to come back")
            finally:
                stop.set()  # back, or given up on: the assertion below tells

        checker = threading.Thread(target=watch, daemon=True)
        checker.start()
        stack.supervise(stop, progress=lambda line: None, poll=0.5)  # what `run` does
        checker.join(1)
        assert stack.broker.proc.poll() is None and stack.procs[0].poll() is None and stack.procs[0].pid != old

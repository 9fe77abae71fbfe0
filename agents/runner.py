"""Start, supervise and stop the whole stack: broker (embedded unless configured), topics, workers.

Used by ``ast3stream run`` / ``demo`` and by the tests. Workers are separate processes
(``python -m agents.app``, each in its own process group), as they are on a real site, so
one can be killed and restarted without touching the others; :meth:`Stack.supervise`
(what ``run`` does) restarts a dead worker with backoff, and a dead embedded broker with
its workers (:meth:`Stack.restart_broker`). :meth:`Stack.stop` ends every
child within a bounded time (SIGTERM, then SIGKILL). A lock file makes a second stack on
the same data folder and namespace refuse to start.

Progress lives in the database, the broker is transport: the embedded broker keeps its
messages in memory, so when a stack starts one, every exposure whose chain the database
shows unfinished is published again (:func:`resume_unfinished`) and runs again from its
raw file with the same deterministic ids (the database writes are idempotent upserts, an
alert recorded as published is not sent again, and one cut off between the broker and the
database is first looked for on its topics: :mod:`agents.outbox`). With a configured broker
(or the embedded one on S3 storage) the uncommitted messages are still there and are redelivered.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer

from ast3stream.config import Settings
from ast3stream.events import ExposureEvent
from agents.db import Database, lanes_done

from .broker import EmbeddedBroker, InTurn, die_with_parent, ensure_topics_sync, free_port
from .topics import topic_configs

log = logging.getLogger("ast3stream.runner")

@dataclass
class Stack:
    cfg: Settings
    workers: int = 1
    watch: bool = True
    threads: int | None = None
    stages: list[str] | None = None
    broker: EmbeddedBroker | None = None
    procs: list[subprocess.Popen | None] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)  #: exposures published again at the last (re)start
    _lock: object = None
    _started: list[float] = field(default_factory=list)
    _restarts: list[int] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        ns = self.cfg.database.namespace
        d = self.cfg.paths.data_dir / ("logs" + (f"-{ns}" if ns else ""))
        d.mkdir(parents=True, exist_ok=True)
        return d

    def start(self) -> "Stack":
        self.cfg.paths.data_dir.mkdir(parents=True, exist_ok=True)
        ns = self.cfg.database.namespace
        self._lock = lock_data_dir(self.cfg.paths.data_dir / f"run{'-' + ns if ns else ''}.lock")
        try:
            db = Database.from_settings(self.cfg, retry_s=5.0)  # unreachable: a clear error in seconds
            if not self.cfg.kafka.bootstrap:
                self.broker = EmbeddedBroker(self.cfg.kafka.embedded_port, self.log_dir / "broker.log").start()
                self.cfg.kafka.bootstrap = self.broker.bootstrap
            if self.workers > self.cfg.kafka.partitions:  # a partition per worker, or the extra ones sit idle
                log.warning("kafka.partitions %d -> %d: one per worker", self.cfg.kafka.partitions, self.workers)
                self.cfg.kafka.partitions = self.workers
            ensure_topics_sync(self.cfg.kafka.bootstrap, topic_configs(self.cfg.kafka),
                               self.cfg.kafka.partitions, self.cfg.kafka.replication)
            if self.broker is not None and self.broker.storage.startswith("memory"):
                self.resumed = resume_unfinished(self.cfg, db)
            self.settings_path = self.cfg.save(self.cfg.paths.data_dir / f"settings{'-' + ns if ns else ''}.json")
            self.procs = [None] * self.workers
            self._started = [0.0] * self.workers
            self._restarts = [0] * self.workers
            for i in range(self.workers):
                self.start_worker(i)
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self, i: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "agents.app", "--config", str(self.settings_path),
               "--web-port", str(free_port())]
        if self.watch and i == 0:
            cmd.append("--watch")
        if self.threads:
            cmd += ["--workers", str(self.threads)]
        if self.stages:
            cmd += ["--stages", ",".join(self.stages)]
        out = open(self.log_dir / f"worker{i}.log", "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        root = Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        self.procs[i] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, preexec_fn=die_with_parent)
        out.close()
        while len(self._started) <= i:
            self._started.append(0.0)
            self._restarts.append(0)
        self._started[i] = time.monotonic()
        return self.procs[i]

    def add_worker(self) -> int:
        """Start one more worker; it joins the consumer group (a rebalance). Returns its index."""
        self.procs.append(None)
        self.start_worker(len(self.procs) - 1)
        return len(self.procs) - 1

    def restart_dead(self) -> list[int]:
        """Start again every worker that exited, once its backoff has passed (1 s, doubling up to
        60 s; back to 1 s after a worker ran 5 minutes). Returns the indices restarted."""
        restarted = []
        now = time.monotonic()
        for i, proc in enumerate(self.procs):
            if proc is None or proc.poll() is None:
                continue
            if now - self._started[i] > 300:
                self._restarts[i] = 0
            if now - self._started[i] < min(60.0, 2.0 ** self._restarts[i]):
                continue
            log.warning("worker %d exited with %s; restarting it (restart %d, log %s)", i, proc.returncode,
                        self._restarts[i] + 1, self.log_dir / f"worker{i}.log")
            self._restarts[i] += 1
            self.start_worker(i)
            restarted.append(i)
        return restarted

    def restart_broker(self) -> bool:
        """When the embedded broker has died: stop the workers, start it again (same port), publish
        the unfinished exposures again (its memory is gone), start the workers. True if it did."""
        if self.broker is None or self.broker.proc is None or self.broker.proc.poll() is None:
            return False
        log.warning("embedded broker exited with %s; restarting it and the workers", self.broker.proc.returncode)
        workers = len(self.procs)
        self.stop(keep_broker=True)
        self.broker.start()
        ensure_topics_sync(self.cfg.kafka.bootstrap, topic_configs(self.cfg.kafka),
                           self.cfg.kafka.partitions, self.cfg.kafka.replication)
        if self.broker.storage.startswith("memory"):
            self.resumed = resume_unfinished(self.cfg, Database.from_settings(self.cfg))
        for i in range(workers):
            self.start_worker(i)
        return True

    def supervise(self, stop: threading.Event, progress=print, poll: float = 1.0) -> None:
        """Until ``stop`` is set: restart a dead broker or dead workers, print a line per finished stage run."""
        db = Database.from_settings(self.cfg)
        seen: set[tuple] = set()
        since = time.time() - 60
        while not stop.wait(poll):
            if not self.restart_broker():
                self.restart_dead()
            runs = [r for r in db.recent_stage_timings(500) if r["end"] is not None and r["end"] >= since]
            for r in sorted(runs, key=lambda r: r["end"]):
                key = (r["exposure_id"], r["lane"], r["stage"], r["end"])
                if key not in seen:
                    seen.add(key)
                    progress(f"{r['exposure_id']:<32} {r['lane']} {r['stage']:<12} {r['status']:<10} "
                             f"{r['end'] - r['start']:6.2f} s")
            if runs:
                since = max(since, min(r["end"] for r in runs) - 1)

    def kill_worker(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[i]
        if proc and proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(30)

    def check_workers(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                tail = (self.log_dir / f"worker{i}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker {i} exited with {proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 20.0, keep_broker: bool = False) -> None:
        """SIGTERM to every worker's process group, SIGKILL to what is left after ``timeout``; then the
        broker and the lock (unless ``keep_broker``)."""
        live = [p for p in self.procs if p and p.poll() is None]
        for proc in live:
            _killpg(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop within %.0f s: killed", proc.pid, timeout)
        for proc in self.procs:
            if proc:
                _killpg(proc, signal.SIGKILL)  # the worker's own children too
                proc.wait()
        if keep_broker:
            return
        if self.broker:
            self.broker.stop()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class AlreadyRunning(RuntimeError):
    """Another stack holds the data folder's lock."""


def lock_data_dir(path: Path):
    """Hold an exclusive lock on ``path`` (released when the returned file is closed or the process dies)."""
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise AlreadyRunning(f"{path.parent} is in use by a running stack (pid {holder}); stop it first "
                             "or give another --data-dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def resume_unfinished(cfg: Settings, db: Database) -> list[str]:
    """Publish again the exposure event of every exposure whose chain is unfinished (published
    once, not finished, not dead-lettered); returns their ids. For a broker that has lost its
    messages (the embedded one, in memory): the chains run again from the raw files."""
    events = []
    for row in sorted(db.rows("exposures"), key=lambda r: (r["mjd"] or 0, r["exposure_id"])):
        if row["status"] in ("registered", "template", "no_template", "failed") or (
                row["status"] == "alerted" and not row["too"]) or lanes_done(db, row["exposure_id"]):
            continue  # never published (the watcher offers it again), or finished
        path = Path(row["path"])
        events.append(ExposureEvent(exposure_id=row["exposure_id"], path=row["path"], sha256=row["sha256"],
                                    size=path.stat().st_size if path.exists() else 0,
                                    file_closed_at=row["file_closed_at"], detected_at=row["detected_at"],
                                    field_id=row["field_id"], mjd=row["mjd"], too=bool(row["too"]),
                                    namespace=db.namespace))
    if events:
        asyncio.run(_publish_exposures(cfg, events))
        log.warning("resumed %d unfinished exposures: %s", len(events), ", ".join(e.exposure_id for e in events))
    return [e.exposure_id for e in events]


async def _publish_exposures(cfg: Settings, events: list[ExposureEvent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, linger_ms=0,
                                max_request_size=cfg.kafka.max_message_bytes)
    await producer.start()
    turn = InTurn(producer)
    try:
        for ev in events:
            await turn.send(cfg.kafka.prefix, ev)
    finally:
        await producer.stop()


def wait_for(db: Database, exposure_ids: list[str], timeout: float, stack: Stack | None = None,
             progress=print, poll: float = 1.0) -> list[str]:
    """Wait until every exposure is finished; print a line per stage change. Returns unfinished ids."""
    deadline = time.monotonic() + timeout
    seen: dict[str, int] = {}
    pending = list(exposure_ids)
    while pending and time.monotonic() < deadline:
        if stack:
            stack.check_workers()
        for eid in list(pending):
            runs = sorted((r for r in db.rows("stage_runs", exposure_id=eid) if r["end"] is not None),
                          key=lambda r: r["end"])
            for r in runs[seen.get(eid, 0):]:
                progress(f"{eid:<32} {r['lane']} {r['stage']:<12} {r['status']:<10} "
                         f"{r['end'] - r['start']:6.2f} s")
            seen[eid] = len(runs)
            if lanes_done(db, eid):
                pending.remove(eid)
        time.sleep(poll)
    return pending

"""Start and stop the whole stack: broker (embedded unless configured), topics, worker processes.

Used by ``ast3stream run`` / ``demo`` and by the tests. Workers are separate processes
(``python -m agents.app``), as they are on a real site, so one can be killed and
restarted without touching the others.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ast3stream.config import Settings
from agents.db import Database

from .broker import EmbeddedBroker, die_with_parent, ensure_topics_sync, free_port
from .topics import topic_configs

TERMINAL = {"template", "no_template", "failed"}


@dataclass
class Stack:
    cfg: Settings
    workers: int = 1
    watch: bool = True
    threads: int | None = None
    stages: list[str] | None = None
    broker: EmbeddedBroker | None = None
    procs: list[subprocess.Popen | None] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        ns = self.cfg.database.namespace
        d = self.cfg.paths.data_dir / ("logs" + (f"-{ns}" if ns else ""))
        d.mkdir(parents=True, exist_ok=True)
        return d

    def start(self) -> "Stack":
        self.cfg.paths.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.cfg.kafka.bootstrap:
            self.broker = EmbeddedBroker(self.cfg.kafka.embedded_port, self.log_dir / "broker.log").start()
            self.cfg.kafka.bootstrap = self.broker.bootstrap
        ensure_topics_sync(self.cfg.kafka.bootstrap, topic_configs(self.cfg.kafka),
                           self.cfg.kafka.partitions, self.cfg.kafka.replication)
        ns = self.cfg.database.namespace
        self.settings_path = self.cfg.save(self.cfg.paths.data_dir / f"settings{'-' + ns if ns else ''}.json")
        self.procs = [None] * self.workers
        for i in range(self.workers):
            self.start_worker(i)
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
        log = open(self.log_dir / f"worker{i}.log", "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        root = Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, preexec_fn=die_with_parent)
        return self.procs[i]

    def add_worker(self) -> int:
        """Start one more worker; it joins the consumer group (a rebalance). Returns its index."""
        self.procs.append(None)
        self.start_worker(len(self.procs) - 1)
        return len(self.procs) - 1

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

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        if self.broker:
            self.broker.stop()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def lanes_done(db: Database, exposure_id: str) -> bool:
    """An exposure is finished when every lane it takes has alerted or stopped for a reason."""
    exp = db.rows("exposures", exposure_id=exposure_id)
    if not exp:
        return False
    if exp[0]["status"] in TERMINAL or db.count("dead_letters", exposure_id=exposure_id):
        return True
    runs = db.rows("stage_runs", exposure_id=exposure_id)
    lanes = ("qip", "dip") if exp[0]["too"] else ("dip",)
    finished = {r["lane"] for r in runs if r["stage"] == "alert"
                or (r["stage"] == "subtraction" and r["status"] in TERMINAL)}
    return all(lane in finished for lane in lanes)


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

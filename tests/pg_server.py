"""A throwaway PostgreSQL server on 127.0.0.1 for the tests (Debian's ``postgresql``; ``./dev test`` installs it).

The server runs from a temporary folder (trust authentication, no fsync) as the invoking
user, or as ``postgres`` when that is root (initdb refuses root). It dies with the test
process. Each test gets its own database (:func:`create_database`).
"""
from __future__ import annotations

import ctypes  # noqa: F401  imported here: die_with_parent runs after the switch to `postgres`, who cannot read the venv
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from agents.broker import die_with_parent, free_port


def find_bindir() -> Path | None:
    """The newest PostgreSQL server binaries (Debian keeps them off PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class PostgresServer:
    """``start()``, ``stop()`` (fast shutdown: clients are cut off) and ``close()``; ``url`` is the admin URL."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="ast3-pg-"))
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.dir, self.user, self.user)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str], how, **kwargs):
        return how([str(self.bindir / cmd[0]), *cmd[1:]], user=self.user, cwd=self.dir, **kwargs)

    def start(self, timeout: float = 60.0) -> "PostgresServer":
        """Start the server (creating its cluster the first time); wait until it accepts connections."""
        if not (self.dir / "data").exists():
            init = self._run(["initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust",
                              "-E", "UTF8", "--no-locale", "--no-sync"], subprocess.run, capture_output=True, text=True)
            if init.returncode:
                raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
        with open(self.dir / "server.log", "ab") as log:
            self.proc = self._run(["postgres", "-D", str(self.dir / "data"), "-p", str(self.port),
                                   "-h", "127.0.0.1", "-k", str(self.dir), "-c", "fsync=off",
                                   "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                                   "-c", "max_connections=300"], subprocess.Popen,
                                  stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        engine = sa.create_engine(self.url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    with engine.connect():
                        return self
                except sa.exc.OperationalError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"postgres did not accept connections in {timeout:g} s:\n{self.log_tail()}")
                    time.sleep(0.2)
        finally:
            engine.dispose()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, n: int = 3000) -> str:
        return (self.dir / "server.log").read_text(errors="replace")[-n:]


def _admin(url: str, sql: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def create_database(admin_url: str) -> str:
    """A new, empty database on the server of ``admin_url``; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(admin_url, f"CREATE DATABASE {name}")
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    _admin(admin_url, f"DROP DATABASE IF EXISTS {sa.make_url(url).database} WITH (FORCE)")

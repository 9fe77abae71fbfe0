"""The folder watcher: new complete exposures become exposure events on Kafka.

watchdog reports created/modified/moved files anywhere below the watched folder; files
already there at start are picked up too. A file is published once its size has been
stable for ``watcher.stable_s`` and its FITS structure is complete
(:func:`ast3stream.rawfile.check_complete`). A file that stays incomplete for
``watcher.giveup_s`` goes to the dead-letter topic with the reason; it is looked at again
if it changes. The same content (SHA-256) is never published twice: the exposures table
is the memory. ToO fields go to the priority topic.
"""
from __future__ import annotations

import asyncio
import fnmatch
import logging
import queue
import time
import traceback
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from ast3stream import events as ev
from .chain import Resources
from ast3stream.rawfile import IncompleteFile, check_complete, describe

from .retry import transient
from .topics import topic

log = logging.getLogger("ast3stream.watcher")


class _Handler(FileSystemEventHandler):
    def __init__(self, q: queue.Queue):
        self.q = q

    def on_created(self, event):
        if not event.is_directory:
            self.q.put(event.src_path)

    on_modified = on_created

    def on_moved(self, event):
        if not event.is_directory:
            self.q.put(event.dest_path)


class Watcher:
    """Watch ``folder`` and publish exposure events with ``producer`` (an aiokafka producer)."""

    def __init__(self, folder: Path, ctx: Resources, producer, prefix: str):
        self.folder = Path(folder)
        self.ctx = ctx
        self.cfg = ctx.cfg.watcher
        self.producer = producer
        self.prefix = prefix
        self.q: queue.Queue = queue.Queue()
        self.pending: dict[Path, tuple[int, float, float]] = {}  # path -> (size, mtime, first seen stable)
        self.done: dict[Path, tuple[int, float]] = {}
        self.observer = Observer()

    def _wanted(self, path: Path) -> bool:
        return (not path.name.startswith(".") and not path.name.endswith(".part")
                and any(fnmatch.fnmatch(path.name, p) for p in self.cfg.patterns))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.observer.schedule(_Handler(self.q), str(self.folder), recursive=True)
        self.observer.start()
        for path in sorted(self.folder.rglob("*")):  # files already there at start
            if path.is_file():
                self.q.put(str(path))
        try:
            while stop is None or not stop.is_set():
                await self.poll()
                await asyncio.sleep(self.cfg.poll_s)
        finally:
            self.observer.stop()
            self.observer.join(timeout=5)

    async def poll(self) -> None:
        while True:
            try:
                path = Path(self.q.get_nowait())
            except queue.Empty:
                break
            if self._wanted(path):
                self.pending.setdefault(path, (-1, -1.0, 0.0))
        now = time.time()
        for path, (size, mtime, since) in list(self.pending.items()):
            try:
                st = path.stat()
            except FileNotFoundError:
                self.pending.pop(path)
                continue
            if self.done.get(path) == (st.st_size, st.st_mtime):
                self.pending.pop(path)
                continue
            if (st.st_size, st.st_mtime) != (size, mtime):
                self.pending[path] = (st.st_size, st.st_mtime, now)
                continue
            if now - since < self.cfg.stable_s:
                continue
            try:
                await asyncio.to_thread(check_complete, path)
            except IncompleteFile as exc:
                if now - since >= self.cfg.giveup_s:
                    await self._dead_letter(path, f"incomplete or invalid FITS file {path.name}: {exc}", exc)
                    self._mark_done(path, st)
                continue
            try:
                await self._publish(path, st.st_mtime)
            except Exception as exc:  # unreadable header etc.: never lose the file silently
                if transient(exc):  # the broker or the database is away, not the file's fault:
                    raise           # the watcher task restarts and looks at the file again
                await self._dead_letter(path, f"cannot read exposure {path.name}: {type(exc).__name__}: {exc}", exc)
            self._mark_done(path, st)

    def _mark_done(self, path: Path, st) -> None:
        self.pending.pop(path, None)
        self.done[path] = (st.st_size, st.st_mtime)

    async def _publish(self, path: Path, mtime: float) -> None:
        exp = await asyncio.to_thread(describe, path, self.ctx, mtime)
        # remember first, then publish, then mark published: the field's earlier exposures are
        # known before any later one can be judged for the template, and a crash in between
        # leaves a ``registered`` row that is published again at the next start
        if not self.ctx.db.register_exposure(exp):
            known = self.ctx.db.rows("exposures", exposure_id=exp.exposure_id)
            if known and known[0]["sha256"] != exp.sha256:  # same name, other pixels: a real conflict
                reason = (f"exposure id {exp.exposure_id} of {path.name} is already used by other content "
                          f"({known[0]['path']}); not published")
                await self._dead_letter(path, reason, ValueError(reason))
            else:  # the same bytes again (a copy or a rename): nothing new to process
                log.info("duplicate exposure %s (%s) not published again", path.name, exp.sha256[:12])
            return
        name = "exposures.too" if exp.too else "exposures"
        await self.producer.send_and_wait(topic(self.prefix, name), exp.encode(), key=exp.exposure_id.encode())
        self.ctx.db.mark_published(exp.exposure_id)
        log.info("published %s to %s", exp.exposure_id, name)

    async def _dead_letter(self, path: Path, reason: str, exc: Exception) -> None:
        log.warning(reason)
        value = ev.deadletter("watcher", "ingest", reason, type(exc).__name__, key=str(path).encode(),
                              value=str(path).encode(), exposure_id=path.name,
                              traceback=traceback.format_exc())
        await self.producer.send_and_wait(topic(self.prefix, "deadletter"), value, key=str(path).encode())
        self.ctx.db.record_dead_letter("watcher", "ingest", path.name, reason)

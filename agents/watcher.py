"""The folder watcher: new complete exposures become exposure events on Kafka.

watchdog reports created/modified/moved files anywhere below the watched folder; files
already there at start are picked up too. A file is published once its FITS structure is
complete (:func:`ast3stream.rawfile.check_complete`) and either its writer has let go of it
(closed after writing, or renamed into the folder: the camera's usual write-then-rename) or,
where the file system reports no such event (network mounts, a polling observer), its size has
been stable for ``watcher.stable_s``. The watcher wakes when a writer lets go, so a closed or
renamed file is published within milliseconds. A file still growing is never given up: only
one that stays incomplete and unchanged for ``watcher.giveup_s`` (counted from its last
change: the change the watcher saw, or for a file it had not seen change, such as one
left in the folder before a restart, its mtime) goes to the dead-letter topic with the
reason; it is looked at again if it changes, and once it is complete and published its old dead letter is cleared. A bad file
is dead-lettered once per content (SHA-256, remembered in the database's ``files`` table),
not once per start. The same content is never published twice: the exposures table is
the memory; a copy under another name is noted (``files``, and an INFO line naming the
first file). ToO fields go to the priority topic.
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
from ast3stream.rawfile import IncompleteFile, check_complete, describe, sha256sum

from .broker import InTurn
from .retry import transient
from .topics import topic

log = logging.getLogger("ast3stream.watcher")


class _Handler(FileSystemEventHandler):
    """Queues ``(path, let_go)``: ``let_go`` when the writer closed the file or renamed it into place."""

    def __init__(self, q: queue.Queue, wake):
        self.q, self.wake = q, wake

    def _put(self, path: str, let_go: bool) -> None:
        self.q.put((path, let_go))
        if let_go:  # a write's many modifications need no haste: the stable rule looks at them
            self.wake()

    def on_created(self, event):
        if not event.is_directory:
            self._put(event.src_path, False)

    on_modified = on_created

    def on_closed(self, event):  # inotify's IN_CLOSE_WRITE
        if not event.is_directory:
            self._put(event.src_path, True)

    def on_moved(self, event):
        if not event.is_directory:
            self._put(event.dest_path, True)


class Watcher:
    """Watch ``folder`` and publish exposure events with ``producer`` (an aiokafka producer)."""

    def __init__(self, folder: Path, ctx: Resources, producer, prefix: str):
        self.folder = Path(folder)
        self.ctx = ctx
        self.cfg = ctx.cfg.watcher
        self.producer = producer
        self.turn = InTurn(producer)
        self.prefix = prefix
        self.q: queue.Queue = queue.Queue()
        self.pending: dict[Path, tuple[int, float, float, bool]] = {}  # path -> (size, mtime, last change, let go)
        self.done: dict[Path, tuple[int, float]] = {}
        self.observer = Observer()

    def _wanted(self, path: Path) -> bool:
        return (not path.name.startswith(".") and not path.name.endswith(".part")
                and any(fnmatch.fnmatch(path.name, p) for p in self.cfg.patterns))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        loop, woken = asyncio.get_running_loop(), asyncio.Event()
        self.observer.schedule(_Handler(self.q, lambda: loop.call_soon_threadsafe(woken.set)), str(self.folder),
                               recursive=True)
        self.observer.start()
        for path in sorted(self.folder.rglob("*")):  # files already there at start
            if path.is_file():
                self.q.put((str(path), False))
        try:
            while stop is None or not stop.is_set():
                woken.clear()
                await self.poll()
                try:  # the next file event, or the next look at files waiting to be stable
                    await asyncio.wait_for(woken.wait(), self.cfg.poll_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.observer.stop()
            self.observer.join(timeout=5)

    async def poll(self) -> None:
        while True:
            try:
                name, let_go = self.q.get_nowait()
            except queue.Empty:
                break
            path = Path(name)
            if self._wanted(path):
                size, mtime, since, _ = self.pending.get(path, (-1, -1.0, 0.0, False))
                self.pending[path] = (size, mtime, since, let_go)  # the latest event decides
        now = time.time()
        for path, (size, mtime, since, let_go) in list(self.pending.items()):
            try:
                st = path.stat()
            except FileNotFoundError:
                self.pending.pop(path)
                continue
            if self.done.get(path) == (st.st_size, st.st_mtime):
                self.pending.pop(path)
                continue
            if (st.st_size, st.st_mtime) != (size, mtime):  # changed, or not looked at before: its mtime
                since = now if size >= 0 else min(now, st.st_mtime)
                self.pending[path] = (st.st_size, st.st_mtime, since, let_go)
                if not let_go:
                    continue
            elif not let_go and now - since < self.cfg.stable_s:
                continue
            try:
                await asyncio.to_thread(check_complete, path)
            except IncompleteFile as exc:
                self.pending[path] = (st.st_size, st.st_mtime, since, False)  # closed incomplete: wait as for any
                if now - since >= self.cfg.giveup_s:  # unchanged that long: the writer is gone
                    await self._reject(path, f"incomplete or invalid FITS file {path.name}: {exc}", exc)
                    self._mark_done(path, st)
                continue
            try:
                await self._publish(path, st.st_mtime)
            except Exception as exc:  # unreadable header etc.: never lose the file silently
                if transient(exc):  # the broker or the database is away, not the file's fault:
                    raise           # the watcher task restarts and looks at the file again
                await self._reject(path, f"cannot read exposure {path.name}: {type(exc).__name__}: {exc}", exc)
            self._mark_done(path, st)

    def _mark_done(self, path: Path, st) -> None:
        self.pending.pop(path, None)
        self.done[path] = (st.st_size, st.st_mtime)

    async def _publish(self, path: Path, mtime: float) -> None:
        exp = await asyncio.to_thread(describe, path, self.ctx, mtime)
        # remember first, then publish, then mark published: the field's earlier exposures are
        # known before any later one can be judged for the template, and a crash in between
        # leaves a ``registered`` row that is published again at the next start
        db = self.ctx.db
        if not db.register_exposure(exp):
            known = db.rows("exposures", sha256=exp.sha256) or db.rows("exposures", exposure_id=exp.exposure_id)
            if known[0]["sha256"] != exp.sha256:  # same name, other pixels: a real conflict
                reason = (f"exposure id {exp.exposure_id} of {path.name} is already used by other content "
                          f"({known[0]['path']}); not published")
                await self._reject(path, reason, ValueError(reason), exp.sha256)
            elif known[0]["path"] == exp.path:  # the file itself, looked at again after a restart
                log.debug("%s: known exposure %s", path.name, exp.exposure_id)
            elif db.note_file(exp.sha256, exp.path, "duplicate"):  # a copy or a rename
                log.info("%s is a copy of %s (exposure %s): not published again", path, known[0]["path"],
                         known[0]["exposure_id"])
            return
        name = await self.turn.send(self.prefix, exp)
        db.mark_published(exp.exposure_id)
        if db.clear_dead_letters("watcher", path.name):
            log.warning("%s is complete now: its earlier dead letter is cleared", path.name)
        log.info("published %s to %s", exp.exposure_id, name)

    async def _reject(self, path: Path, reason: str, exc: Exception, sha256: str | None = None) -> None:
        """Dead-letter a bad file, once per content."""
        sha256 = sha256 or await asyncio.to_thread(sha256sum, path)
        if self.ctx.db.note_file(sha256, str(path), "rejected", reason):
            await self._dead_letter(path, reason, exc)
        else:
            log.info("%s: dead-lettered before (same content): %s", path.name, reason)

    async def _dead_letter(self, path: Path, reason: str, exc: Exception) -> None:
        log.warning(reason)
        value = ev.deadletter("watcher", "ingest", reason, type(exc).__name__, key=str(path).encode(),
                              value=str(path).encode(), exposure_id=path.name,
                              traceback=traceback.format_exc())
        await self.producer.send_and_wait(topic(self.prefix, "deadletter"), value, key=str(path).encode())
        self.ctx.db.record_dead_letter("watcher", "ingest", path.name, reason)

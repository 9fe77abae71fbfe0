"""The product store: durable products under one folder, keyed, written atomically.

A key is ``/``-joined components (``<namespace>/<exposure>/<lane>/<name>``,
``<namespace>/templates/<field>/<exposure>_<lane>.fits``); every component goes through
:func:`ast3stream.paths.safe_name`, so a key made from FITS headers or messages can never
point outside the store's root. A write goes to a temporary file beside its target and is
renamed over it, so a reader (or a restart after a crash) sees the old file or the new one,
never half of one; writing the same key again replaces it with the same content (the chain
is deterministic), so a re-run duplicates nothing.

Retention (:meth:`ProductStore.prune`) bounds the disk: what a namespace keeps for good is
the templates in force, and per exposure and lane its bundle and alert packets
(:data:`KEEP`); everything else (handoff state, thumbnails, PSF tables) goes once it is
older than ``products.retention_days``, and so do failed exposures' files. An unfinished
exposure's files, a template not (yet) in force (superseded, or stored and about to be
claimed) and the temporary file of a write in progress get a day at least, so a prune never
takes what a running chain still needs.

Writes happen in a background thread, off the alert path; :meth:`ProductStore.flush` waits
for those under a key prefix (the chain does so before an exposure's message is committed,
so a crash loses no product). A full disk (``ENOSPC``, ``EDQUOT``) holds the write and tries
again with backoff, saying so in the log, instead of losing the product.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

from ast3stream.paths import UnsafeName, safe_name

log = logging.getLogger("ast3stream.store")

FULL = (errno.ENOSPC, errno.EDQUOT)
KEEP = ("bundle.fits", "alerts.avro")  #: per exposure and lane, kept for good
FINISHED = ("alerted", "template", "no_template", "failed")  #: an unfinished exposure's files get a day at least
RETRY_MAX_S = 60.0  #: the wait between attempts at a write that met a full disk doubles up to this


class ProductStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._q: queue.Queue = queue.Queue()
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="product-store")
        self._thread.start()

    @classmethod
    def open(cls, url: str | Path) -> "ProductStore":
        return cls(url)

    @staticmethod
    def key(*parts: str) -> str:
        """A key from its components, each a safe file name (see :func:`ast3stream.paths.safe_name`)."""
        return "/".join(safe_name(str(p)) for p in parts)

    def path(self, key: str) -> Path:
        """The file of ``key``; a key with an unsafe component (``..``, absolute, odd) is refused."""
        return self.root.joinpath(*(safe_name(p) for p in key.split("/")))

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, key: str, write: Callable[[Path], object], *, sync: bool = False) -> str:
        """Write ``key`` with ``write(path)`` (now when ``sync``, else in the background); return the key."""
        path = self.path(key)
        if sync:
            self._write(key, path, write)
            return key
        fut: Future = Future()
        with self._lock:
            self._pending[key] = fut
        self._q.put((key, path, write, fut))
        return key

    def _write(self, key: str, path: Path, write) -> None:
        delay, pruned = 1.0, 0
        while True:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write(tmp)
                os.replace(tmp, path)
                return
            except BaseException as exc:
                tmp.unlink(missing_ok=True)  # never half a file
                if isinstance(exc, FileNotFoundError) and not path.parent.exists() and pruned < 3:
                    pruned += 1  # a prune took the empty folder in between: make it again
                    continue
                if not isinstance(exc, OSError) or exc.errno not in FULL:
                    raise
                log.warning("product store: no space for %s (%s); holding it, trying again in %.0f s",
                            key, exc.strerror, delay)
                time.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)

    def _loop(self) -> None:
        while True:
            key, path, write, fut = self._q.get()
            try:
                self._write(key, path, write)
                fut.set_result(key)
            except Exception as exc:
                log.exception("product store: writing %s failed", key)
                fut.set_exception(exc)
            finally:
                with self._lock:
                    if self._pending.get(key) is fut:
                        del self._pending[key]

    def flush(self, prefix: str = "") -> list[str]:
        """Wait for the background writes of keys under ``prefix`` (all by default); return the keys that failed."""
        with self._lock:
            futures = [(k, f) for k, f in self._pending.items() if k.startswith(prefix)]
        return [k for k, f in futures if f.exception() is not None]

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def disk_use(self, prefix: str = "") -> int:
        """Bytes under ``prefix`` (the whole store by default)."""
        root = self.path(prefix) if prefix else self.root
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0

    def prune(self, db, retention_days: float, now: float | None = None) -> int:
        """Delete what the namespace of ``db`` does not keep (see the module docstring) once it is
        older than ``retention_days``; returns the number of files deleted."""
        now = time.time() if now is None else now
        root = self.root / (db.namespace or "live")
        keep = set()
        for t in db.rows("templates"):
            try:
                keep.add(self.path(t["path"]))
            except UnsafeName:  # not a key of this store
                continue
        finished = {r["exposure_id"] for r in db.rows("exposures") if r["status"] in FINISHED}
        removed = 0
        for path in sorted(root.rglob("*")) if root.exists() else ():
            if not path.is_file() or path.name in KEEP and path.parent.parent.parent == root or path in keep:
                continue
            owner = path.relative_to(root).parts[0]
            writing = path.name.startswith(".")  # a temporary file of a write in progress
            window = retention_days if owner in finished and not writing else max(retention_days, 1.0)
            try:
                if now - path.stat().st_mtime >= window * 86400:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True) if root.exists() else ():
            if not any(folder.iterdir()):
                folder.rmdir()
        return removed

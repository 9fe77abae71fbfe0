"""The product store (placeholder: a local folder, written in a background thread)."""
from __future__ import annotations

import logging
import queue
import shutil
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger("ast3stream.store")


class ProductStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="product-store")
        self._thread.start()

    @classmethod
    def open(cls, url: str | Path) -> "ProductStore":
        return cls(url)

    @staticmethod
    def key(*parts: str) -> str:
        return "/".join(str(p) for p in parts)

    def path(self, key: str) -> Path:
        return self.root / key

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, key: str, write: Callable[[Path], object], *, sync: bool = False) -> str:
        if sync:
            self._write(key, write)
        else:
            self._q.put((key, write))
        return key

    def _write(self, key: str, write) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        write(tmp)
        tmp.replace(path)

    def _loop(self) -> None:
        while True:
            key, write = self._q.get()
            try:
                self._write(key, write)
            except Exception:
                log.exception("product store: writing %s failed", key)
            finally:
                self._q.task_done()

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def flush(self) -> None:
        self._q.join()

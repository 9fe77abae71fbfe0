"""Waiting in tests: on a condition, with a generous bound (the suite must pass on a loaded machine)."""
from __future__ import annotations

import asyncio
import subprocess
import time


def until(condition, what: str, timeout: float = 600.0, check=None, poll: float = 0.2) -> None:
    """Return once ``condition()`` is true; fail after ``timeout`` s naming ``what``. ``check()``,
    called in between, raises when what is awaited cannot come any more (a worker died)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if check is not None:
            check()
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(poll)


def running(proc: subprocess.Popen):
    """A ``check`` for :func:`until`: ``proc`` is still running."""
    def check() -> None:
        assert proc.poll() is None, f"{proc.args[-1]!r} exited with {proc.returncode}"
    return check


async def until_async(condition, what: str, timeout: float = 600.0, poll: float = 0.2) -> None:
    """:func:`until` inside an event loop: the loop's other tasks run while it waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(poll)

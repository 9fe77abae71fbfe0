"""The busy threads of the faulthandler dumps in a worker log (``AST3STREAM_GIL_PROBE_S``).

    python -m bench.gil_dumps WORKER_LOG > gil_dumps.txt

Each dump lists every thread; threads parked in a wait (locks, queues, selectors, sleeps) are
left out, so what remains is the thread that held the GIL and what it was running.
"""
from __future__ import annotations

import re
import sys

IDLE = re.compile(r"threading\.py\", line \d+ in (wait|_wait_for_tstate_lock)|selectors\.py|queues\.py\", line \d+ in (get|_feed)"
                  r"|futures/thread\.py\", line \d+ in _worker|connection\.py\", line \d+ in wait|in sleep$|base_events\.py\", line \d+ in _run_once"
                  r"|agents/app\.py\", line \d+ in loop$|inotify_c\.py\", line \d+ in _check_inotify_fd")  # the probe's own sleep; inotify's poll


def busy_threads(text: str):
    """``(header, frames)`` of each dump's threads whose innermost frame is not a wait."""
    for dump in re.split(r"^Timeout \(", text, flags=re.M)[1:]:
        header = "Timeout (" + dump.splitlines()[0]
        for block in re.split(r"\n\s*\n", dump):
            lines = [ln for ln in block.splitlines() if ln.strip().startswith("File ")]
            if lines and not IDLE.search(lines[0]):
                yield header, lines


def main(argv=None) -> None:
    text = open((argv or sys.argv[1:])[0], errors="replace").read()
    for header, frames in busy_threads(text):
        print(header)
        print("\n".join(frames[:14]))
        print()


if __name__ == "__main__":
    main()

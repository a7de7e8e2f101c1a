"""``ralph run --report FILE``: the run's page rewritten every few seconds while it goes, by a thread
of its own reading the history like any other reader, and once more at the end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

INTERVAL = 3.0  # seconds between two writes, at least


class LiveReport:
    def __init__(self, path: Path, state_dir: Path, run_id: str, warn: Callable[[str], None],
                 interval: float = INTERVAL) -> None:
        self.path, self.state_dir, self.run_id, self.warn = path, state_dir, run_id, warn
        self.interval = interval
        self._stop = threading.Event()
        self._failed = False
        self._thread = threading.Thread(target=self._loop, name="ralph-report", daemon=True)

    def start(self) -> LiveReport:
        self._thread.start()
        return self

    def _loop(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            began = time.monotonic()
            self.write()
            # A big batch's page takes a while to make: never spend more than a third of the time on it.
            wait = max(self.interval, 2 * (time.monotonic() - began))

    def write(self) -> None:
        from ralph.report import text, write
        from ralph.report.gather import gather

        try:
            data = gather([self.state_dir], self.run_id)
            write(self.path, text(data, "html", self.path.resolve().parent))
        except Exception as exc:  # the report is a view: it never fails the run; say so once
            if not self._failed:
                self._failed = True
                self.warn(f"cannot write the report {self.path}: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop refreshing and write the final page (the run's end is in the history by now)."""
        self._stop.set()
        self._thread.join()
        self._failed = False
        self.write()


def start(path: Path, state_dir: Path, run_id: str, warn: Callable[[str], None]) -> LiveReport:
    live = LiveReport(path, state_dir, run_id, warn)
    live.write()  # the page exists from the run's start on
    return live.start()

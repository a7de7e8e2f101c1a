"""The next iteration's session folder, made by a helper thread while the current child runs.

Creating a folder is filesystem metadata: the slowest and least steady part of an iteration's
bookkeeping on a real disk (0.2-1.3 ms here, against 0.004 ms on tmpfs). The next session's ID is
minted one iteration early for it, so IDs still sort in the order their iterations ran.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ralph.process import private_dirs
from ralph.session import new_session_id

_lock = threading.Lock()
_pool: list[ThreadPoolExecutor] = []  # one helper thread for every loop of this process


def _helper() -> ThreadPoolExecutor:
    with _lock:
        if not _pool:
            _pool.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="ralph-ahead"))
        return _pool[0]


class SessionsAhead:
    """Session IDs for one loop, each one's folder under ``run_dir`` made an iteration ahead."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.more = True  # another iteration may follow this one (false on the last: nothing to make)
        self._next: str | None = None
        self._made: Future[None] | None = None

    def next_id(self) -> str:
        session_id = self._next or new_session_id()
        self._next = self._made = None
        if self.more:
            self._next = new_session_id()
            self._made = _helper().submit(private_dirs, self.run_dir / self._next)
        return session_id

    def discard(self) -> None:
        """The loop ended: the folder made for an iteration that did not come goes."""
        if self._next is None:
            return
        if self._made is not None:
            with contextlib.suppress(Exception):
                self._made.result()
        with contextlib.suppress(OSError):
            os.rmdir(self.run_dir / self._next)
        self._next = self._made = None

"""One thread at a time empties a queue that many threads fill (the history's rows, the console's
lines, the spans for traces.jsonl).

A batch's 64 threads each writing for themselves would queue up on a lock whenever the one holding it
waits in write() or a commit (and hand the GIL around while they do). So a thread that finds another
draining may leave its items to it (``wait=False``) and go on; the draining thread takes batches until
none is left, and looks again once it has let go of the lock, so nothing put in meanwhile stays behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Drain(Generic[T]):
    def __init__(self, take: Callable[[], list[T]], write: Callable[[list[T]], None],
                 pending: Callable[[], bool]) -> None:
        """``take``: the next batch, empty when none waits (it holds the queue's own lock, if any);
        ``write``: where a batch goes; ``pending``: something waits."""
        self._take, self._write, self._pending = take, write, pending
        self._lock = threading.Lock()
        self.busy = False  # a thread is draining now

    def __call__(self, wait: bool = True) -> bool:
        """Empty the queue; ``wait=False``: unless another thread is at it. True if this thread drained."""
        drained = False
        while True:
            if not self._lock.acquire(blocking=wait):
                return drained  # the draining thread looks at the queue again once it lets go
            try:
                self.busy, drained = True, True
                while batch := self._take():
                    self._write(batch)
            finally:
                self.busy = False
                self._lock.release()
            if not self._pending():  # nothing came between the last take and the release: done
                return drained
            wait = False  # more came: take it too, unless a thread that came for it has the lock

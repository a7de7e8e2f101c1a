"""One thread at a time empties a queue that many threads fill (the history's rows, the console's
lines, the spans for traces.jsonl).

A batch's 64 threads each writing for themselves would queue up on a lock whenever the one holding it
waits in write() or a commit (and hand the GIL around while they do). So a thread that finds another
draining may leave its items to it (``wait=False``) and go on; the draining thread takes batches until
none is left, and looks again once it has let go of the lock, so nothing put in meanwhile stays behind.
``Outbox`` is such a queue for lines (the console's, the run log's): a routine one may wait for the
moment the next child runs (``ralph.meanwhile``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from ralph import meanwhile

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


class Outbox(Generic[T]):
    """Items many threads put and one at a time ``write``s: at once, or (``later``) with the next other
    item, by the thread that next starts a child, or at ``flush()``."""

    def __init__(self, write: Callable[[list[T]], None]) -> None:
        self._lock = threading.Lock()  # the items waiting (held for an append, never across a write)
        self._items: list[T] = []
        self._scheduled = False  # a flush waits for the next child's start
        self._drain = Drain(self._take, write, lambda: bool(self._items))

    def put(self, item: T, later: bool = False, wait: bool = True) -> None:
        """``wait=False``: out now, by this thread or by the one writing."""
        with self._lock:
            self._items.append(item)
            schedule = later and not self._scheduled
            self._scheduled = self._scheduled or schedule
        if not later:
            self.flush(wait)
        elif schedule:  # a thread that finds another writing leaves its lines to it (no waiting on a lock)
            meanwhile.later(lambda: self.flush(wait=False), shared=True)

    def flush(self, wait: bool = True) -> None:
        """What waits, written. Unless ``wait``, a thread that finds another writing leaves it to it."""
        if self._items or self._drain.busy:
            self._drain(wait)

    def _take(self) -> list[T]:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        return items

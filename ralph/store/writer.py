"""Group commit for the embedded history: the loop queues its row writes, and whoever needs them
committed commits everything queued in one transaction. An iteration's step row (with the child's
PID, which recovery after a ``kill -9`` needs) is committed by a writer thread while the child runs,
off the spawn path; the iteration's end is committed by the loop itself (no thread hand-off), and
64 items ending at once share one commit.

Nothing is lost by it: ``flush()`` returns once everything queued before it is committed, and the
store calls it at every iteration's end (so ``kill -9`` keeps every finished iteration) and before
any read or other write of this process (which so sees its own rows).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ralph.errors import StateError

Op = Callable[[Any], None]  # one write, given the transaction's connection


class PendingId:
    """A row's ID before its insert has run: filled in before any later write reads it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class GroupWriter:
    def __init__(self, transaction: Callable[[], Any], describe: Callable[[Exception], StateError]) -> None:
        self._transaction = transaction  # a context manager yielding the connection, one write transaction
        self._describe = describe
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # flushers wait here for a commit
        self._work = threading.Condition(lock)  # the writer thread waits here for work
        self._ops: list[Op] = []
        self._queued = self._done = 0
        self._busy = False  # a batch is being committed: the next waits (batches commit in order)
        self._wake = False  # the writer thread should commit what is queued
        self._error: StateError | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def put(self, op: Op, soon: bool = False) -> None:
        """Queue a write; ``soon``: have the writer thread commit it now rather than at the next flush."""
        with self._cond:
            if self._error is not None:
                raise self._error
            self._ops.append(op)
            self._queued += 1
            if soon:
                if self._thread is None:  # started by the first such write: reading commands never start one
                    self._thread = threading.Thread(target=self._loop, name="ralph-history", daemon=True)
                    self._thread.start()
                self._wake = True
                self._work.notify()

    def flush(self) -> None:
        target = self._queued
        while True:
            with self._cond:
                while True:
                    if self._error is not None:
                        raise self._error
                    if self._done >= target:
                        return
                    if self._ops and not self._busy:
                        ops = self._take()
                        break
                    self._cond.wait()
            self._commit(ops)

    @property
    def idle(self) -> bool:
        return self._done == self._queued

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._work.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _take(self) -> list[Op]:  # under the lock
        ops, self._ops = self._ops, []
        self._busy, self._wake = True, False
        return ops

    def _commit(self, ops: list[Op]) -> None:
        error: StateError | None = None
        try:
            with self._transaction() as db:
                for op in ops:
                    op(db)
        except Exception as exc:  # a full disk, a broken file: every later flush says so
            error = exc if isinstance(exc, StateError) else self._describe(exc)
        with self._cond:
            self._done += len(ops)
            self._busy = False
            if error is not None and self._error is None:
                self._error = error
            self._cond.notify_all()
            self._work.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not ((self._wake or self._closed) and self._ops and not self._busy):
                    if self._closed and not self._ops:
                        return
                    self._work.wait()
                ops = self._take()
            self._commit(ops)

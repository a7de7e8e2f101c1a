"""Group commit for the embedded history: one thread writes the rows that the loop queues, every
write queued since its last commit in one transaction, so an iteration's bookkeeping leaves the
spawn path and 64 items ending at once cost one commit, not 64.

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
    """A row's ID before its insert has run: the writer fills it in before any later write reads it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class GroupWriter:
    def __init__(self, transaction: Callable[[], Any], describe: Callable[[Exception], StateError]) -> None:
        self._transaction = transaction  # a context manager yielding the connection, one write transaction
        self._describe = describe
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # flushers wait here for a commit
        self._work = threading.Condition(lock)  # the writer waits here for writes (one wake-up, not 64)
        self._ops: list[Op] = []
        self._queued = self._done = 0
        self._error: StateError | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def put(self, op: Op) -> None:
        with self._cond:
            if self._error is not None:
                raise self._error
            if self._thread is None:  # started by the first write: reading commands never start one
                self._thread = threading.Thread(target=self._loop, name="ralph-history", daemon=True)
                self._thread.start()
            self._ops.append(op)
            self._queued += 1
            self._work.notify()

    def flush(self) -> None:
        with self._cond:
            target = self._queued
            while self._done < target and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error

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

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._ops and not self._closed:
                    self._work.wait()
                if not self._ops:
                    return
                ops, self._ops = self._ops, []
            error: StateError | None = None
            try:
                with self._transaction() as db:
                    for op in ops:
                        op(db)
            except Exception as exc:  # a full disk, a broken file: every later flush says so
                error = exc if isinstance(exc, StateError) else self._describe(exc)
            with self._cond:
                self._done += len(ops)
                if error is not None and self._error is None:
                    self._error = error
                self._cond.notify_all()

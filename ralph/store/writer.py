"""Group commit for the embedded history: the loop queues its row writes, and whoever needs them
committed commits everything queued so far in one transaction. A loop commits once an iteration,
once its child is spawned and runs (the previous iteration's end, this session's and its step's
rows, with the PID that recovery after a ``kill -9`` needs), instead of a transaction per row; 64
batch items ending together share commits.

Nothing is lost by it: ``flush()`` returns once everything queued before it is committed; the loop
calls it at its end and before anything that may take long without a child running (a pause, a
retry's wait, a git snapshot), so a finished iteration waits uncommitted only for the time it takes
to start the next child; and the store calls it before any read or other write of this process
(which so sees its own rows). No thread: on 2 cores handing rows to one cost more (futex wake-ups,
the GIL) than the commits it would have saved.
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
        self._cond = threading.Condition()  # flushers wait here while another commits
        self._ops: list[Op] = []
        self._queued = self._done = 0
        self._busy = False  # a batch is being committed: the next waits (batches commit in order)
        self._wanted = 0  # what flushes that did not wait asked for: the committing thread goes on to it
        self._error: StateError | None = None

    def put(self, op: Op) -> None:
        with self._cond:
            if self._error is not None:
                raise self._error
            self._ops.append(op)
            self._queued += 1

    def flush(self, wait: bool = True) -> None:
        """Returns once everything queued before the call is committed (raises what could not be).
        ``wait=False``: while another thread commits, leave it to commit these right after and return
        (64 batch items spawning at once would otherwise wake each other up 64 times a commit)."""
        with self._cond:
            target = self._queued
        while True:
            with self._cond:
                while True:
                    if self._error is not None:
                        raise self._error
                    target = max(target, self._wanted)
                    if self._done >= target:
                        return
                    if self._ops and not self._busy:
                        ops, self._ops, self._busy = self._ops, [], True
                        break
                    if not wait and self._busy:
                        self._wanted = max(self._wanted, target)
                        return
                    self._cond.wait()
            self._commit(ops)

    @property
    def idle(self) -> bool:
        return self._done == self._queued

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

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

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from ralph.drain import Drain
from ralph.errors import StateError

Op = Callable[[Any], None]  # one write, given the transaction's connection


class PendingId:
    """A row's ID before its insert has run: filled in before any later write reads it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class GroupWriter:
    """Ops wait in a deque (its append is atomic: no lock for the 64 threads of a batch to queue up on);
    one thread at a time (``ralph.drain``) takes every op waiting and commits them in one transaction,
    again while more wait; batches commit in order."""

    def __init__(self, transaction: Callable[[], Any], describe: Callable[[Exception], StateError]) -> None:
        self._transaction = transaction  # a context manager yielding the connection, one write transaction
        self._describe = describe
        self._ops: deque[Op] = deque()
        self._drain = Drain(self._take, self._commit, lambda: bool(self._ops))
        self._error: StateError | None = None

    def put(self, op: Op) -> None:
        if self._error is not None:
            raise self._error
        self._ops.append(op)

    def flush(self, wait: bool = True) -> None:
        """Returns once everything queued before the call is committed (raises what could not be).
        ``wait=False``: while another thread commits, leave it to commit these right after and return
        (64 batch items spawning at once would otherwise wait for each other's commits)."""
        if self._drain(wait) and self._error is not None:
            raise self._error

    def _take(self) -> list[Op]:
        ops = []
        with contextlib.suppress(IndexError):
            while True:
                ops.append(self._ops.popleft())
        return ops

    @property
    def idle(self) -> bool:
        return not self._ops and not self._drain.busy

    def _commit(self, ops: list[Op]) -> None:
        if self._error is not None:  # a broken history commits nothing more; every flush says so
            return
        try:
            with self._transaction() as db:
                for op in ops:
                    op(db)
        except Exception as exc:  # a full disk, a broken file: every later flush says so
            self._error = exc if isinstance(exc, StateError) else self._describe(exc)

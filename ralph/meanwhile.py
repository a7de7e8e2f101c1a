"""Work that waits for the moment a child runs.

Between spawning a child and its exit, ralph only waits; on two cores the child runs on one and
ralph's bookkeeping can take the other. Work that need not be done before the spawn (making and
ending spans, exporting ended ones, routine console lines and run-log records) is left here and
done by a thread that spawned a child, right after it did: no helper thread, so no hand-offs of the
GIL. A task is this thread's own (its loop's spans), or ``shared``: whichever thread
starts a child next does it (a batch's items write one console and one run log).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

_local = threading.local()
# A deque's append and popleft are atomic: 64 threads handing tasks around through a lock queue up on it.
_shared: deque[Callable[[], None]] = deque()


def later(task: Callable[[], None], shared: bool = False) -> None:
    """Run ``task`` while this thread's next child runs (``shared``: any thread's next child)."""
    if shared:
        _shared.append(task)
        return
    tasks: list[Callable[[], None]] | None = getattr(_local, "tasks", None)
    if tasks is None:
        tasks = _local.tasks = []
    tasks.append(task)


def run_pending() -> None:
    run_own()
    for _ in range(len(_shared)):  # those left so far: a task may leave itself again for the next child
        try:
            task = _shared.popleft()
        except IndexError:  # another thread took the last one
            return
        task()


def run_own() -> None:
    """This thread's own tasks (a loop's end: nothing of it may wait for a child that will not come)."""
    tasks: list[Callable[[], None]] | None = getattr(_local, "tasks", None)
    while tasks:
        tasks.pop(0)()

"""Work that waits for the moment a child runs.

Between spawning a child and its exit, ralph only waits; on two cores the child runs on one and
ralph's bookkeeping can take the other. Work that need not be done before the spawn (the next
session's folder, exporting ended spans, the console's lines) is left here and done by the thread
that spawned the child, right after it spawned it: no helper thread, so no hand-offs of the GIL.
Tasks belong to the thread that left them (a batch's items each have their own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_local = threading.local()


def later(task: Callable[[], None]) -> None:
    """Run ``task`` while this thread's next child runs (or at ``run_pending`` before that)."""
    tasks: list[Callable[[], None]] | None = getattr(_local, "tasks", None)
    if tasks is None:
        tasks = _local.tasks = []
    tasks.append(task)


def run_pending() -> None:
    tasks: list[Callable[[], None]] | None = getattr(_local, "tasks", None)
    while tasks:
        tasks.pop(0)()

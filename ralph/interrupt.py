"""SIGINT/SIGTERM to ralph: the first asks every running child to stop, the second kills at once.

Signal handlers only record the signal and write a byte to a self-pipe; every process loop selects on
that pipe, so a loop in any thread wakes immediately without the handler touching shared state.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class CancelToken:
    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.signum: int | None = None
        self.presses = 0
        self._event = threading.Event()

    @property
    def fd(self) -> int:
        """Readable once cancelled (level-triggered: every selector sees it)."""
        return self._r

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def urgent(self) -> bool:
        """A second press: skip the polite signals."""
        return self.presses >= 2

    def trigger(self, signum: int) -> None:
        self.presses += 1
        if self.signum is None:
            self.signum = signum
        self._event.set()
        try:
            os.write(self._w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is already readable; that is all we need

    def wait(self, seconds: float) -> bool:
        """Sleep that an interrupt cuts short. True if cancelled."""
        return self._event.wait(seconds)

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


_NEVER = CancelToken()  # for callers outside `ralph run`: never triggered


def never() -> CancelToken:
    return _NEVER


@contextmanager
def handle_signals() -> Iterator[CancelToken]:
    """Install SIGINT/SIGTERM handlers for the duration of a run (main thread only)."""
    token = CancelToken()
    if threading.current_thread() is not threading.main_thread():
        yield token
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        token.trigger(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield token
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        token.close()

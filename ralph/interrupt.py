"""SIGINT/SIGTERM to ralph: the first asks every running child to stop, the second kills at once.

Signal handlers only record the signal and write a byte to a self-pipe; every process loop selects on
that pipe, so a loop in any thread wakes immediately without the handler touching shared state.
"""

from __future__ import annotations

import contextlib
import os
import select
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
        # A plain flag, not a threading.Event: the handler runs in the main thread between two
        # bytecodes, possibly inside Event.wait holding the Event's own lock (set() would deadlock).
        self._cancelled = False

    @property
    def fd(self) -> int:
        """Readable once cancelled (level-triggered: every selector sees it)."""
        return self._r

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def urgent(self) -> bool:
        """A second press: skip the polite signals."""
        return self.presses >= 2

    def trigger(self, signum: int) -> None:
        self.presses += 1
        if self.signum is None:
            self.signum = signum
        self.stop()

    def stop(self) -> None:
        """Cancel. Called from inside (one batch item failed hard), children stop as on a first
        Ctrl-C, but the run is not recorded as interrupted by a signal."""
        self._cancelled = True
        with contextlib.suppress(OSError):  # already readable (or closed at shutdown): enough
            os.write(self._w, b"x")

    def wait(self, seconds: float) -> bool:
        """Sleep that an interrupt cuts short (the pipe turns readable). True if cancelled."""
        if not self._cancelled:
            with contextlib.suppress(OSError, ValueError):  # closed at shutdown: nothing to wait for
                select.select([self._r], [], [], max(0.0, seconds))
        return self._cancelled

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


_NEVER = CancelToken()  # for callers outside `ralph run`: never triggered


def never() -> CancelToken:
    return _NEVER


@contextmanager
def handle_signals() -> Iterator[CancelToken]:
    """Install SIGINT/SIGTERM handlers for the duration of a run (main thread only).

    SIGHUP (the terminal went away) is handled the same way, exit 129, so the children, which run
    in their own sessions and never see the hangup, are not left behind; under ``nohup`` (SIGHUP
    ignored) it stays ignored."""
    token = CancelToken()
    if threading.current_thread() is not threading.main_thread():
        yield token
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        token.trigger(signum)

    wanted = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        wanted.append(signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield token
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        token.close()

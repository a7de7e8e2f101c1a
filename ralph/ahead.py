"""The next iteration's session folder, made while the current child runs.

Creating a folder and a file allocates inodes: the slowest and least steady part of an iteration's
bookkeeping on a real disk (0.05 ms on a quiet ext4, 0.4-0.9 ms just after many files were deleted,
whose inodes ext4 then skips one by one; 0.004 ms on tmpfs). A spare folder (``.ahead-*``, with the
agent's empty log when the agent is an iteration's first step) is made in the time a child runs
(``ralph.meanwhile``) and renamed to the session's ID once the next iteration's first child runs
(0.02-0.07 ms, also off the spawn path): the ID is still minted when the iteration starts, so the
time in it is the iteration's start, as opencode's IDs have theirs. A helper thread was tried first:
on two cores it competed with the child and the loop for the CPU.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ralph import meanwhile
from ralph.process import private_dirs
from ralph.session import new_session_id


class SessionsAhead:
    """Session IDs for one loop, each one's folder under ``run_dir`` made an iteration ahead, with
    ``files`` in it."""

    def __init__(self, run_dir: Path, files: tuple[str, ...] = ()) -> None:
        self.run_dir, self.files = run_dir, files
        self.more = True  # another iteration may follow this one (false on the last: nothing to make)
        self._spare: Path | None = None
        self._made = False

    def next_id(self) -> str:
        session_id = new_session_id()
        spare, made = self._spare, self._made
        self._spare, self._made = None, False
        if spare is not None and made:
            # Renamed once the iteration's first child runs, before its log is opened (process.run).
            meanwhile.later(lambda: self._put_in_place(spare, self.run_dir / session_id))
        if self.more:
            new = self._spare = self.run_dir / f".ahead-{session_id}"
            meanwhile.later(lambda: self._make(new))
        return session_id

    def _put_in_place(self, spare: Path, folder: Path) -> None:
        try:
            os.rename(spare, folder)
        except OSError:  # the folder was made meanwhile (a preset writes its files there): the spare goes
            self._remove(spare)

    def _make(self, spare: Path) -> None:
        if spare is not self._spare:  # left by an iteration that ran no child: its successor began
            return
        self._made = True
        try:
            private_dirs(spare)
            for name in self.files:  # empty, as the step's own open (O_APPEND | O_CREAT) would leave it
                os.close(os.open(spare / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError:  # the step makes its folder itself; what was made of this one goes
            self.discard()

    def discard(self) -> None:
        """The loop ended: the spare made for an iteration that did not come goes."""
        spare, made = self._spare, self._made
        self._spare, self._made = None, False
        if spare is not None and made:
            self._remove(spare)

    def _remove(self, spare: Path) -> None:
        with contextlib.suppress(OSError):
            for name in self.files:
                with contextlib.suppress(FileNotFoundError):
                    (spare / name).unlink()
            os.rmdir(spare)

"""``ralph logs SESSION --follow``: print what the session's steps wrote and keep printing, as new
steps start and their logs grow, until the session has ended and every log is drained."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any

from ralph.store import Store

POLL_S = 0.2  # how often a quiet log is looked at again; output is copied as soon as it is seen


def _header(step: dict[str, Any]) -> bytes:
    attempt = "" if step["attempt"] == 1 else f" attempt {step['attempt']}"
    return f"==> {step['name']}{attempt} <==\n".encode()


def _copy(path: Path, offset: int, out: IO[bytes]) -> int:
    """Copy the bytes after ``offset``; returns the new offset."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            while chunk := fh.read(1 << 20):
                out.write(chunk)
                offset += len(chunk)
    except FileNotFoundError:
        pass  # the step has started but not written yet
    return offset


def follow(store: Store, session_id: str, step: str | None = None, out: IO[bytes] | None = None,
           poll: float = POLL_S) -> int:
    out = out or sys.stdout.buffer
    offsets: dict[int, int] = {}
    current: int | None = None  # the step whose output was printed last
    headers = step is None  # a whole session has several steps; one named step is shown bare
    while True:
        store.mark_abandoned()  # a run that died is not followed forever
        row = store.find_session(session_id)
        running = row is not None and row["status"] == "running"
        # The status is read before the logs: a session seen ended has nothing left to write after.
        steps = [s for s in store.steps(session_id) if step is None or s["name"] == step]
        if len(steps) > 1:
            headers = True
        for s in steps:
            path = Path(s["log_path"]) if s.get("log_path") else None
            if path is None or not path.exists() or path.stat().st_size <= offsets.get(s["id"], 0):
                continue
            if headers and current != s["id"]:
                out.write(_header(s))
            current = s["id"]
            offsets[s["id"]] = _copy(path, offsets.get(s["id"], 0), out)
        out.flush()
        if not running:
            return 0
        time.sleep(poll)

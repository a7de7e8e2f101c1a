"""Marker-file handshakes and process trees for the reliability tests.

A test never sleeps for "long enough": a child touches a marker once it is in the state the test
needs, and the test waits for that file. ``TREE`` is a child that starts a grandchild in its own
process group, which ignores SIGINT and SIGTERM (recording each one it gets) and blocks forever:
only SIGKILL to the whole group ends it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

PY = sys.executable

# argv: DIR [detach]. The grandchild writes DIR/grandchild.pid and records each signal it gets
# in DIR/signals (one name per line); the child prints a line, then touches DIR/ready and blocks.
# With "detach", the grandchild's output goes to /dev/null, so only the group reveals it.
TREE = r"""
import os, signal, subprocess, sys, pathlib
d = pathlib.Path(sys.argv[1])
if sys.argv[2:3] == ["grandchild"]:
    def record(signum, frame):
        with open(d / "signals", "a") as fh:
            fh.write(signal.Signals(signum).name + "\n")
    signal.signal(signal.SIGINT, record)
    signal.signal(signal.SIGTERM, record)
    (d / "grandchild.pid").write_text(str(os.getpid()))
    (d / "grandchild.ready").touch()
    while True:
        signal.pause()
detach = sys.argv[2:3] == ["detach"]
out = subprocess.DEVNULL if detach else None
subprocess.Popen([sys.executable, __file__, str(d), "grandchild"], stdout=out, stderr=out)
while not (d / "grandchild.ready").exists():
    pass
(d / "child.pid").write_text(str(os.getpid()))
print("before the signal: printed and flushed", flush=True)
(d / "ready").touch()
while True:
    signal.pause()
"""


def tree_script(folder: Path) -> Path:
    path = folder / "tree.py"
    path.write_text(TREE)
    return path


def wait_for(path: Path, timeout: float = 60.0) -> Path:
    """The handshake: wait until a child has created ``path``."""
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.005)
    return path


def wait_for_text(path: Path, text: str, timeout: float = 60.0) -> str:
    """The handshake on output: wait until ``text`` shows up in a file something is writing."""
    end = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        if time.monotonic() > end:
            raise AssertionError(f"{text!r} never appeared in {path}: {content[-2000:]!r}")
        time.sleep(0.005)


def alive(pid: int) -> bool:
    """Running (a zombie is dead: PID 1 here may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def wait_dead(pid: int, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def kill_group(pid: int) -> None:
    """Cleanup after a test that killed ralph -9 and so left its child's group behind."""
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def signals_seen(folder: Path) -> list[str]:
    path = folder / "signals"
    return path.read_text().split() if path.exists() else []


def db_rows(state: Path, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Read the history the way any other SQLite client would."""
    db = sqlite3.connect(state / "ralph.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql, args)]
    finally:
        db.close()


def spans(state: Path) -> list[dict[str, Any]]:
    """Every span in traces.jsonl, its attributes flattened into ``attrs``."""
    found = []
    for line in (state / "traces.jsonl").read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    span["attrs"] = {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}
                    found.append(span)
    return found

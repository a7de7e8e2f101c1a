"""The console on a real pseudo-terminal: prefixed lines plus a live status line (rich)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from helpers import PY, write_loop, yaml_list
from ralph.console import MAX_PENDING, LineSplitter


def test_line_splitter_keeps_partial_lines_and_bounds_them() -> None:
    s = LineSplitter()
    assert s.feed(b"a\nb") == [b"a"]
    assert s.feed(b"c\n\nd") == [b"bc", b""]
    assert s.flush() == [b"d"]
    big = b"x" * (MAX_PENDING + 10)
    assert s.feed(big) == [big]  # a line that never ends is shown in pieces, not hoarded
    assert s.pending == b""


def test_tty_shows_a_live_status_line(tmp_path: Path, isolated: Path) -> None:
    go = tmp_path / "go"
    waiting = tmp_path / "waiting"
    agent = [PY, "-c", (
        "import os, pathlib, time, sys; pathlib.Path(sys.argv[1]).touch(); print('agent waiting', flush=True)\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.02)"
    ), str(waiting), str(go)]
    loop = write_loop(tmp_path, f"""
        name: tty
        agent: {{command: {yaml_list(agent)}}}
        until: {{max_iterations: 1}}
    """)
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ralph", "run", str(loop)], stdin=slave, stdout=slave,
                            stderr=slave, env={**os.environ, "COLUMNS": "120", "TERM": "xterm"}, close_fds=True)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
            if waiting.exists() and "⏵ tty · iteration 1".encode() in seen:
                go.touch()  # handshake: the status line was drawn while the agent ran
            if proc.poll() is not None and not ready:
                break
    finally:
        go.touch()
        proc.wait(timeout=30)
        os.close(master)
    text = seen.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "[1 agent] agent waiting" in text
    assert "⏵ tty · iteration 1" in text and "agent" in text

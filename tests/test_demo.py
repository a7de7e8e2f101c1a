"""The README's first command: the demo loop runs on a fresh machine with no LLM and no server."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from gitrepo import drop_session_refs

from helpers import ROOT, ralph


def test_demo_loop_runs_to_its_promise(tmp_path: Path, isolated: Path) -> None:
    result = ralph("run", str(ROOT / "loops" / "demo.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("── iteration") == 3
    assert "all tests pass <promise>COMPLETE</promise>" in result.stdout
    sessions = json.loads(ralph("sessions", "--json").stdout)
    assert [s["status"] for s in sessions] == ["complete", "ok", "ok"]
    log = (isolated / "iterations.log").read_text().splitlines()
    assert log == [f"Running in session: Fix failing tests #{s['iteration']} ({s['id']})" for s in reversed(sessions)]
    assert not re.search(r"Running in session:  \(\)", "\n".join(log))
    _snapshots_of_a_git_checkout(sessions)


def _snapshots_of_a_git_checkout(sessions: list[dict[str, object]]) -> None:
    """In a git checkout (as CI's clone is) every demo session has its snapshots; they are dropped
    again so the test leaves no refs in the developer's repository."""
    import subprocess

    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True, text=True)
    if inside.stdout.strip() != "true":
        return
    assert all(s["git_before"] and s["git_after"] for s in sessions)
    drop_session_refs(ROOT, Path(os.environ["RALPH_STATE_DIR"]))


def test_python_dash_m_works() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "ralph", "--help"], capture_output=True, text=True, check=True)
    assert "run" in out.stdout and "sessions" in out.stdout

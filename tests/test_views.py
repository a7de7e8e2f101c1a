"""ralph sessions / show / logs over a real history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import ralph, write_loop


@pytest.fixture
def two_runs(tmp_path: Path, isolated: Path) -> dict:
    a = write_loop(tmp_path, """
        name: alpha
        title: "Alpha #{iteration}"
        agent: {command: "echo alpha-$RALPH_ITERATION; echo oops >&2"}
        steps: {after: [{name: post, run: "echo post-$RALPH_ITERATION"}]}
        until: {max_iterations: 2}
    """, "a.yaml")
    b = write_loop(tmp_path, """
        name: beta
        agent: {command: "exit 7"}
        until: {max_iterations: 1}
    """, "b.yaml")
    assert ralph("run", str(a)).returncode == 0
    assert ralph("run", str(b)).returncode == 1
    listing = json.loads(ralph("sessions", "--json").stdout)
    return {"sessions": listing}


def test_sessions_newest_first_with_filters(two_runs: dict) -> None:
    rows = two_runs["sessions"]
    assert [(r["loop"], r["iteration"]) for r in rows] == [("beta", 1), ("alpha", 2), ("alpha", 1)]
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]
    assert all(r["duration"] is not None for r in rows)
    alpha = json.loads(ralph("sessions", "--loop", "alpha", "--json").stdout)
    assert [r["title"] for r in alpha] == ["Alpha #2", "Alpha #1"]
    assert len(json.loads(ralph("sessions", "--limit", "1", "--json").stdout)) == 1
    run_id = alpha[0]["run_id"]
    by_run = json.loads(ralph("sessions", "--run", run_id[:12], "--json").stdout)
    assert {r["run_id"] for r in by_run} == {run_id}
    table = ralph("sessions")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["session", "title", "loop"]
    assert rows[0]["id"] in lines[1] and "failed" in lines[1]


def test_show_session_and_run(two_runs: dict) -> None:
    newest_alpha = two_runs["sessions"][1]
    out = ralph("show", newest_alpha["id"])
    assert out.returncode == 0, out.stderr
    assert f"session {newest_alpha['id']}  'Alpha #2'" in out.stdout
    assert "agent  agent: ok, exit 0" in out.stdout and "after  post: ok, exit 0" in out.stdout
    doc = json.loads(ralph("show", newest_alpha["id"][:14] + newest_alpha["id"][14:20], "--json").stdout)
    assert doc["kind"] == "session" and [s["name"] for s in doc["steps"]] == ["agent", "post"]
    assert doc["steps"][0]["exit_code"] == 0 and doc["steps"][0]["duration"] >= 0
    run = json.loads(ralph("show", newest_alpha["run_id"], "--json").stdout)
    assert run["kind"] == "run" and [s["iteration"] for s in run["sessions"]] == [1, 2]
    beta = json.loads(ralph("show", two_runs["sessions"][0]["id"], "--json").stdout)
    assert beta["status"] == "failed" and beta["steps"][0]["exit_code"] == 7


def test_show_unknown_or_ambiguous_id(two_runs: dict) -> None:
    missing = ralph("show", "ses_nope")
    assert missing.returncode == 2 and "no session or run" in missing.stderr
    ambiguous = ralph("show", "ses_")
    assert ambiguous.returncode == 2 and "more than one" in ambiguous.stderr


def test_logs_print_what_children_printed(two_runs: dict) -> None:
    sid = two_runs["sessions"][1]["id"]
    agent = ralph("logs", sid, "--step", "agent")
    assert agent.returncode == 0 and agent.stdout == "alpha-2\noops\n"
    both = ralph("logs", sid)
    assert both.stdout == "==> agent <==\nalpha-2\noops\n==> post <==\npost-2\n"
    assert ralph("logs", sid, "--step", "nope").returncode == 2


def test_sessions_with_no_history(tmp_path: Path, isolated: Path) -> None:
    result = ralph("sessions", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == []
    assert not isolated.exists()

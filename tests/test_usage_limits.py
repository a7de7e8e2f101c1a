"""Usage limits pause the loop, they do not fail it: with ``agent.usage_limit`` on the command preset,
through the real CLI (the presets' own signals are tested with the real CLIs in tests/agents/)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from handshake import db_rows, spans

from helpers import PY, ralph, write_loop, yaml_list
from ralph.limits import LimitHit, reset_time, resume_at

PROMISE = "<promise>COMPLETE</promise>"


def agent_hitting_the_limit_once(marker: Path, message: str) -> str:
    """First run: touch ``marker``, say ``message`` on stderr and fail; later runs: claim completion."""
    return (f"import os, sys, time, pathlib\n"
            f"m = pathlib.Path({str(marker)!r})\n"
            f"if not m.exists():\n"
            f"    m.touch(); print({message!r}.replace('NOW', str(int(time.time()))), file=sys.stderr); sys.exit(1)\n"
            f"print(os.environ['RALPH_SESSION_ID'], os.environ['RALPH_ATTEMPT'], '{PROMISE}')")


def test_reset_times_read_from_limit_messages() -> None:
    now = 1_767_000_000.0
    assert reset_time("Claude AI usage limit reached|1767003600", now) == 1767003600.0
    assert reset_time("usage limit reached|1767003600000", now) == 1767003600.0
    assert reset_time("429 Too Many Requests; retry-after: 30", now) == now + 30
    assert reset_time("You've hit your usage limit. Try again in 2 hours 5 minutes.", now) == now + 7500
    assert reset_time("rate limited, retry in 45s", now) == now + 45
    three_pm = reset_time("5-hour limit reached ∙ resets 3pm", now)
    assert three_pm is not None and time.localtime(three_pm)[3:6] == (15, 0, 0) and 0 < three_pm - now <= 86400
    assert reset_time("Try again at 3:15 PM.", now) is not None
    assert reset_time("usage limit reached", now) is None
    # Never past max_duration: the deadline is a monotonic time.
    hit = LimitHit("limit", now + 3600)
    assert resume_at(hit, 60, time.monotonic() + 5, now) <= now + 5
    assert resume_at(LimitHit("limit"), 60, None, now) == now + 60


def test_a_usage_limit_pauses_and_runs_the_same_iteration_again(tmp_path: Path, isolated: Path) -> None:
    agent = agent_hitting_the_limit_once(tmp_path / "limited", "Claude AI usage limit reached|NOW")
    loop = write_loop(tmp_path, f"""
        name: limited
        agent:
          command: {yaml_list([PY, "-c", agent])}
          usage_limit: {{pattern: "usage limit reached", wait: 1h}}
        until: {{max_iterations: 1, max_consecutive_failures: 1, output_contains: "{PROMISE}"}}
        """)
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stdout + result.stderr  # not a failure, not an iteration
    assert re.search(r"^\[1 agent\] paused until \d\d:\d\d:\d\d \(usage limit\)$", result.stdout, re.M), result.stdout
    (row,) = db_rows(isolated, "SELECT * FROM sessions")
    assert row["status"] == "complete"
    steps = db_rows(isolated, "SELECT attempt, exit_code FROM steps ORDER BY id")
    assert [(s["attempt"], s["exit_code"]) for s in steps] == [(1, 1), (2, 0)]
    assert f"{row['id']} 2 {PROMISE}" in result.stdout  # the same session, run again
    (iteration,) = [s for s in spans(isolated) if s["name"] == "ralph.iteration"]
    (event,) = [e for e in iteration.get("events", []) if e["name"] == "ralph.usage_limit"]
    attrs = {a["key"]: next(iter(a["value"].values())) for a in event["attributes"]}
    assert attrs["ralph.usage_limit.message"].startswith("Claude AI usage limit reached|")


def limited_loop(tmp_path: Path, until: str = "") -> Path:
    """An agent that always hits its usage limit, waiting an hour for it."""
    agent = "import sys; print('usage limit reached', file=sys.stderr); sys.exit(1)"
    return write_loop(tmp_path, f"""
        name: limited
        agent:
          command: {yaml_list([PY, "-c", agent])}
          usage_limit: {{pattern: "usage limit", wait: 1h}}
        """ + until)


def test_a_pause_never_outlasts_max_duration(tmp_path: Path, isolated: Path) -> None:
    loop = limited_loop(tmp_path, "until: {max_duration: 3s}\n")
    result = ralph("run", str(loop), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events].count("pause") == 1
    assert events[-1]["stop_reason"] == "max_duration"


def test_ctrl_c_during_a_pause_stops_at_once(tmp_path: Path, isolated: Path) -> None:
    loop = limited_loop(tmp_path)
    proc = subprocess.Popen([PY, "-m", "ralph", "run", str(loop), "--json"], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    assert proc.stdout is not None
    for line in proc.stdout:  # the handshake: ralph says it is paused
        if json.loads(line)["event"] == "pause":
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 130
    end = json.loads(rest.splitlines()[-1])
    assert end["event"] == "run.end" and end["stop_reason"] == "interrupted"
    assert db_rows(isolated, "SELECT stop_reason FROM runs") == [{"stop_reason": "interrupted"}]


@pytest.mark.slow
def test_in_a_batch_a_pause_holds_every_item(tmp_path: Path, isolated: Path) -> None:
    # Item a hits the limit (no reset time: wait 2s). Item b's first iteration ends only once ralph
    # has recorded that pause (its run log says so); b's next agent must not start before it ends.
    starts = tmp_path / "starts"
    agent = (f"import os, sys, time, pathlib\n"
             f"item, it = os.environ['RALPH_ITEM'], os.environ['RALPH_ITERATION']\n"
             f"log = pathlib.Path(os.environ['RALPH_STATE_DIR'], 'logs', os.environ['RALPH_RUN_ID'], 'ralph.jsonl')\n"
             f"with open({str(starts)!r}, 'a') as fh: fh.write(f'{{item}} {{it}} {{time.time()}}\\n')\n"
             f"if item == 'a' and os.environ['RALPH_ATTEMPT'] == '1':\n"
             f"    print('usage limit reached', file=sys.stderr); sys.exit(1)\n"
             f"if item == 'b' and it == '1':\n"
             f"    while 'paused: usage limit' not in (log.read_text() if log.exists() else ''): time.sleep(0.02)\n"
             f"    sys.exit(0)\n"
             f"print('{PROMISE}')")
    loop = write_loop(tmp_path, f"""
        name: shared-limit
        agent:
          command: {yaml_list([PY, "-c", agent])}
          usage_limit: {{pattern: "usage limit", wait: 2s}}
        until: {{max_iterations: 3, output_contains: "{PROMISE}"}}
        batch: {{items: [a, b], parallel: 2}}
        """)
    result = ralph("run", str(loop), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    (pause,) = [e for e in events if e["event"] == "pause"]
    assert pause["item"] == "a"
    started = {(item, it): float(at) for item, it, at in (line.split() for line in starts.read_text().splitlines())}
    assert started[("b", "2")] >= pause["until"] - 0.01  # held by a's pause
    statuses = {(r["item"], r["iteration"]): r["status"] for r in db_rows(isolated, "SELECT * FROM sessions")}
    assert statuses == {("a", 1): "complete", ("b", 1): "ok", ("b", 2): "complete"}

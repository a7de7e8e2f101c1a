"""Crash recovery: ``kill -9`` of a real ralph mid-iteration leaves an intact history; the next
``ralph run`` or ``ralph sessions`` marks the dead run ``abandoned`` and ends the child it left
behind; ``ralph run FILE --resume`` continues the newest unfinished run, numbering on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from handshake import PY, alive, db_rows, kill_group, wait_dead, wait_for

from helpers import ralph, write_loop, yaml_list

# Prints its iteration; on the iteration named in $BLOCK_AT (once: it leaves DIR/blocked behind)
# it writes its PID to DIR/agent.pid, touches DIR/ready and blocks until killed. Each run's env is
# dumped to DIR/env-<iteration>.json.
AGENT = [
    PY,
    "-c",
    (
        "import json, os, pathlib, signal\n"
        "d = pathlib.Path(os.environ['AGENT_DIR']); it = os.environ['RALPH_ITERATION']\n"
        "(d / f'env-{it}.json').write_text(json.dumps(dict(os.environ)))\n"
        "print(f'iteration {it}', flush=True)\n"
        "if it == os.environ.get('BLOCK_AT') and not (d / 'blocked').exists():\n"
        "    (d / 'blocked').touch(); (d / 'agent.pid').write_text(str(os.getpid())); (d / 'ready').touch()\n"
        "    while True: signal.pause()\n"
    ),
]


def loop_file(tmp_path: Path, block_at: int, max_iterations: int = 4, name: str = "steady") -> tuple[Path, Path]:
    folder = tmp_path / f"agent-{name}"
    folder.mkdir()
    loop = write_loop(
        tmp_path,
        f"""
        name: {name}
        env: {{AGENT_DIR: "{folder}", BLOCK_AT: "{block_at}"}}
        agent: {{command: {yaml_list(AGENT)}}}
        until: {{max_iterations: {max_iterations}}}
        """,
        name=f"{name}.yaml",
    )
    return loop, folder


def kill_ralph_mid_iteration(tmp_path: Path, loop: Path, folder: Path) -> int:
    """Start ralph, wait until the agent blocks, kill -9 ralph. Returns the orphaned agent's PID."""
    proc = subprocess.Popen(
        [PY, "-m", "ralph", "run", str(loop)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(folder / "ready")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return int((folder / "agent.pid").read_text())


def test_kill_9_leaves_an_intact_history_that_the_next_command_repairs(tmp_path: Path, isolated: Path) -> None:
    loop, folder = loop_file(tmp_path, block_at=2)
    agent = kill_ralph_mid_iteration(tmp_path, loop, folder)
    try:
        # ralph's child runs in its own process group: kill -9 of ralph did not reach it.
        assert alive(agent)
        assert db_rows(isolated, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
        (run,) = db_rows(isolated, "SELECT * FROM runs")
        assert run["status"] == "running"
        sessions = db_rows(isolated, "SELECT iteration, status FROM sessions ORDER BY iteration")
        assert sessions == [{"iteration": 1, "status": "ok"}, {"iteration": 2, "status": "running"}]
        running = db_rows(isolated, "SELECT pid FROM steps WHERE status = 'running'")
        assert running == [{"pid": agent}]

        listing = ralph("sessions", "--json")
        assert listing.returncode == 0, listing.stderr
        rows = json.loads(listing.stdout)
        assert [(r["iteration"], r["status"]) for r in rows] == [(2, "abandoned"), (1, "ok")]
        assert db_rows(isolated, "SELECT status FROM runs") == [{"status": "abandoned"}]
        assert db_rows(isolated, "SELECT status FROM steps WHERE pid = ?", (agent,)) == [{"status": "abandoned"}]
        # ... and the child the dead ralph left behind is ended, with a word on stderr.
        assert wait_dead(agent)
        assert f"ended process group {agent}" in listing.stderr
        assert db_rows(isolated, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    finally:
        kill_group(agent)


def test_the_next_ralph_run_marks_the_dead_run_abandoned(tmp_path: Path, isolated: Path) -> None:
    loop, folder = loop_file(tmp_path, block_at=1)
    agent = kill_ralph_mid_iteration(tmp_path, loop, folder)
    try:
        other, _ = loop_file(tmp_path, block_at=0, max_iterations=1, name="other")
        proc = ralph("run", str(other))
        assert proc.returncode == 0, proc.stderr
        assert wait_dead(agent)
        status = {r["loop"]: r["status"] for r in db_rows(isolated, "SELECT loop, status FROM runs")}
        assert status == {"steady": "abandoned", "other": "ok"}
        assert db_rows(isolated, "SELECT status FROM sessions WHERE loop = 'steady'") == [{"status": "abandoned"}]
    finally:
        kill_group(agent)


def test_a_dead_ralph_not_yet_reaped_is_dead(tmp_path: Path, isolated: Path) -> None:
    # Where nobody reaps (PID 1 here, or a parent that does not wait), a killed ralph stays a zombie.
    loop, folder = loop_file(tmp_path, block_at=1)
    proc = subprocess.Popen([PY, "-m", "ralph", "run", str(loop)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    agent = 0
    try:
        wait_for(folder / "ready")
        agent = int((folder / "agent.pid").read_text())
        os.kill(proc.pid, signal.SIGKILL)  # no wait(): it stays a zombie of this test
        assert wait_dead(proc.pid)
        listing = ralph("sessions", "--json")
        assert [r["status"] for r in json.loads(listing.stdout)] == ["abandoned"]
        assert wait_dead(agent)
    finally:
        proc.wait()
        if agent:
            kill_group(agent)


def test_a_live_run_is_not_marked_abandoned(tmp_path: Path, isolated: Path) -> None:
    loop, folder = loop_file(tmp_path, block_at=1)
    proc = subprocess.Popen(
        [PY, "-m", "ralph", "run", str(loop)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(folder / "ready")
        listing = ralph("sessions", "--json")
        assert [r["status"] for r in json.loads(listing.stdout)] == ["running"]
        assert alive(int((folder / "agent.pid").read_text()))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert db_rows(isolated, "SELECT status FROM runs") == [{"status": "interrupted"}]


def test_resume_continues_the_abandoned_run_numbering_on(tmp_path: Path, isolated: Path) -> None:
    loop, folder = loop_file(tmp_path, block_at=2, max_iterations=4)
    agent = kill_ralph_mid_iteration(tmp_path, loop, folder)
    try:
        (dead,) = db_rows(isolated, "SELECT id FROM runs")
        lost = db_rows(isolated, "SELECT id FROM sessions WHERE iteration = 2")[0]["id"]
        proc = ralph("run", str(loop), "--resume")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"resuming run {dead['id']}" in proc.stderr
        assert wait_dead(agent)  # the dead run's child did not keep working beside the resumed run
        runs = {r["id"]: r for r in db_rows(isolated, "SELECT * FROM runs")}
        (new_id,) = set(runs) - {dead["id"]}
        assert runs[dead["id"]]["status"] == "abandoned"
        assert (runs[new_id]["status"], runs[new_id]["resumed_from"]) == ("ok", dead["id"])
        sessions = db_rows(
            isolated,
            "SELECT id, iteration, previous_id, status FROM sessions WHERE run_id = ? ORDER BY iteration",
            (new_id,),
        )
        # Iteration 1 finished before the kill and counts; 2 was lost; 3, 4 and 5 make four finished.
        assert [s["iteration"] for s in sessions] == [3, 4, 5]
        assert sessions[0]["previous_id"] == lost
        assert [s["previous_id"] for s in sessions[1:]] == [s["id"] for s in sessions[:-1]]
        env = json.loads((folder / "env-3.json").read_text())
        assert (env["RALPH_ITERATION"], env["RALPH_RUN_ID"]) == ("3", new_id)

        # That run finished: nothing is left to resume, so --resume starts afresh.
        again = ralph("run", str(loop), "--resume", "--max-iterations", "1")
        assert again.returncode == 0
        assert "no unfinished run of loop steady to resume" in again.stderr
        assert db_rows(isolated, "SELECT iteration FROM sessions ORDER BY started DESC LIMIT 1") == [{"iteration": 1}]
    finally:
        kill_group(agent)


def test_resume_continues_an_interrupted_run(tmp_path: Path, isolated: Path) -> None:
    loop, folder = loop_file(tmp_path, block_at=2, max_iterations=3)
    proc = subprocess.Popen(
        [PY, "-m", "ralph", "run", str(loop)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(folder / "ready")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = ralph("run", str(loop), "--resume")
    assert first.returncode == 0, first.stdout + first.stderr
    rows = db_rows(isolated, "SELECT iteration, status FROM sessions ORDER BY iteration")
    assert rows == [
        {"iteration": 1, "status": "ok"},
        {"iteration": 2, "status": "interrupted"},
        {"iteration": 3, "status": "ok"},
        {"iteration": 4, "status": "ok"},
    ]


def test_kill_9_right_after_iterations_end_keeps_every_finished_one(tmp_path: Path, isolated: Path) -> None:
    # Rows are queued and committed together (issue 18): once a child is spawned, and at each iteration's
    # end. Iterations 1-5 end at once; the next agent's marker is the first moment after the 5th's end,
    # and kill -9 comes then: all five are in the history and the run log, each with its ended agent step.
    loop, folder = loop_file(tmp_path, block_at=6, max_iterations=8)
    agent = kill_ralph_mid_iteration(tmp_path, loop, folder)
    try:
        assert db_rows(isolated, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
        sessions = db_rows(isolated, "SELECT id, iteration, status, ended FROM sessions ORDER BY iteration")
        assert [(s["iteration"], s["status"]) for s in sessions] == [(n, "ok") for n in range(1, 6)] + [(6, "running")]
        assert all(s["ended"] for s in sessions[:5])
        steps = db_rows(isolated, "SELECT session_id, status, exit_code FROM steps ORDER BY id")
        assert [(s["status"], s["exit_code"]) for s in steps] == [("ok", 0)] * 5 + [("running", None)]
        assert [s["session_id"] for s in steps] == [s["id"] for s in sessions]
        assert db_rows(isolated, "SELECT pid FROM steps WHERE status = 'running'") == [{"pid": agent}]
        (run,) = db_rows(isolated, "SELECT id FROM runs")
        records = [json.loads(line) for line in (isolated / "logs" / run["id"] / "ralph.jsonl").read_text().splitlines()]
        ended = [r["iteration"] for r in records if r["message"] == "iteration ok"]
        assert ended == [1, 2, 3, 4, 5]
        # Each finished iteration has its log.
        for s in sessions[:5]:
            assert (isolated / "logs" / run["id"] / s["id"] / "agent.log").read_text() == f"iteration {s['iteration']}\n"
    finally:
        kill_group(agent)

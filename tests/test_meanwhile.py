"""Work that waits for a child to run (issue 18): done by the thread that spawned it, while it runs."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from helpers import PY, ralph, write_loop, yaml_list
from ralph import meanwhile, pids, process
from ralph.process import Request
from ralph.store import Store


def test_tasks_run_in_order_by_the_thread_that_left_them() -> None:
    done: list[str] = []
    meanwhile.later(lambda: done.append("a"))
    meanwhile.later(lambda: done.append("b"))
    other = threading.Thread(target=meanwhile.run_pending)  # another thread has nothing of ours to do
    other.start()
    other.join()
    assert done == []
    meanwhile.run_pending()
    assert done == ["a", "b"]
    meanwhile.run_pending()
    assert done == ["a", "b"]


@pytest.mark.parametrize("argv", [["/bin/true"], ["/no/such/program"]])
def test_a_spawn_does_the_waiting_work_before_it_opens_the_log(tmp_path: Path, argv: list[str]) -> None:
    # The work comes before the log is opened (so it may put the log's folder in place), also when the
    # program cannot be started (its error goes to that log).
    spare, folder = tmp_path / ".spare", tmp_path / "session"
    spare.mkdir()
    (spare / "marker").write_text("made ahead")
    outcome = process.run(Request(tuple(argv), tmp_path, dict(os.environ), log_path=folder / "agent.log"),
                          meanwhile=lambda: spare.rename(folder))
    assert (folder / "marker").read_text() == "made ahead"
    assert (folder / "agent.log").exists()
    assert outcome.ok == (argv == ["/bin/true"])


def test_the_previous_iteration_is_recorded_while_the_next_child_runs(tmp_path: Path, isolated: Path) -> None:
    """Iteration 1's spans, its end in the history and its run-log records are written while iteration
    2's agent runs: that agent looks for them (and gives up after a minute, failing the test). (Within
    0.25 s of the last export spans wait for a few more, as a fast loop's do: iteration 1 takes longer.)"""
    seen = tmp_path / "seen.json"
    code = f"""
import json, os, sqlite3, time
state, it = os.environ["RALPH_STATE_DIR"], os.environ["RALPH_ITERATION"]
if it == "1":
    time.sleep(0.3)
if it == "2":
    first = os.environ["RALPH_PREVIOUS_SESSION_ID"]
    runlog = os.path.join(state, "logs", os.environ["RALPH_RUN_ID"], "ralph.jsonl")
    found = {{}}
    for _ in range(6000):
        traces = open(os.path.join(state, "traces.jsonl")).read()
        found["span"] = '"stringValue":"' + first + '"' in traces and '"name":"ralph.iteration"' in traces
        db = sqlite3.connect(os.path.join(state, "ralph.db"))
        found["status"] = db.execute("SELECT status FROM sessions WHERE id = ?", (first,)).fetchone()[0]
        db.close()
        lines = [json.loads(l) for l in open(runlog)]
        found["runlog"] = any(l["message"] == "iteration ok" and l["session_id"] == first for l in lines)
        if found["span"] and found["status"] == "ok" and found["runlog"]:
            break
        time.sleep(0.01)
    open({str(seen)!r}, "w").write(json.dumps(found))
"""
    loop = write_loop(tmp_path, f"name: seen\nagent: {{command: {yaml_list([PY, '-c', code])}}}\n"
                                "until: {max_iterations: 3}\n")
    result = ralph("run", str(loop))
    assert result.returncode == 0, result.stderr
    assert json.loads(seen.read_text()) == {"span": True, "status": "ok", "runlog": True}


def test_a_flush_that_need_not_wait_leaves_its_rows_to_the_thread_committing(isolated: Path) -> None:
    """64 batch items spawning together: one thread commits, the others return at once and their rows go
    in the committing thread's next transaction."""
    store = Store(isolated)
    writer = store._writer
    assert writer is not None
    inside, release = threading.Event(), threading.Event()

    def slow(db: object) -> None:  # the first thread's commit, held open until the second has flushed
        inside.set()
        assert release.wait(30)

    writer.put(slow)
    first = threading.Thread(target=writer.flush)
    first.start()
    assert inside.wait(30)
    store.start_session(id="ses_x", run_id="run_x", loop="l", title="t", iteration=1)
    step = store.start_step(os.getpid(), pid_start=pids.boot_ticks(), session_id="ses_x", run_id="run_x",
                            name="agent", kind="agent", attempt=1)  # flushes without waiting
    assert not writer.idle  # returned while the first thread still commits
    release.set()
    first.join(30)
    assert writer.idle  # the first thread went on to commit what the second left
    assert store.step_id(step) > 0
    assert store.rows("SELECT id, status FROM sessions") == [{"id": "ses_x", "status": "running"}]
    store.close()

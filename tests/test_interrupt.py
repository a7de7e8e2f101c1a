"""SIGINT/SIGTERM to a real ``ralph run``: the first stops the current child's whole group (SIGINT,
SIGTERM, SIGKILL) and ends the run with 130/143; a second kills at once. What the child printed is
in the step log, spans are flushed and the session is recorded ``interrupted``."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from handshake import PY, alive, db_rows, signals_seen, spans, tree_script, wait_dead, wait_for, wait_for_text

from helpers import ralph, write_loop, yaml_list


def start_ralph(*args: str, cwd: Path) -> tuple[subprocess.Popen[bytes], Path]:
    out = cwd / "ralph.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen([PY, "-m", "ralph", *args], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    return proc, out


def tree_loop(tmp_path: Path, **extra: str) -> tuple[Path, Path]:
    folder = tmp_path / "agent"
    folder.mkdir()
    script = tree_script(tmp_path)
    lines = "\n".join(f"{k}: {v}" for k, v in extra.items())
    loop = write_loop(
        tmp_path,
        f"""
        name: stubborn
        title: "stubborn #{{iteration}}"
        agent:
          command: {yaml_list([PY, str(script), str(folder)])}
        until: {{max_iterations: 3}}
        """
        + lines,
    )
    return loop, folder


def span_names(state: Path) -> list[str]:
    return [s["name"] for s in spans(state)]


def interrupted_run(tmp_path: Path, state: Path, sig: int, presses: int) -> tuple[int, Path, str]:
    loop, folder = tree_loop(tmp_path)
    proc, out = start_ralph("run", str(loop), cwd=tmp_path)
    try:
        wait_for(folder / "ready")
        proc.send_signal(sig)
        if presses > 1:
            wait_for(folder / "signals")  # the first SIGINT reached the grandchild
            proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, folder, out.read_text()


def check_interrupted_records(state: Path, code: int) -> None:
    run = db_rows(state, "SELECT * FROM runs")[0]
    assert (run["status"], run["exit_code"]) == ("interrupted", code)
    session = db_rows(state, "SELECT * FROM sessions")[0]
    assert session["status"] == "interrupted" and session["iteration"] == 1
    (step,) = db_rows(state, "SELECT * FROM steps")
    assert (step["name"], step["status"], step["reason"]) == ("agent", "interrupted", "interrupted")
    # Only one iteration: the run ended instead of going on to the next.
    assert len(db_rows(state, "SELECT * FROM sessions")) == 1
    log = Path(step["log_path"]).read_text()
    assert "before the signal: printed and flushed" in log
    names = span_names(state)
    assert names.count("ralph.run") == 1 and names.count("ralph.iteration") == 1
    assert names.count("ralph.step") == 1
    records = [json.loads(line) for line in (state / "logs" / run["id"] / "ralph.jsonl").read_text().splitlines()]
    assert records[-1]["message"] == "run interrupted" and records[-1]["exit_code"] == code


def test_sigint_stops_the_whole_tree_and_ends_the_run_with_130(tmp_path: Path, isolated: Path) -> None:
    code, folder, out = interrupted_run(tmp_path, isolated, signal.SIGINT, 1)
    assert code == 130, out
    assert wait_dead(int((folder / "grandchild.pid").read_text()))
    assert not alive(int((folder / "child.pid").read_text()))
    # The grandchild ignores SIGINT and SIGTERM: it got both, in order, then SIGKILL ended it.
    assert signals_seen(folder) == ["SIGINT", "SIGTERM"]
    assert "interrupted" in out and "(exit 130)" in out
    check_interrupted_records(isolated, 130)


def test_sigterm_ends_the_run_with_143(tmp_path: Path, isolated: Path) -> None:
    code, folder, out = interrupted_run(tmp_path, isolated, signal.SIGTERM, 1)
    assert code == 143, out
    assert wait_dead(int((folder / "grandchild.pid").read_text()))
    assert signals_seen(folder) == ["SIGINT", "SIGTERM"]
    check_interrupted_records(isolated, 143)


def test_a_second_sigint_kills_at_once(tmp_path: Path, isolated: Path) -> None:
    code, folder, out = interrupted_run(tmp_path, isolated, signal.SIGINT, 2)
    assert code == 130, out
    assert wait_dead(int((folder / "grandchild.pid").read_text()))
    # SIGKILL came straight after the second press: the SIGTERM due a grace period later never did.
    assert signals_seen(folder) == ["SIGINT"]
    check_interrupted_records(isolated, 130)


def test_an_interrupt_during_the_backoff_wait_ends_the_run_promptly(tmp_path: Path, isolated: Path) -> None:
    # A ten-minute backoff: only the interrupt cutting the wait short lets this test end.
    loop = write_loop(
        tmp_path,
        f"""
        name: backoff
        agent:
          command: {yaml_list([PY, "-c", "import sys; print('busy, try later', flush=True); sys.exit(75)"])}
          retry: {{attempts: 3, backoff: 10m, max_backoff: 10m, on_exit_codes: [75]}}
        """,
    )
    proc, out = start_ralph("run", str(loop), cwd=tmp_path)
    try:
        wait_for_text(out, "retrying in")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130
    steps = db_rows(isolated, "SELECT attempt, status FROM steps ORDER BY id")
    assert steps == [{"attempt": 1, "status": "failed"}]
    assert db_rows(isolated, "SELECT status FROM sessions") == [{"status": "interrupted"}]


def test_timeouts_end_the_tree_and_are_recorded_as_timeout(tmp_path: Path, isolated: Path) -> None:
    loop, folder = tree_loop(tmp_path)
    text = loop.read_text().replace("until:", "  timeout: 1s\nuntil:").replace("max_iterations: 3", "max_iterations: 1")
    loop.write_text(text)
    proc = ralph("run", str(loop), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert wait_dead(int((folder / "grandchild.pid").read_text()))
    assert signals_seen(folder) == ["SIGINT", "SIGTERM"]
    (step,) = db_rows(isolated, "SELECT * FROM steps")
    assert (step["status"], step["reason"], step["exit_code"]) == ("timeout", "timeout", 130)
    assert "before the signal" in Path(step["log_path"]).read_text()
    assert db_rows(isolated, "SELECT status FROM sessions") == [{"status": "timeout"}]
    assert "timeout" in proc.stdout


def test_idle_timeout_is_recorded_as_timeout(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(
        tmp_path,
        f"""
        name: hung
        agent:
          command: {yaml_list([PY, "-c", "import time; print('thinking', flush=True); time.sleep(600)"])}
          idle_timeout: 1s
        until: {{max_iterations: 1}}
        """,
    )
    proc = ralph("run", str(loop), cwd=tmp_path)
    assert proc.returncode == 1
    (step,) = db_rows(isolated, "SELECT * FROM steps")
    assert (step["status"], step["reason"]) == ("timeout", "idle timeout")
    assert "thinking" in Path(step["log_path"]).read_text()


def test_sighup_ends_the_run_like_sigterm_but_not_under_nohup(tmp_path: Path, isolated: Path) -> None:
    code, folder, out = interrupted_run(tmp_path, isolated, signal.SIGHUP, 1)
    assert code == 129, out
    assert wait_dead(int((folder / "grandchild.pid").read_text()))
    check_interrupted_records(isolated, 129)


def test_under_nohup_a_hangup_is_ignored(tmp_path: Path, isolated: Path) -> None:
    loop, folder = tree_loop(tmp_path)
    with open(tmp_path / "ralph.out", "wb") as fh:
        proc = subprocess.Popen([PY, "-m", "ralph", "run", str(loop)], cwd=tmp_path, stdout=fh,
                                stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        wait_for(folder / "ready")
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGINT)  # an ignored signal is dropped when sent: only this one counts
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert signals_seen(folder) == ["SIGINT", "SIGTERM"]


def test_an_interrupt_stops_every_parallel_item(tmp_path: Path, isolated: Path) -> None:
    script = tree_script(tmp_path)
    folders = [tmp_path / f"agent-{n}" for n in range(3)]
    for folder in folders:
        folder.mkdir()
    loop = write_loop(tmp_path, f"""
        name: fleet
        env: {{BASE: "{tmp_path}"}}
        agent:
          command: ["/bin/sh", "-c", 'exec "$0" "$1" "$BASE/agent-$RALPH_ITEM"', "{PY}", "{script}"]
        until: {{max_iterations: 3}}
        batch: {{items: ["0", "1", "2"], parallel: 3}}
        """)
    proc, out = start_ralph("run", str(loop), cwd=tmp_path)
    try:
        for folder in folders:
            wait_for(folder / "ready")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130, out.read_text()
    for folder in folders:
        assert wait_dead(int((folder / "grandchild.pid").read_text()))
        assert signals_seen(folder) == ["SIGINT", "SIGTERM"]
    assert db_rows(isolated, "SELECT DISTINCT status FROM sessions") == [{"status": "interrupted"}]
    assert len(db_rows(isolated, "SELECT id FROM sessions")) == 3


def test_a_signal_during_a_cancellable_wait_never_deadlocks(tmp_path: Path) -> None:
    # The handler runs in the main thread between two bytecodes, which may be inside the token's own
    # wait: it must take no lock that wait holds (a threading.Event's did: a Ctrl-C arriving as a
    # usage-limit pause began hung ralph). The child makes that moment certain: any Condition.wait
    # (what Event.wait runs, holding the Event's lock) first signals the process itself.
    ready = tmp_path / "ready"
    code = (
        "import os, pathlib, signal, threading\n"
        "from ralph.interrupt import handle_signals\n"
        "original = threading.Condition.wait\n"
        "def wait(self, timeout=None):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    return original(self, timeout)\n"
        "threading.Condition.wait = wait\n"
        "with handle_signals() as token:\n"
        f"    pathlib.Path({str(ready)!r}).write_text('x')\n"
        "    token.wait(30)\n"
        "    print('stopped', token.signum, token.cancelled)\n"
    )
    child = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    wait_for(ready)
    child.send_signal(signal.SIGINT)  # what wakes a wait that takes no lock
    try:
        out, _ = child.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise AssertionError("the signal handler deadlocked inside the token's wait") from None
    assert out.strip() == f"stopped {int(signal.SIGINT)} True"

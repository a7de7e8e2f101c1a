"""One error path: config errors exit 2 (PATH:LINE:COL, nothing runs), runtime failures exit 1, and an
unexpected exception prints one line and leaves its traceback in ralph-crash.log (exit 3)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from handshake import db_rows

from helpers import PY, ralph, write_loop, yaml_list


def quick_loop(tmp_path: Path, iterations: int = 2) -> Path:
    return write_loop(tmp_path, f"""
        name: quick
        agent: {{command: {yaml_list([PY, "-c", "print('hi')"])}}}
        until: {{max_iterations: {iterations}}}
        """)


def test_a_config_error_exits_2_with_its_position_and_nothing_runs(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(tmp_path, """
        name: bad
        agent:
          command: [touch, ran]
          timeout: soon
        """)
    for command in ("run", "validate"):
        proc = ralph(command, str(loop), cwd=tmp_path)
        assert proc.returncode == 2
        assert re.fullmatch(rf"{re.escape(str(loop))}:4:3: agent\.timeout: .*duration.*\n", proc.stderr), proc.stderr
    assert not (tmp_path / "ran").exists()
    assert not isolated.exists()  # not even the state folder


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    loop = quick_loop(tmp_path)
    proc = ralph("run", str(loop), "--item", "x", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ralph: ") and len(proc.stderr.splitlines()) == 1


def test_a_failing_loop_exits_1(tmp_path: Path) -> None:
    loop = write_loop(tmp_path, """
        name: failing
        agent: {command: "exit 4"}
        until: {max_iterations: 2}
        """)
    proc = ralph("run", str(loop), cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr


def test_a_corrupt_history_is_a_runtime_failure(tmp_path: Path, isolated: Path) -> None:
    loop = quick_loop(tmp_path)
    isolated.mkdir(mode=0o700)
    (isolated / "ralph.db").write_bytes(b"\x00garbage" * 1000)
    for args in (("run", str(loop)), ("sessions",)):
        proc = ralph(*args, cwd=tmp_path)
        assert proc.returncode == 1
        assert proc.stderr == f"ralph: cannot use the history {isolated / 'ralph.db'}: file is not a database\n"
    assert not (isolated / "ralph-crash.log").exists()


def corrupt_iterations(state: Path) -> None:
    """A history whose rows break ralph's own assumptions: the kind of bug that should never happen."""
    db = sqlite3.connect(state / "ralph.db")
    db.execute("UPDATE sessions SET iteration = 'seven', started = 'yesterday'")
    db.execute("UPDATE runs SET status = 'interrupted'")
    db.commit()
    db.close()


def check_crash(proc_stderr: str, state: Path, error: str) -> None:
    crash = state / "ralph-crash.log"
    lines = [line for line in proc_stderr.splitlines() if not line.startswith("ralph: warning: ")]
    assert len(lines) == 1, proc_stderr
    assert lines[0].startswith(f"ralph: internal error: {error}"), proc_stderr
    assert lines[0].endswith(f"(traceback in {crash})"), proc_stderr
    text = crash.read_text()
    assert "Traceback (most recent call last)" in text and error in text
    assert oct(crash.stat().st_mode & 0o777) == oct(0o600)


def test_an_internal_error_in_run_exits_3_with_a_crash_log(tmp_path: Path, isolated: Path) -> None:
    loop = quick_loop(tmp_path, iterations=1)
    assert ralph("run", str(loop), cwd=tmp_path).returncode == 0
    corrupt_iterations(isolated)
    proc = ralph("run", str(loop), "--resume", cwd=tmp_path)
    assert proc.returncode == 3
    check_crash(proc.stderr, isolated, "TypeError")
    # The run that crashed is recorded as such, not left running.
    newest = db_rows(isolated, "SELECT status, exit_code FROM runs ORDER BY started DESC LIMIT 1")
    assert newest == [{"status": "error", "exit_code": 3}]


def test_an_internal_error_in_a_view_exits_3_with_a_crash_log(tmp_path: Path, isolated: Path) -> None:
    loop = quick_loop(tmp_path, iterations=1)
    assert ralph("run", str(loop), cwd=tmp_path).returncode == 0
    corrupt_iterations(isolated)
    proc = ralph("sessions", cwd=tmp_path)
    assert proc.returncode == 3
    check_crash(proc.stderr, isolated, "TypeError")

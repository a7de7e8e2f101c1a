"""``ralph logs SESSION --follow`` against a real running ralph, paced by marker files."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from helpers import PY, ralph, write_loop, yaml_list


def wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    """A marker-file handshake: wait until a child says it got there (or the run died)."""
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, "the run ended early"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


class Reader:
    """What a follower has printed so far, read without blocking past a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc, self.fd, self.text = proc, proc.stdout.fileno(), b""

    def until(self, needle: bytes) -> bytes:
        deadline = time.monotonic() + 60
        while needle not in self.text and time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.1)[0]:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                self.text += chunk
        assert needle in self.text, self.text
        return self.text

    def rest(self) -> bytes:
        while chunk := os.read(self.fd, 65536):
            self.text += chunk
        return self.text


def test_follow_tails_a_running_session_until_it_ends(tmp_path: Path, isolated: Path) -> None:
    m = tmp_path / "markers"
    m.mkdir()
    # Each child says where it is with a marker file and waits for the test's go-ahead.
    waiter = (
        "import os, pathlib, sys, time; m = pathlib.Path(sys.argv[1]); "
        "print(sys.argv[2] + ' one', flush=True); (m / (sys.argv[2] + '.started')).touch()\n"
        "while not (m / (sys.argv[2] + '.go')).exists(): time.sleep(0.01)\n"
        "print(sys.argv[2] + ' two', flush=True)"
    )
    session_file = tmp_path / "session"
    loop = write_loop(
        tmp_path,
        f"""
        name: followed
        agent: {{command: {yaml_list([PY, "-c", waiter, str(m), "agent"])}}}
        steps:
          before:
            - {{name: prep, run: 'echo "$RALPH_SESSION_ID" > {session_file}; echo prep done'}}
          after:
            - {{name: report, run: {yaml_list([PY, "-c", waiter, str(m), "report"])}}}
        until: {{max_iterations: 1}}
    """,
    )
    run = subprocess.Popen([PY, "-m", "ralph", "run", str(loop)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    followers: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(m / "agent.started", run)
        sid = session_file.read_text().strip()
        everything = subprocess.Popen([PY, "-m", "ralph", "logs", sid[:20], "--follow"], stdout=subprocess.PIPE)
        only_report = subprocess.Popen(
            [PY, "-m", "ralph", "logs", sid, "-f", "--step", "report"], stdout=subprocess.PIPE
        )
        followers = [everything, only_report]
        all_out, report_out = Reader(everything), Reader(only_report)
        all_out.until(b"agent one\n")  # what was there already, while the session still runs
        (m / "agent.go").touch()
        all_out.until(b"report one\n")  # a step that started after the follower did
        report_out.until(b"report one\n")  # a named step that had not started when it began
        assert everything.poll() is None and only_report.poll() is None  # still following
        (m / "report.go").touch()
        assert run.wait(timeout=60) == 0
        assert everything.wait(timeout=60) == 0 and only_report.wait(timeout=60) == 0
        assert all_out.rest() == (
            b"==> prep <==\nprep done\n==> agent <==\nagent one\nagent two\n==> report <==\nreport one\nreport two\n"
        )
        assert report_out.rest() == b"report one\nreport two\n"
    finally:
        for marker in ("agent.go", "report.go"):
            (m / marker).touch()
        for proc in [run, *followers]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()


def test_follow_of_an_ended_session_prints_it_and_returns(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(
        tmp_path,
        """
        name: done
        agent: {command: 'echo finished; echo "no newline" | tr -d "\\n"'}
        until: {max_iterations: 1}
    """,
    )
    assert ralph("run", str(loop)).returncode == 0
    sid = ralph("sessions", "--json").stdout.split('"id": "')[1].split('"')[0]
    result = ralph("logs", sid, "--follow")
    assert result.returncode == 0
    assert result.stdout == "==> agent <==\nfinished\nno newline"
    assert ralph("logs", "ses_nope", "--follow").returncode == 2


def test_follow_stops_when_the_run_died(tmp_path: Path, isolated: Path) -> None:
    # A ralph killed with SIGKILL leaves its session `running`; the follower must not wait forever.
    m = tmp_path / "started"
    agent = (
        "import os, pathlib, sys, time; "
        "t = pathlib.Path(sys.argv[1] + '.tmp'); t.write_text(f\"{os.environ['RALPH_SESSION_ID']} {os.getpid()}\"); "
        "os.replace(t, sys.argv[1]); "  # atomic: the test never reads a half-written marker
        "print('alive', flush=True); time.sleep(600)"
    )
    loop = write_loop(
        tmp_path,
        f"""
        name: dies
        agent: {{command: {yaml_list([PY, "-c", agent, str(m)])}}}
        until: {{max_iterations: 1}}
    """,
    )
    run = subprocess.Popen([PY, "-m", "ralph", "run", str(loop)], stdout=subprocess.DEVNULL)
    follower = None
    agent_pid = None
    try:
        wait_for(m, run)
        sid, pid = m.read_text().split()
        agent_pid = int(pid)
        follower = subprocess.Popen(
            [PY, "-m", "ralph", "logs", sid, "--follow"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        Reader(follower).until(b"alive\n")
        run.kill()
        run.wait()
        assert follower.wait(timeout=60) == 0
    finally:
        for proc in [run, follower]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if follower is not None and follower.stdout:
            follower.stdout.close()
        if agent_pid is not None:  # SIGKILL cannot be passed on: the agent's own group may outlive ralph
            with contextlib.suppress(OSError):
                os.killpg(agent_pid, signal.SIGKILL)

"""process.run with real process trees: timeouts, idle timeouts and interrupts end the whole group,
grandchildren that ignore SIGINT and SIGTERM included; output printed before is kept."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from handshake import PY, alive, signals_seen, tree_script, wait_dead, wait_for

from ralph import pids, process
from ralph.errors import StateError
from ralph.interrupt import CancelToken
from ralph.pids import GRACE, end_leftover_group, process_start
from ralph.process import Outcome, Request


def request(tmp_path: Path, argv: list[str], **kw: object) -> Request:
    return Request(tuple(argv), tmp_path, dict(os.environ), log_path=tmp_path / "logs" / "step.log", **kw)  # type: ignore[arg-type]


def grandchild(tmp_path: Path) -> int:
    return int((tmp_path / "grandchild.pid").read_text())


def test_the_grace_between_signals_is_a_few_seconds_at_most() -> None:
    # SIGINT -> SIGTERM -> SIGKILL takes 2 * grace end to end.
    assert 0 < GRACE <= 2.5
    assert Request(("true",), Path("."), {}).grace == GRACE


def test_timeout_ends_the_whole_group_and_keeps_the_output(tmp_path: Path) -> None:
    script = tree_script(tmp_path)
    seen: list[bytes] = []
    outcome = process.run(request(tmp_path, [PY, str(script), str(tmp_path)], timeout=1.0, grace=0.2), seen.append)
    assert outcome.status == "timeout" and outcome.reason == "timeout"
    assert not alive(int((tmp_path / "child.pid").read_text()))
    assert wait_dead(grandchild(tmp_path))
    # The grandchild ignored the polite signals, in order; only SIGKILL ended it.
    assert signals_seen(tmp_path) == ["SIGINT", "SIGTERM"]
    log = (tmp_path / "logs" / "step.log").read_text()
    assert "before the signal: printed and flushed" in log
    assert b"before the signal" in b"".join(seen)


def test_idle_timeout_ends_a_silent_tree_whose_grandchild_left_the_pipe(tmp_path: Path) -> None:
    script = tree_script(tmp_path)
    outcome = process.run(request(tmp_path, [PY, str(script), str(tmp_path), "detach"], idle_timeout=0.5, grace=0.2))
    assert outcome.status == "timeout" and outcome.reason == "idle timeout"
    assert wait_dead(grandchild(tmp_path))
    assert "SIGTERM" in signals_seen(tmp_path)
    assert "before the signal" in (tmp_path / "logs" / "step.log").read_text()


def test_a_deadline_is_a_timeout(tmp_path: Path) -> None:
    import time

    outcome = process.run(
        request(tmp_path, [PY, "-c", "import time; time.sleep(600)"], deadline=time.monotonic() + 0.3, grace=0.2)
    )
    assert outcome.status == "timeout"


def interrupted_tree(tmp_path: Path, presses: int, grace: float) -> Outcome:
    """Run the tree script and press Ctrl-C ``presses`` times, the first once it is ready, the second
    once its grandchild has seen the first."""
    token = CancelToken()

    def press() -> None:
        wait_for(tmp_path / "ready")
        token.trigger(2)
        if presses > 1:
            wait_for(tmp_path / "signals")  # the grandchild got the first SIGINT
            token.trigger(2)

    thread = threading.Thread(target=press)
    thread.start()
    try:
        return process.run(request(tmp_path, [PY, str(tree_script(tmp_path)), str(tmp_path)], grace=grace),
                           cancel=token)
    finally:
        thread.join()
        token.close()


def test_an_interrupt_escalates_sigint_sigterm_sigkill_to_the_group(tmp_path: Path) -> None:
    outcome = interrupted_tree(tmp_path, presses=1, grace=0.2)
    assert outcome.status == "interrupted" and outcome.reason == "interrupted"
    assert wait_dead(grandchild(tmp_path))
    assert signals_seen(tmp_path) == ["SIGINT", "SIGTERM"]
    assert "before the signal" in (tmp_path / "logs" / "step.log").read_text()


def test_a_second_interrupt_kills_at_once(tmp_path: Path) -> None:
    # With a grace of ten minutes, only the second press can end this test: SIGKILL without SIGTERM.
    outcome = interrupted_tree(tmp_path, presses=2, grace=600)
    assert outcome.status == "interrupted"
    assert wait_dead(grandchild(tmp_path))
    assert signals_seen(tmp_path) == ["SIGINT"]


def test_a_background_job_left_in_the_group_is_ended(tmp_path: Path) -> None:
    # The child exits at once; its background job ignores SIGTERM and writes nowhere we read.
    script = tree_script(tmp_path)
    code = (
        f"import subprocess, sys; subprocess.Popen([sys.executable, {str(script)!r}, {str(tmp_path)!r}, "
        "'grandchild'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"import pathlib\nwhile not pathlib.Path({str(tmp_path / 'grandchild.ready')!r}).exists(): pass"
    )
    outcome = process.run(request(tmp_path, [PY, "-c", code], grace=0.2))
    assert outcome.status == "ok"
    assert wait_dead(grandchild(tmp_path))
    assert signals_seen(tmp_path) == ["SIGTERM"]


def test_a_background_job_holding_the_pipe_does_not_hang_the_step(tmp_path: Path) -> None:
    outcome = process.run(request(tmp_path, ["/bin/sh", "-c", "echo started; sleep 600 & exit 0"], grace=0.2))
    assert outcome.status == "ok" and outcome.exit_code == 0
    assert "started" in (tmp_path / "logs" / "step.log").read_text()


def _spy_on_pidfds(monkeypatch: pytest.MonkeyPatch, then: Callable[[], object] | None = None) -> list[int]:
    opened: list[int] = []
    real = os.pidfd_open

    def pidfd_open(pid: int, flags: int = 0) -> int:
        opened.append(pid)
        if then is not None:
            then()
        return real(pid, flags)

    monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    return opened


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd on this platform")
def test_a_child_still_running_after_a_moment_gets_a_pidfd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A longer child's exit is watched apart from its pipe, so that one whose background job keeps the pipe
    # open is still seen to end (and its job ended) once it exits.
    opened = _spy_on_pidfds(monkeypatch)
    marker = tmp_path / "past-the-moment"
    code = (f"import os, pathlib, subprocess, time; time.sleep({process.PIDFD_AFTER} * 3); "
            f"pathlib.Path({str(marker)!r}).touch(); subprocess.Popen(['sleep', '600'])")
    outcome = process.run(request(tmp_path, [PY, "-c", code], grace=0.2))
    assert outcome.status == "ok" and marker.exists()
    assert opened == [outcome.pid]


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd on this platform")
def test_a_child_that_closed_its_output_is_watched_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its pipe ends before it does (as every child's does for a moment while it exits): its exit is watched
    # from then on, not from the pidfd's usual moment (made a minute here). The child ends once it is.
    monkeypatch.setattr(process, "PIDFD_AFTER", 60.0)
    go = tmp_path / "go"
    opened = _spy_on_pidfds(monkeypatch, then=go.touch)
    script = f"echo bye; exec >&- 2>&-; while [ ! -e '{go}' ]; do sleep 0.01; done"
    outcome = process.run(request(tmp_path, ["/bin/sh", "-c", script]))
    assert outcome.ok and opened == [outcome.pid]
    assert outcome.duration < 30  # not the minute
    assert (tmp_path / "logs" / "step.log").read_text() == "bye\n"


def test_stdin_is_delivered_and_a_child_that_does_not_read_it_does_not_hang(tmp_path: Path) -> None:
    big = b"x" * (4 << 20)
    outcome = process.run(
        Request(
            (PY, "-c", "import sys; sys.stdout.write(str(len(sys.stdin.buffer.read())))"),
            tmp_path,
            dict(os.environ),
            big,
            log_path=tmp_path / "a.log",
        )
    )
    assert outcome.ok and (tmp_path / "a.log").read_text() == str(len(big))
    outcome = process.run(Request(("/bin/true",), tmp_path, dict(os.environ), big))
    assert outcome.ok


def test_exit_codes_and_signals_are_reported(tmp_path: Path) -> None:
    assert process.run(Request(("/bin/sh", "-c", "exit 7"), tmp_path, {})).exit_code == 7
    killed = process.run(Request(("/bin/sh", "-c", "kill -9 $$"), tmp_path, {}))
    assert (killed.status, killed.exit_code, killed.signal) == ("failed", 137, 9)


def test_a_missing_workdir_is_a_clear_error(tmp_path: Path) -> None:
    seen: list[bytes] = []
    outcome = process.run(Request(("/bin/true",), tmp_path / "gone", {}, log_path=tmp_path / "x.log"), seen.append)
    assert outcome.status == "error"
    assert outcome.reason == f"the working folder {tmp_path / 'gone'} does not exist"
    assert outcome.reason in (tmp_path / "x.log").read_text()


def test_a_log_that_cannot_be_written_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="cannot write"):
        process.run(Request(("/bin/true",), tmp_path, {}, log_path=tmp_path / "file" / "x.log"))


def test_a_child_whose_start_cannot_be_recorded_does_not_run_on(tmp_path: Path) -> None:
    """on_start records the PID for crash recovery; if that fails (a full disk), the child is ended
    before the error goes up: nothing may run that the history does not know of."""
    pids: list[int] = []

    def unrecordable(pid: int, born: str) -> None:
        pids.append(pid)
        raise StateError("cannot write the history: disk full")

    with pytest.raises(StateError, match="disk full"):
        process.run(request(tmp_path, [PY, "-c", "import time; time.sleep(60)"]), on_start=unrecordable)
    assert pids and not alive(pids[0])


def test_the_start_time_taken_at_the_spawn_is_the_one_proc_gives(tmp_path: Path) -> None:
    """ralph records a child's start time from the clock at the spawn, not from /proc (reading it
    waits while the child is still exec'ing): the two must agree, so recovery finds the child again."""
    seen: list[tuple[int, str, str | None]] = []

    def started(pid: int, born: str) -> None:
        (tmp_path / "go").write_text("")
        wait_for(tmp_path / "running")
        seen.append((pid, born, process_start(pid)))

    script = f"import pathlib, time; p = pathlib.Path({str(tmp_path)!r}); (p / 'running').touch()\n" \
             "while not (p / 'go').exists(): time.sleep(0.01)"
    assert process.run(request(tmp_path, [PY, "-c", script]), on_start=started).ok
    ((_pid, born, actual),) = seen
    assert actual is not None and pids.same_start(born, actual)
    assert int(born) <= int(actual)  # taken just before the fork, on the clock /proc counts in
    assert not pids.same_start(born, str(int(actual) + 5 * os.sysconf("SC_CLK_TCK")))


def test_log_folders_are_private(tmp_path: Path) -> None:
    log = tmp_path / "a" / "b" / "c.log"
    process.run(Request(("/bin/true",), tmp_path, {}, log_path=log))
    assert oct(log.stat().st_mode & 0o777) == oct(0o600)
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        assert oct(folder.stat().st_mode & 0o777) == oct(0o700)


def test_end_leftover_group_ends_only_the_recorded_group(tmp_path: Path) -> None:
    script = tree_script(tmp_path)
    proc = subprocess.Popen([PY, str(script), str(tmp_path)], start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        wait_for(tmp_path / "ready")
        start = process_start(proc.pid)
        assert start is not None
        # A start time seconds away: the PID was recycled, so it is not ours to end.
        assert not end_leftover_group(proc.pid, str(int(start) + 5 * os.sysconf("SC_CLK_TCK")), grace=0.2)
        assert alive(proc.pid)
        assert end_leftover_group(proc.pid, start, grace=0.2)
        proc.wait()
        assert wait_dead(grandchild(tmp_path))
        assert not end_leftover_group(proc.pid, start, grace=0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


def _tool(folder: Path, says: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tool").write_text(f"#!/bin/sh\necho {says}\n")
    (folder / "tool").chmod(0o755)


def _said(cwd: Path, env: dict[str, str]) -> tuple[int, bytes]:
    seen: list[bytes] = []
    outcome = process.run(Request(("tool",), cwd, env), seen.append)
    return outcome.exit_code, b"".join(seen)


def test_a_command_is_found_on_the_childs_path_and_found_again_once_it_moved(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _tool(second, "second")
    env = {"PATH": f"{first}:{second}:/usr/bin:/bin"}
    assert _said(tmp_path, env) == (0, b"second\n")
    # Moved to an earlier folder of PATH after ralph found it (an upgrade): looked up again.
    (second / "tool").unlink()
    _tool(first, "first")
    assert _said(tmp_path, env) == (0, b"first\n")
    # Another PATH in the child's env is another lookup; where it is not, the child's usual 127.
    assert _said(tmp_path, {"PATH": f"{second}:/usr/bin"})[0] == 127


def test_a_relative_folder_of_path_is_the_childs_own(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _tool(work / "bin", "from the workdir")
    assert _said(work, {"PATH": "bin:/usr/bin:/bin"}) == (0, b"from the workdir\n")


def test_a_child_reading_stdin_reads_nothing(tmp_path: Path) -> None:
    seen: list[bytes] = []
    for _ in range(2):  # the same /dev/null serves every child
        outcome = process.run(Request(("/bin/sh", "-c", "cat; echo read-all"), tmp_path, {}, timeout=10), seen.append)
        assert outcome.ok
    assert b"".join(seen) == b"read-all\nread-all\n"

"""Every test keeps its state in its own tmp_path, starts with no inherited session or OTel env, and
must leave no process behind: each test's children carry a marker variable, and any live process
still carrying it after the test fails that test (and is killed).

Long-lived servers started by fixtures (Phoenix, the scripted LLM) must drop ``RALPH_TEST_MARK``
from their env, or be stopped before the test ends."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

SCRUBBED_PREFIXES = ("OPENCODE_SESSION", "OTEL_")
SCRUBBED = {
    "RALPH_SESSION_ID", "RALPH_SESSION_TITLE", "RALPH_RUN_ID", "RALPH_LOOP", "RALPH_ITERATION",
    "RALPH_ATTEMPT", "RALPH_STEP", "RALPH_ITEM", "RALPH_STATE_DIR", "TRACEPARENT", "TRACESTATE",
    "RALPH_SESSION_LOG", "RALPH_DATABASE_URL", "RALPH_DATABASE_RETRY", "RALPH_FEEDBACK", "RALPH_PREVIOUS_SESSION_ID",
}


def _processes_with(marker: str) -> list[int]:
    found = []
    needle = f"RALPH_TEST_MARK={marker}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
            if stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X"):
                continue
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """Returns the state folder this test uses ($RALPH_STATE_DIR)."""
    for name in list(os.environ):
        if name in SCRUBBED or name.startswith(SCRUBBED_PREFIXES):
            monkeypatch.delenv(name)
    state = tmp_path / "state"
    monkeypatch.setenv("RALPH_STATE_DIR", str(state))
    marker = uuid.uuid4().hex
    monkeypatch.setenv("RALPH_TEST_MARK", marker)
    monkeypatch.chdir(tmp_path)
    yield state
    survivors = _processes_with(marker)
    for _ in range(50):  # a child that was just killed may take a moment to go
        if not survivors:
            break
        time.sleep(0.05)
        survivors = _processes_with(marker)
    for pid in survivors:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if survivors and not request.node.get_closest_marker("allow_survivors"):
        pytest.fail(f"processes of this test survived it: {survivors}")


@pytest.fixture(scope="session")
def postgres_server():  # type: ignore[no-untyped-def]
    """One throwaway PostgreSQL for the whole session (tests/support/postgres.py)."""
    from tests.support.postgres import running_server

    with running_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server) -> str:  # type: ignore[no-untyped-def]
    """A private, empty PostgreSQL history for one test."""
    return str(postgres_server.database())

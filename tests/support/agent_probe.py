"""What an agent's shell tool sees, for tests of the agent presets with real agent CLIs.

As a script, run by the agent's shell tool (``python agent_probe.py AGENT_EXECUTABLE``), it prints
one line ``RALPH-PROBE {json}``: the session variables in its own env, and the argv and session
variables of the agent process above it (the nearest ancestor running AGENT_EXECUTABLE). The line
travels back in the agent's JSON events, so :func:`probes` finds it in the raw step log. With
``--kill`` after the executable it then SIGKILLs that agent process: an agent dying mid-attempt.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

MARK = "RALPH-PROBE "
PROBE = Path(__file__).resolve()
KEYS = ("OPENCODE_SESSION_ID", "OPENCODE_SESSION_TITLE", "RALPH_SESSION_ID", "RALPH_SESSION_TITLE", "RALPH_RUN_ID",
        "RALPH_LOOP", "RALPH_ITERATION", "RALPH_ATTEMPT", "RALPH_STEP", "TRACEPARENT")


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    return int(stat[stat.rfind(b")") + 2:].split()[1])


def _session_vars(env: dict[str, str]) -> dict[str, str]:
    return {k: env[k] for k in KEYS if k in env}


def agent_process(executable: str) -> dict[str, Any] | None:
    target = os.path.realpath(executable)
    pid = os.getppid()
    while pid > 1:
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == target:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    argv = [a.decode() for a in fh.read().split(b"\0")[:-1]]
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    pairs = [e.decode("utf-8", "replace").partition("=") for e in fh.read().split(b"\0") if e]
                return {"pid": pid, "argv": argv, "env": _session_vars({k: v for k, _, v in pairs})}
            pid = _parent(pid)
        except OSError:
            return None
    return None


def command(agent: str | Path, then: str = "") -> str:
    """The shell command a scripted turn gives the agent's tool: this script about ``agent`` (the
    agent's executable), then ``then`` (more shell text)."""
    return f"{sys.executable} {PROBE} {agent}{then}"


def probes(log: str) -> list[dict[str, Any]]:
    """Every probe report in a raw step log of JSON events (each once, in order)."""
    found: list[dict[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and MARK in value:
            for line in value.splitlines():
                if line.startswith(MARK):
                    report = json.loads(line[len(MARK):])
                    if report not in found:
                        found.append(report)

    for line in log.splitlines():
        if line.startswith("{"):
            try:
                walk(json.loads(line))
            except ValueError:
                continue
    return found


if __name__ == "__main__":
    report = {"tool_env": _session_vars(dict(os.environ)), "agent": agent_process(sys.argv[1])}
    print(MARK + json.dumps(report), flush=True)
    if sys.argv[2:] == ["--kill"] and report["agent"]:  # the agent dies mid-attempt (a crash, an OOM kill)
        os.kill(report["agent"]["pid"], 9)

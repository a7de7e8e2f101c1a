"""What a preset provides: how to start the agent for one attempt, and how to read its output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ralph.limits import LimitHit
from ralph.loader import LoopSpec
from ralph.pids import GRACE, process_alive
from ralph.session import Session


@dataclass(frozen=True)
class AgentContext:
    spec: LoopSpec
    session: Session
    prompt: str | None  # rendered: placeholders replaced
    env: Mapping[str, str] = field(repr=False)  # the complete env of this attempt's process
    log_dir: Path  # the session's log folder, for a preset's side files
    attempt: int = 1
    binary: str | None = None


@dataclass(frozen=True)
class Invocation:
    argv: tuple[str, ...]
    stdin: bytes | None = field(default=None, repr=False)
    env: Mapping[str, str] = field(default_factory=dict)  # set over the attempt's env (e.g. PWD)


@dataclass
class AgentReport:
    """What a structured agent told us about itself (None: it did not say)."""

    agent_session_id: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    warnings: list[str] = field(default_factory=list)

    def add_tokens(self, tokens_in: int | None, tokens_out: int | None) -> None:
        if tokens_in is not None:
            self.tokens_in = (self.tokens_in or 0) + int(tokens_in)
        if tokens_out is not None:
            self.tokens_out = (self.tokens_out or 0) + int(tokens_out)

    def add_cost(self, cost: float | None) -> None:
        if cost is not None:
            self.cost_usd = (self.cost_usd or 0.0) + float(cost)


@dataclass(frozen=True)
class ToolCall:
    """One tool call the agent made, as its events told it: a child span of the agent step
    (``execute_tool NAME``). Times are epoch seconds: the agent's own when it reports them, else
    when ralph read the events. ``input`` / ``output`` are text (JSON for structured input) and
    reach the span only with content capture on."""

    call_id: str
    name: str
    start: float
    end: float
    ok: bool = True
    input: str | None = field(default=None, repr=False)
    output: str | None = field(default=None, repr=False)
    error: str | None = field(default=None, repr=False)  # the tool's error text (content as well)


def as_text(value: Any) -> str | None:
    """A tool's input or output as span text: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


class StreamParser:
    """Reads an agent's output one line at a time as it streams.

    ``feed`` returns (what the console shows, text that counts for ``output_contains``); either may
    be None. The raw line always goes to the step log untouched.

    Tool calls (see DEVELOPERS.md): a parser that sees one whole (times included) calls
    ``tool_call(ToolCall(...))``; one that sees a start and later a result calls ``tool_started`` and
    ``tool_finished`` with the call's ID. Calls still open when the agent ends become failed spans.
    ``model`` is the model the agent said it used (``gen_ai.response.model``).
    """

    # Set when the CLI itself (its events or stderr, never the model's words) says a usage limit
    # stopped it: the loop pauses until the reset and runs the iteration again. A class default, so
    # a parser that sets nothing (or skips this __init__) has none.
    limit: LimitHit | None = None

    def __init__(self) -> None:
        self.report = AgentReport()
        self.tool_calls: list[ToolCall] = []
        self.model: str | None = None
        self._open: dict[str, tuple[str, float, str | None]] = {}

    def feed(self, line: bytes) -> tuple[str | None, str | None]:
        text = line.decode("utf-8", "replace")
        return text, text

    def tool_call(self, call: ToolCall) -> None:
        self._open.pop(call.call_id, None)
        self.tool_calls.append(call)

    def tool_started(self, call_id: str, name: str, input: Any = None, at: float | None = None) -> None:
        self._open[call_id] = (name, time.time() if at is None else at, as_text(input))

    def tool_finished(self, call_id: str, ok: bool, output: Any = None, error: str | None = None,
                      at: float | None = None) -> None:
        """The result of a started call; one never started (a resumed session's) spans no time."""
        end = time.time() if at is None else at
        name, start, given = self._open.pop(call_id, ("tool", end, None))
        self.tool_calls.append(ToolCall(call_id, name, start, end, ok, given, as_text(output), error))

    def finish(self, at: float | None = None) -> list[ToolCall]:
        """Every tool call of the attempt, the unfinished ones (the agent ended mid-call) as failed."""
        end = time.time() if at is None else at
        for call_id, (name, start, given) in list(self._open.items()):
            self.tool_calls.append(ToolCall(call_id, name, start, end, False, given, None, "no result"))
        self._open.clear()
        return self.tool_calls


class Preset:
    name = "base"
    default_binary: str | None = None
    structured = False  # True: output is JSON events, parsed line by line
    provider: str | None = None  # gen_ai.provider.name when the preset always talks to one provider

    def model_info(self, model: str | None) -> tuple[str | None, str | None]:
        """(``gen_ai.provider.name``, ``gen_ai.request.model``) for the configured ``agent.model``."""
        return self.provider, model

    def binary(self, spec: LoopSpec, env: Mapping[str, str] | None = None) -> str | None:
        """The executable, checked before the first iteration: a missing one is a usage error."""
        if self.default_binary is None:
            return None
        configured = spec.config.agent.bin
        if configured:
            candidate = configured
            if "/" in configured and not os.path.isabs(configured):
                candidate = str(spec.path.resolve().parent / configured)
            found = shutil.which(candidate, path=(env or os.environ).get("PATH"))
            if not found:
                raise spec.error("agent.bin", f"{configured!r} is not an executable file")
            return found
        found = shutil.which(self.default_binary, path=(env or os.environ).get("PATH"))
        if not found:
            raise spec.error("agent.preset",
                             f"the {self.name} preset needs `{self.default_binary}` on PATH (or set agent.bin)")
        return found

    def prepare(self, ctx: AgentContext) -> list[str]:
        """Before the attempt (e.g. create the agent's own session). Returns warnings."""
        return []

    def invocation(self, ctx: AgentContext) -> Invocation:
        raise NotImplementedError

    def parser(self, ctx: AgentContext) -> StreamParser | None:
        return None

    def cleanup(self, ctx: AgentContext) -> list[str]:
        """After every attempt, however it ended (e.g. end what the agent left running). Returns
        notes for the run log."""
        return []


# What marks a process as started by one agent attempt: the attempt's own env.
ATTEMPT_MARKERS = ("OPENCODE_SESSION_ID", "RALPH_RUN_ID", "RALPH_STEP", "RALPH_ATTEMPT")


def _live_environ(pid: str) -> list[bytes] | None:
    """The env a live (non-zombie) process was started with; None if unreadable or gone."""
    if not process_alive(int(pid)):
        return None
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return fh.read().split(b"\0")
    except OSError:
        return None


def processes_with_env(markers: Mapping[str, str]) -> list[int]:
    """Live processes (of ours: others' environ is unreadable) whose env has every ``NAME=value``."""
    if not markers or not all(markers.values()):
        return []  # an empty marker would match far too much
    needles = [f"{name}={value}".encode() for name, value in markers.items()]
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            environ = _live_environ(entry.name)
            if environ is not None and all(n in environ for n in needles):
                found.append(int(entry.name))
    return found


def end_processes_with_env(markers: Mapping[str, str], grace: float = GRACE) -> list[int]:
    """SIGTERM every process carrying ``markers`` in its env, SIGKILL what is left ``grace``
    seconds later. For what an agent started outside its process group (opencode's bash tool runs
    in a session of its own, so ending the agent's group misses it). Returns the PIDs found."""
    found = processes_with_env(markers)
    if not found:
        return []
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    left = found
    while left and time.monotonic() < end:
        time.sleep(0.02)
        left = processes_with_env(markers)  # re-read: a recycled PID must not be killed
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return found


def end_left_running(ctx: AgentContext) -> list[str]:
    """A preset's ``cleanup``: anything a tool left running (a background shell, or one in a session
    of its own) still carries this attempt's env, and goes. The note for the run log."""
    ended = end_processes_with_env({name: ctx.env.get(name, "") for name in ATTEMPT_MARKERS})
    return [f"ended {len(ended)} process(es) the agent left running: {ended}"] if ended else []


def plain_line(line: bytes) -> tuple[str | None, None]:
    """A parser's answer for a line that is not one of the CLI's events (stderr is merged in): shown,
    and never the model's words (it does not count for output_contains)."""
    text = line.decode("utf-8", "replace").rstrip()
    return (text or None), None


def json_event(line: bytes) -> dict[str, Any] | None:
    """One line of a JSON-lines agent stream as an object; None for anything else (stderr is merged)."""
    stripped = line.strip()
    if not stripped.startswith(b"{"):
        return None
    try:
        event = json.loads(stripped)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def iso_seconds(value: Any) -> float | None:
    """An event's ISO 8601 timestamp (``2026-01-02T03:04:05.678Z``) as epoch seconds; None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        return None
    return stamp.timestamp() if stamp.tzinfo is not None else None  # a local time would be a guess


def first_line(text: str, limit: int = 200) -> str:
    """The first line of ``text``, cut to ``limit`` characters, with " …" when anything was left out."""
    stripped = text.strip()
    line = stripped.split("\n", 1)[0]
    return line[:limit] + (" …" if len(line) > limit or "\n" in stripped else "")

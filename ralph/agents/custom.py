"""The ``custom`` preset: an agent CLI described in the loop file (``agent.custom``), no code needed.

``argv`` runs the agent (``agent.args`` appended, then the prompt when ``prompt: arg``); on a retry
in the same session ``resume_argv`` runs instead, once what it needs is known (``{agent_session_id}``:
from an earlier attempt's events). Placeholders: ``{prompt_file}`` (the prompt written to a file in
the session's log folder), ``{model}``, ``{session_id}`` (ours), ``{session_uuid}`` (a UUID derived
from ours, as the claude preset does, for CLIs that take the caller's UUID), ``{agent_session_id}``.
With ``events: jsonl`` every line is a JSON event read through the pointers of ``customspec``: the
text pointer feeds the console and ``output_contains`` (nothing else counts), the others the agent
session ID, tokens and cost; ``tool_start`` / ``tool_end`` pick the events that start and end a
tool call (paired by its ID) for the tool spans. With ``events: text`` every line counts, as with
the command preset.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

from ralph.agents.base import AgentContext, Invocation, Preset, StreamParser, end_left_running, json_event, plain_line
from ralph.agents.claude import claude_session_id
from ralph.agents.codex import _Threads
from ralph.customspec import PLACEHOLDER_RE, CustomAgent, Pointer, first
from ralph.loader import LoopSpec

_PROMPT_FILE = "prompt.txt"


def _spec(spec: LoopSpec) -> CustomAgent:
    custom = spec.config.agent.custom
    assert custom is not None  # the schema requires it for this preset
    return custom


def _as_float(value: Any) -> float | None:
    """A number, or a string of one (a custom CLI's own choice), as a float; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


class CustomParser(StreamParser):
    def __init__(self, custom: CustomAgent, session_id: str, known: _Threads) -> None:
        super().__init__()
        self.custom, self.session_id, self._known = custom, session_id, known
        self._pending = ""  # text_deltas: the text since the last complete line

    def feed(self, line: bytes) -> tuple[str | None, str | None]:
        event = json_event(line)
        if event is None:
            return plain_line(line)
        c = self.custom
        agent_id = next((str(v) for v in _values(c.session_id, event) if isinstance(v, str | int) and v != ""), None)
        if agent_id:
            self.report.agent_session_id = agent_id
            self._known.set(self.session_id, agent_id)  # a retry can resume it
        self._tools(event)
        self.report.add_tokens(_total(c.tokens_in, event), _total(c.tokens_out, event))
        cost = _sum_of(c.cost_usd, event)
        self.report.add_cost(cost)
        pieces = [v for v in _values(c.text, event) if isinstance(v, str) and v]
        if not c.text_deltas:
            said = "\n".join(pieces)
            return (said or None), (said or None)
        if pieces:  # a delta may end mid-word or mid-promise: hand on complete lines only
            self._pending += "".join(pieces)
            if "\n" not in self._pending:
                return None, None
            said, self._pending = self._pending.rsplit("\n", 1)
        else:  # any other event ends the message
            said, self._pending = self._pending, ""
        return (said or None), (said or None)

    def _tools(self, event: dict[str, Any]) -> None:
        """A tool call's start and end events (one call an event), paired by the call's ID."""
        start, end = self.custom.tool_start, self.custom.tool_end
        if start is not None and start.matches(event):
            call_id = first(event, start.id)
            if call_id not in (None, ""):
                self.tool_started(str(call_id), str(first(event, start.name) or "tool"), first(event, start.input))
        if end is not None and end.matches(event):
            call_id = first(event, end.id)
            if call_id not in (None, ""):
                error = first(event, end.error)
                failed = error not in (None, False, 0, "")
                self.tool_finished(str(call_id), not failed, first(event, end.output),
                                   (error if isinstance(error, str) else "failed") if failed else None)


def _values(pointer: Pointer | None, event: dict[str, Any]) -> list[Any]:
    return pointer.values(event) if pointer is not None else []


def _sum_of(pointer: Pointer | None, event: dict[str, Any]) -> float | None:
    numbers = [n for n in (_as_float(v) for v in _values(pointer, event)) if n is not None]
    return sum(numbers) if numbers else None


def _total(pointer: Pointer | None, event: dict[str, Any]) -> int | None:
    total = _sum_of(pointer, event)
    return int(total) if total is not None else None


class _TextParser(StreamParser):
    """Plain output: every line shows and counts, as with the command preset."""

    def feed(self, line: bytes) -> tuple[str | None, str | None]:
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        return (text or None), (text or None)


class CustomPreset(Preset):
    name = "custom"
    structured = True  # the parser decides what shows and what counts

    def __init__(self) -> None:
        self._known = _Threads()  # the agent's session ID by ours, for resume_argv

    def binary(self, spec: LoopSpec, env: Mapping[str, str] | None = None) -> str | None:
        custom, agent = _spec(spec), spec.config.agent
        for key, argv in (("argv", custom.argv), ("resume_argv", custom.resume_argv or ())):
            if agent.model is None and any("{model}" in a for a in argv):
                raise spec.error(f"agent.custom.{key}", "{model} needs agent.model")
        key, program = ("agent.bin", agent.bin) if agent.bin else ("agent.custom.argv", custom.argv[0])
        candidate = str(spec.path.resolve().parent / program) if "/" in program and not os.path.isabs(program) \
            else program
        found = shutil.which(candidate, path=(env or os.environ).get("PATH"))
        if not found:
            raise spec.error(key, f"{program!r} is not an executable file or on PATH")
        return found

    def _values(self, ctx: AgentContext) -> dict[str, str]:
        values = {"session_id": ctx.session.id, "session_uuid": claude_session_id(ctx.session.id),
                  "prompt_file": str(ctx.log_dir / _PROMPT_FILE), "model": ctx.spec.config.agent.model or ""}
        known = self._known.get(ctx.session.id)
        if known:
            values["agent_session_id"] = known
        return values

    def prepare(self, ctx: AgentContext) -> list[str]:
        if _spec(ctx.spec).prompt == "file":
            ctx.log_dir.mkdir(parents=True, exist_ok=True)
            (ctx.log_dir / _PROMPT_FILE).write_text(ctx.prompt or "", encoding="utf-8")
        return []

    def invocation(self, ctx: AgentContext) -> Invocation:
        custom, agent = _spec(ctx.spec), ctx.spec.config.agent
        values = self._values(ctx)
        argv = custom.argv
        if ctx.attempt > 1 and custom.resume_argv is not None and (
                "agent_session_id" in values or not any("{agent_session_id}" in a for a in custom.resume_argv)):
            argv = custom.resume_argv
        filled = [_fill(a, values) for a in argv]
        if ctx.binary and (agent.bin is not None or filled[0] == custom.argv[0]):
            filled[0] = ctx.binary  # as found before the run (a relative path: from the loop file's folder)
        filled += agent.args
        if custom.prompt == "arg":
            filled.append(ctx.prompt or "")
        stdin = (ctx.prompt or "").encode("utf-8") if custom.prompt == "stdin" else None
        return Invocation(tuple(filled), stdin)

    def parser(self, ctx: AgentContext) -> StreamParser:
        custom = _spec(ctx.spec)
        if custom.events == "text":
            return _TextParser()
        return CustomParser(custom, ctx.session.id, self._known)

    def cleanup(self, ctx: AgentContext) -> list[str]:
        return end_left_running(ctx)


def _fill(arg: str, values: Mapping[str, str]) -> str:
    """Only the known placeholders: the schema refused any other, and the values are never re-read."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), arg)


PRESET = CustomPreset()

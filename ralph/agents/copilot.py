"""The ``copilot`` preset: GitHub Copilot CLI in prompt mode, JSON lines, its session bound to ours.

``copilot --output-format json --allow-all-tools --no-auto-update --session-id UUID [--model=M]
[args]``, the prompt on stdin (as ``-p PROMPT`` a prompt starting with "-" would be an option, and
argv has a size limit). ``--session-id`` takes the caller's UUID for a new session and resumes an
existing one, so ours maps to one by ``uuid5`` (as the claude preset's does): every attempt of an
iteration passes the same UUID, a retry continues the session, and ``copilot --resume UUID`` opens
it later. The ``result`` event's ``sessionId`` is recorded as the agent's session ID.

Copilot prints no token counts on stdout: they are in its session log,
``$COPILOT_HOME/session-state/<UUID>/events.jsonl`` (``~/.copilot`` by default), one
``session.usage_record`` per model call. At the attempt's ``result`` event (so the agent span
carries them), and again after the attempt for any written late, the records written since that
attempt's ``session.start`` / ``session.resume`` are added up. Their ``cost`` is Copilot's
premium-request multiplier, not US dollars, so no cost is recorded. Tool spans come from
``tool.execution_start`` / ``tool.execution_complete`` (paired by ``toolCallId``, at their own
timestamps; a shell command's non-zero exit fails the call). See docs/agent-presets-more.md
(Copilot CLI 1.0.102).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ralph.agents.base import (
    AgentContext,
    Invocation,
    Preset,
    StreamParser,
    end_left_running,
    first_line,
    iso_seconds,
    json_event,
    plain_line,
)
from ralph.agents.events import number, obj, tool_line

# Fixed forever: changing it would change every derived UUID.
NAMESPACE = uuid.UUID("0c0f7a3e-5b2d-4c61-8e1f-636f70696c74")
_TOOL_KEYS = ("command", "path", "file_path", "pattern", "url", "query", "description", "prompt")
# Where a process's own part of the session log begins.
_PROCESS_START = ("session.start", "session.resume")


def copilot_session_id(session_id: str) -> str:
    """The Copilot session UUID of a ralph session ID."""
    return str(uuid.uuid5(NAMESPACE, session_id))


def session_log(env: Mapping[str, str], copilot_id: str) -> Path | None:
    """``$COPILOT_HOME/session-state/<UUID>/events.jsonl``, ``$COPILOT_HOME`` defaulting to ``~/.copilot``."""
    home = env.get("COPILOT_HOME") or (os.path.join(env["HOME"], ".copilot") if env.get("HOME") else None)
    return Path(home) / "session-state" / copilot_id / "events.jsonl" if home else None


def last_run_usage(path: Path) -> tuple[int | None, int | None]:
    """Tokens (in, out) of the ``session.usage_record`` events since the log's last process start."""
    tokens_in: int | None = None
    tokens_out: int | None = None
    try:
        with open(path, "rb") as fh:
            for line in fh:
                event = json_event(line)
                if event is None:
                    continue
                if event.get("type") in _PROCESS_START:
                    tokens_in = tokens_out = None
                elif event.get("type") == "session.usage_record":
                    usage = obj(obj(event.get("data")).get("usage"))
                    # inputTokens counts the cached ones too (the provider's prompt tokens)
                    if number(usage.get("inputTokens")):
                        tokens_in = (tokens_in or 0) + int(usage["inputTokens"])
                    if number(usage.get("outputTokens")):
                        tokens_out = (tokens_out or 0) + int(usage["outputTokens"])
    except OSError:
        return None, None
    return tokens_in, tokens_out


class CopilotParser(StreamParser):
    """``copilot --output-format json`` events, one per line (stderr is merged in: plain lines)."""

    def __init__(self, copilot_id: str, log: Path | None = None) -> None:
        super().__init__()
        self.copilot_id, self.log = copilot_id, log
        self.started = False  # copilot printed an event: this attempt wrote to the session log
        self.counted: tuple[int | None, int | None] = (None, None)  # tokens added from the log so far

    def count_tokens(self) -> None:
        """Add what the session log holds for this process beyond what was added already."""
        if self.log is None or not self.started:
            return
        now = last_run_usage(self.log)
        self.report.add_tokens(*(None if n is None else n - (c or 0) for n, c in zip(now, self.counted, strict=True)))
        self.counted = (now[0] if now[0] is not None else self.counted[0],
                        now[1] if now[1] is not None else self.counted[1])

    def feed(self, line: bytes) -> tuple[str | None, str | None]:
        event = json_event(line)
        if event is None:
            return plain_line(line)
        self.started = True
        kind = event.get("type")
        data = obj(event.get("data"))
        if kind == "assistant.message":  # the whole message; its deltas come before it
            self.model = str(data["model"]) if data.get("model") else self.model
            return self._message(data)
        if kind == "tool.execution_start":
            self.tool_started(str(data.get("toolCallId") or ""), str(data.get("toolName") or "tool"),
                              data.get("arguments"), at=iso_seconds(event.get("timestamp")))
            return None, None  # assistant.message showed the request
        if kind == "tool.execution_complete":
            return self._tool_result(data, iso_seconds(event.get("timestamp"))), None
        if kind == "session.error":
            message = str(data.get("message") or data.get("errorType") or "error")
            return f"copilot: error: {first_line(message)}", message  # counts for retry.on_output
        if kind == "session.warning" and data.get("message"):
            return f"copilot: warning: {first_line(str(data['message']))}", None
        if kind == "result":
            # The log's usage records precede this last event: counted now, the agent span gets them.
            self.count_tokens()
            sid = event.get("sessionId")
            self.report.agent_session_id = sid if isinstance(sid, str) and sid else self.copilot_id
            return f"copilot: done · exit {event.get('exitCode')} · session {self.report.agent_session_id}", None
        return None, None  # user.message echoes the prompt: never the model's text

    def _message(self, data: dict[str, Any]) -> tuple[str | None, str | None]:
        text = str(data.get("content") or "")
        shown = [text] if text else []
        requests = [obj(r) for r in data.get("toolRequests") or []]
        shown += [tool_line(r.get("name"), r.get("arguments"), keys=_TOOL_KEYS) for r in requests]
        return ("\n".join(shown) or None), (text or None)

    def _tool_result(self, data: dict[str, Any], at: float | None) -> str:
        result = obj(data.get("result"))
        content = str(result.get("content") or obj(data.get("error")).get("message") or "")
        code = obj(data.get("shellExecution")).get("exitCode")  # a shell command's own exit code
        ok = bool(data.get("success")) and code in (0, None)
        error = None if ok else str(obj(data.get("error")).get("message") or (f"exit {code}" if code else "failed"))
        self.tool_finished(str(data.get("toolCallId") or ""), ok, result.get("content"), error, at=at)
        return f"  {'←' if ok else '✗'} {first_line(content, 160) or '(no output)'}"


class CopilotPreset(Preset):
    name = "copilot"
    default_binary = "copilot"
    structured = True

    def __init__(self) -> None:
        self._lock = threading.Lock()  # batch items run in threads and share the preset
        self._parsers: dict[tuple[str, int], CopilotParser] = {}  # this attempt's, until its cleanup

    def invocation(self, ctx: AgentContext) -> Invocation:
        agent = ctx.spec.config.agent
        # `--opt=value`: a model starting with "-" stays a value.
        argv = [ctx.binary or "copilot", "--output-format=json", "--allow-all-tools", "--no-auto-update",
                f"--session-id={copilot_session_id(ctx.session.id)}"]
        if agent.model:
            argv.append(f"--model={agent.model}")
        argv += agent.args
        return Invocation(tuple(argv), (ctx.prompt or "").encode("utf-8"))

    def parser(self, ctx: AgentContext) -> StreamParser:
        copilot_id = copilot_session_id(ctx.session.id)
        parser = CopilotParser(copilot_id, session_log(ctx.env, copilot_id))
        with self._lock:
            self._parsers[(ctx.session.id, ctx.attempt)] = parser
        return parser

    def cleanup(self, ctx: AgentContext) -> list[str]:
        """The rest of the attempt's tokens from Copilot's session log (complete now that copilot has
        exited; most were counted at its ``result`` event); then anything a tool left running, still
        carrying this attempt's env, goes."""
        with self._lock:
            parser = self._parsers.pop((ctx.session.id, ctx.attempt), None)
        if parser is not None:
            parser.count_tokens()
        return end_left_running(ctx)


PRESET = CopilotPreset()

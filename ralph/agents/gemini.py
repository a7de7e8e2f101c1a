"""The ``gemini`` preset: Gemini CLI in headless mode, streaming JSON, its session bound to ours.

``gemini -o stream-json --skip-trust --yolo --session-id UUID [-m M] [args]``, the prompt on stdin
(headless when stdin is not a terminal). The UUID is derived from our session ID as the claude
preset does (``bound.py``); Gemini CLI refuses a second ``--session-id`` for a session it has
stored (exit 42, "already exists"), so a retry ``--resume``s it. But it resumes only a session
holding a model reply: when the earlier attempts left none (their first request failed), a retry
starts a session of its own, its UUID derived from ours and the attempt number (the one recorded
is the one Gemini's ``init`` event names). ``--yolo`` (nobody answers
approvals) unless ``args`` choose an approval mode. Events: ``init`` (``session_id``), ``message``
(``role`` user echoes the prompt and never counts; assistant text comes in ``delta`` pieces,
joined into lines here), ``tool_use``, ``tool_result`` (paired by ``tool_id`` into tool spans, at
their own timestamps), ``error``, ``result`` (``stats`` tokens of this process; Gemini CLI reports no
cost). See docs/agent-presets.md (Gemini CLI 0.61.0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ralph.agents.base import AgentContext, Invocation, StreamParser, first_line, iso_seconds, json_event, plain_line
from ralph.agents.bound import UuidBoundPreset
from ralph.agents.claude import claude_session_id
from ralph.agents.events import number, obj, tool_line

APPROVAL_FLAGS = ("--yolo", "-y", "--approval-mode")
_MODEL_RECORD = re.compile(r'"type"\s*:\s*"gemini"')
# Tool inputs worth showing, best first.
_TOOL_KEYS = ("command", "file_path", "dir_path", "path", "pattern", "url", "query", "description")


def gemini_home(env: Mapping[str, str]) -> Path | None:
    """``$GEMINI_CLI_HOME/.gemini``, else ``~/.gemini`` (where Gemini CLI keeps settings and chats)."""
    home = env.get("GEMINI_CLI_HOME") or env.get("HOME")
    return Path(home) / ".gemini" if home else None


def session_files(env: Mapping[str, str], gemini_id: str) -> list[Path]:
    """Gemini CLI keeps a session in ``<home>/tmp/<project>/chats/session-<time>-<UUID[:8]>.jsonl``,
    the first line naming its ``sessionId``."""
    home = gemini_home(env)
    found = []
    try:
        for path in (home / "tmp").glob(f"*/chats/session-*-{gemini_id[:8]}.jsonl") if home else ():
            with open(path, encoding="utf-8", errors="replace") as fh:
                if gemini_id in fh.readline():
                    found.append(path)
    except OSError:
        pass
    return found


def resumable(path: Path) -> bool:
    """Gemini CLI resumes only a session holding a reply of the model (a failed first request is
    rolled back, leaving none), though it refuses that session's ID to a new one all the same."""
    try:
        return _MODEL_RECORD.search(path.read_text(encoding="utf-8", errors="replace")) is not None
    except OSError:
        return False


def attempt_id(session_id: str, attempt: int) -> str:
    """The Gemini session UUID of an attempt: the session's own for the first, and for a later one
    whose predecessors left nothing to resume, one derived from the attempt number too."""
    return claude_session_id(session_id if attempt == 1 else f"{session_id}#{attempt}")


class GeminiParser(StreamParser):
    """``gemini -o stream-json`` events, one per line (stderr is merged in: plain lines)."""

    def __init__(self, gemini_id: str) -> None:
        super().__init__()
        self.gemini_id = gemini_id
        self._pending = ""  # assistant text since the last complete line

    def feed(self, line: bytes) -> tuple[str | None, str | None]:
        event = json_event(line)
        if event is None:
            return plain_line(line)
        kind = event.get("type")
        if kind == "message":
            if event.get("role") != "assistant":
                return None, None  # the echoed prompt: never the model's words
            return self._said(str(event.get("content") or ""))
        said = self._flush()
        shown, counted = self._other(kind, event)
        joined = "\n".join(t for t in (said, shown) if t)
        counts = "\n".join(t for t in (said, counted) if t)
        return (joined or None), (counts or None)

    def _said(self, delta: str) -> tuple[str | None, str | None]:
        """Deltas split words and lines anywhere: hand on complete lines only, so a promise split
        over two deltas still matches ``output_contains``."""
        self._pending += delta
        if "\n" not in self._pending:
            return None, None
        done, self._pending = self._pending.rsplit("\n", 1)
        return (done or None), (done or None)

    def _flush(self) -> str:
        said, self._pending = self._pending, ""
        return said

    def _other(self, kind: Any, event: dict[str, Any]) -> tuple[str | None, str | None]:
        if kind == "init":
            sid = str(event.get("session_id") or self.gemini_id)
            self.report.agent_session_id = sid
            self.model = str(event["model"]) if event.get("model") else self.model
            model = f" · model {event['model']}" if event.get("model") else ""
            return f"gemini session {sid}{model}", None
        if kind == "tool_use":
            self.tool_started(str(event.get("tool_id") or ""), str(event.get("tool_name") or "tool"),
                              event.get("parameters"), at=iso_seconds(event.get("timestamp")))
            return tool_line(event.get("tool_name"), event.get("parameters"), keys=_TOOL_KEYS), None
        if kind == "tool_result":
            error = obj(event.get("error"))
            failed = bool(error) or event.get("status") == "error"
            why = str(error.get("message") or event.get("output") or "failed")
            self.tool_finished(str(event.get("tool_id") or ""), not failed, event.get("output"),
                               why if failed else None, at=iso_seconds(event.get("timestamp")))
            if failed:
                return f"  ✗ {first_line(why, 160)}", None
            return f"  ← {first_line(str(event.get('output') or ''), 160) or '(no output)'}", None
        if kind == "error":
            message = str(event.get("message") or "error")
            severity = str(event.get("severity") or "error")
            return f"({severity}) {first_line(message)}", (message if severity == "error" else None)
        if kind == "result":
            return self._result(event)
        return None, None

    def _result(self, event: dict[str, Any]) -> tuple[str | None, str | None]:
        stats = obj(event.get("stats"))
        self.report.add_tokens(_int(stats.get("input_tokens")), _int(stats.get("output_tokens")))
        tools = f" · {stats['tool_calls']} tool calls" if _int(stats.get("tool_calls")) is not None else ""
        if event.get("status") == "error":
            why = str(obj(event.get("error")).get("message") or "error")
            return f"gemini: error: {first_line(why)}{tools}", why  # counts for retry.on_output
        return f"gemini: {event.get('status') or 'done'}{tools}", None


def _int(value: Any) -> int | None:
    return int(value) if number(value) else None


def stream_json_invocation(ctx: AgentContext, head: list[str], session: list[str]) -> Invocation:
    """Gemini CLI's command line (and its fork Qwen Code's): ``--yolo`` unless the loop's args pick an
    approval mode, the session, the model, the loop's args; the prompt on stdin (no argv size limit,
    and a prompt starting with "-" is not an option)."""
    agent = ctx.spec.config.agent
    argv = list(head)
    if not any(a == f or a.startswith(f + "=") for a in agent.args for f in APPROVAL_FLAGS):
        argv.append("--yolo")
    argv += session
    if agent.model:
        argv += ["-m", agent.model]
    argv += agent.args
    return Invocation(tuple(argv), (ctx.prompt or "").encode("utf-8"))


class GeminiPreset(UuidBoundPreset):
    name = "gemini"
    default_binary = "gemini"
    provider = "gcp.gemini"  # the Gemini API (GOOGLE_GEMINI_BASE_URL points it elsewhere, same API)

    def stored(self, env: Mapping[str, str], native_id: str) -> bool:
        return bool(session_files(env, native_id))

    def _session(self, ctx: AgentContext) -> tuple[str, str]:
        """(flag, UUID): resume the newest earlier attempt's session Gemini can resume, else start
        this attempt's own."""
        for attempt in range(ctx.attempt - 1, 0, -1):
            gemini_id = attempt_id(ctx.session.id, attempt)
            if any(resumable(path) for path in session_files(ctx.env, gemini_id)):
                return "--resume", gemini_id
        return "--session-id", attempt_id(ctx.session.id, ctx.attempt)

    def invocation(self, ctx: AgentContext) -> Invocation:
        return stream_json_invocation(ctx, [ctx.binary or "gemini", "-o", "stream-json", "--skip-trust"],
                                      list(self._session(ctx)))

    def parser(self, ctx: AgentContext) -> StreamParser:
        return GeminiParser(self._session(ctx)[1])


PRESET = GeminiPreset()

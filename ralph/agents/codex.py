"""The ``codex`` preset: ``codex exec --json [--model M] [args] -``, the prompt on stdin.

Codex makes its own thread ID (a UUID; it has no option to take ours); the ``thread.started``
event's ``thread_id`` is recorded as the agent's session ID, and a retry in the same session
continues that thread with ``codex exec … resume THREAD -``. Text of ``agent_message`` items feeds
``output_contains``; tokens come from ``turn.completed``. Codex reports no cost. See
docs/agent-presets.md (Codex CLI 0.169.0).
"""

from __future__ import annotations

import re
import threading
from typing import Any

from ralph.agents.base import (
    AgentContext,
    AgentReport,
    Invocation,
    Preset,
    StreamParser,
    end_left_running,
    first_line,
    json_event,
    plain_line,
)
from ralph.agents.events import number, obj
from ralph.limits import LimitHit, reset_time

# Codex's errors for a plan's usage limit ("You've hit your usage limit … try again at 3:43 AM") and
# for an API's rate limit ("exceeded retry limit, last status: 429 Too Many Requests").
_LIMIT_WORDS = re.compile(r"usage limit|rate limit|\b429\b", re.I)


class _Threads:
    """Codex thread ID by our session ID, for the last few thousand sessions (retries look back
    within one iteration only)."""

    def __init__(self, size: int = 4096) -> None:
        self._ids: dict[str, str] = {}
        self._size = size
        self._lock = threading.Lock()  # batch items run in threads and share the preset

    def set(self, session_id: str, thread_id: str) -> None:
        with self._lock:
            self._ids[session_id] = thread_id
            if len(self._ids) > self._size:
                del self._ids[next(iter(self._ids))]

    def get(self, session_id: str) -> str | None:
        return self._ids.get(session_id)


class CodexParser(StreamParser):
    """``codex exec --json`` events, one per line (stderr is merged in: plain lines)."""

    def __init__(self, session_id: str, resumed: bool, threads: _Threads) -> None:
        super().__init__()
        self.session_id, self.resumed, self._threads = session_id, resumed, threads
        self._last_error: str | None = None

    def feed(self, line: bytes) -> tuple[str | None, str | None]:
        event = json_event(line)
        if event is None:
            return plain_line(line)
        kind = event.get("type")
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            self.report.agent_session_id = event["thread_id"]
            self._threads.set(self.session_id, event["thread_id"])
            return f"codex thread {event['thread_id']}", None
        if kind in ("item.started", "item.completed"):
            return self._item(kind, obj(event.get("item")))
        if kind == "turn.completed":
            return self._usage(obj(event.get("usage"))), None
        if kind in ("turn.failed", "error"):
            message = str(obj(event.get("error")).get("message") or event.get("message") or kind)
            if message == self._last_error:  # turn.failed repeats the error event before it
                return None, None
            self._last_error = message
            if _LIMIT_WORDS.search(message) and self.limit is None:  # codex's own error, not the model's
                self.limit = LimitHit(first_line(message), reset_time(message))
            return f"codex: error: {first_line(message)}", message  # counts for retry.on_output
        return None, None

    def _item(self, kind: str, item: dict[str, Any]) -> tuple[str | None, str | None]:
        what = item.get("type")
        tool = _tool_name(item)
        if tool is not None:
            self._tool(kind, tool, item)
        if kind == "item.started":
            if what == "command_execution":
                return f"→ $ {first_line(str(item.get('command') or ''))}", None
            return None, None
        if what == "agent_message":
            text = str(item.get("text") or "")
            return (text, text) if text else (None, None)
        if what == "reasoning":
            return (f"(thinking) {first_line(str(item.get('text') or ''))}" if item.get("text") else None), None
        if what == "command_execution":
            output = first_line(str(item.get("aggregated_output") or ""), 160) or "(no output)"
            mark = "←" if item.get("exit_code") == 0 else f"✗ exit {item.get('exit_code')}:"
            return f"  {mark} {output}", None
        if what == "file_change":
            changes = [f"{obj(c).get('kind', 'change')} {obj(c).get('path', '?')}"
                       for c in item.get("changes") or []]
            return f"→ edit: {', '.join(changes) or '?'}", None
        if what == "mcp_tool_call":
            return f"→ {item.get('server')}.{item.get('tool')}: {item.get('status')}", None
        if what == "web_search":
            return f"→ web search: {first_line(str(item.get('query') or ''))}", None
        if what == "todo_list":
            todos = [f"[{'x' if obj(t).get('completed') else ' '}] {obj(t).get('text', '')}"
                     for t in item.get("items") or []]
            return ("\n".join(todos) or None), None
        if what == "error":  # a warning: the turn goes on
            return f"codex: warning: {first_line(str(item.get('message') or ''))}", None
        return None, None

    def _tool(self, kind: str, tool: str, item: dict[str, Any]) -> None:
        """Command, file change, MCP call and web search items: started, then completed (times of reading)."""
        call_id = str(item.get("id") or "")
        given = item.get("command") or item.get("changes") or item.get("arguments") or item.get("query")
        if kind == "item.started":
            self.tool_started(call_id, tool, given)
            return
        ok = item.get("status") not in ("failed", "declined") and item.get("exit_code") in (0, None)
        output = item.get("aggregated_output") if "aggregated_output" in item else item.get("result")
        error = None if ok else str(obj(item.get("error")).get("message") or f"exit {item.get('exit_code')}")
        if call_id not in self._open:  # a file change comes completed only
            self.tool_started(call_id, tool, given)
        self.tool_finished(call_id, ok, output, error)

    def _usage(self, usage: dict[str, Any]) -> str:
        # input_tokens includes the cached ones; output_tokens the reasoning ones (OpenAI's counts).
        tokens_in, tokens_out = usage.get("input_tokens"), usage.get("output_tokens")
        if self.resumed:  # codex 0.169 reports a resumed thread's running total
            _at_least(self.report, tokens_in, tokens_out)
        else:
            self.report.add_tokens(int(tokens_in) if number(tokens_in) else None,
                                   int(tokens_out) if number(tokens_out) else None)
        return f"codex: turn done · {tokens_in} in / {tokens_out} out tokens"


def _tool_name(item: dict[str, Any]) -> str | None:
    """The tool behind an item, named as codex names its tools to the model."""
    what = item.get("type")
    if what == "mcp_tool_call":
        return f"{item.get('server')}.{item.get('tool')}"
    return {"command_execution": "shell", "file_change": "apply_patch", "web_search": "web_search"}.get(str(what))


def _at_least(report: AgentReport, tokens_in: Any, tokens_out: Any) -> None:
    if number(tokens_in):
        report.tokens_in = max(report.tokens_in or 0, int(tokens_in))
    if number(tokens_out):
        report.tokens_out = max(report.tokens_out or 0, int(tokens_out))


class CodexPreset(Preset):
    name = "codex"
    default_binary = "codex"
    structured = True
    provider = "openai"

    def __init__(self) -> None:
        self._threads = _Threads()

    def _thread(self, ctx: AgentContext) -> str | None:
        """The thread an earlier attempt of this session started, to continue."""
        return self._threads.get(ctx.session.id) if ctx.attempt > 1 else None

    def invocation(self, ctx: AgentContext) -> Invocation:
        agent = ctx.spec.config.agent
        argv = [ctx.binary or "codex", "exec", "--json"]
        if agent.model:
            argv += ["--model", agent.model]
        argv += agent.args
        thread = self._thread(ctx)
        if thread:
            argv += ["resume", thread]  # exec's options before `resume` still apply
        # "-": the prompt on stdin; no argv size limit, and a prompt starting with "-" is no option.
        argv.append("-")
        return Invocation(tuple(argv), (ctx.prompt or "").encode("utf-8"))

    def parser(self, ctx: AgentContext) -> StreamParser:
        return CodexParser(ctx.session.id, self._thread(ctx) is not None, self._threads)

    def cleanup(self, ctx: AgentContext) -> list[str]:
        """Anything a command left running still carries this attempt's env: it goes."""
        return end_left_running(ctx)


PRESET = CodexPreset()

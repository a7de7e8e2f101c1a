"""The ``claude`` preset: Claude Code in print mode, streaming JSON, its session bound to ours.

``claude -p --output-format stream-json --verbose --session-id UUID [--model M] [args]``, the
prompt on stdin. Claude Code wants a UUID for a session ID, so ours maps to one by ``uuid5``: the
same ralph session always names the same Claude session, and that UUID is recorded as the agent's
session ID. Claude Code refuses a second ``--session-id`` with a UUID it has a transcript of
("Session ID … is already in use"), so a retry in the same session ``--resume``s it instead.
Cost and tokens come from the ``result`` event. See docs/agent-presets.md (Claude Code 2.1.332).
"""

from __future__ import annotations

import os
import re
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
    json_event,
    plain_line,
)
from ralph.agents.events import int_sum, number, obj, tool_line
from ralph.limits import LimitHit, reset_time

# Fixed forever: changing it would change every derived UUID.
NAMESPACE = uuid.UUID("5f0b8d5e-7c1a-4f3e-9a52-72616c706821")
_LIMIT_WORDS = re.compile(r"usage limit reached|limit reached\s*[∙·|]|hit your (?:usage )?limit", re.I)
# Tool inputs worth showing, best first.
_TOOL_KEYS = ("command", "file_path", "notebook_path", "path", "pattern", "url", "query", "description", "prompt")


def claude_session_id(session_id: str) -> str:
    """The Claude Code session UUID of a ralph session ID."""
    return str(uuid.uuid5(NAMESPACE, session_id))


def transcript_exists(env: Mapping[str, str], claude_id: str) -> bool:
    """Claude Code keeps a session's transcript in ``<config>/projects/<folder>/<UUID>.jsonl``,
    ``<config>`` being ``$CLAUDE_CONFIG_DIR`` or ``~/.claude``."""
    config = env.get("CLAUDE_CONFIG_DIR") or (os.path.join(env["HOME"], ".claude") if env.get("HOME") else None)
    if not config:
        return False
    projects = Path(config) / "projects"
    try:
        return any((folder / f"{claude_id}.jsonl").exists() for folder in projects.iterdir())
    except OSError:
        return False


class _Recent:
    """The last few thousand keys seen (retries only look back within one iteration)."""

    def __init__(self, size: int = 4096) -> None:
        self._keys: dict[str, None] = {}
        self._size = size
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self._keys[key] = None
            if len(self._keys) > self._size:
                del self._keys[next(iter(self._keys))]

    def __contains__(self, key: object) -> bool:
        return key in self._keys


class ClaudeParser(StreamParser):
    """Claude Code's stream-json events, one per line (stderr is merged in: plain lines)."""

    label = "claude"  # how the console names the agent (Qwen Code speaks the same events)

    def __init__(self, claude_id: str, resumed: bool, started: _Recent) -> None:
        super().__init__()
        self.claude_id, self.resumed, self._started = claude_id, resumed, started

    def feed(self, line: bytes) -> tuple[str | None, str | None]:
        event = json_event(line)
        if event is None:
            return plain_line(line)
        kind = event.get("type")
        if kind == "rate_limit_event":
            return self._rate_limit(obj(event.get("rate_limit_info"))), None
        if kind == "system":
            return self._system(event), None
        if kind == "assistant" and event.get("is_api_error_message"):  # Claude Code's words, not the model's
            said = "\n".join(str(b.get("text") or "") for b in _blocks(obj(event.get("message")).get("content")))
            self._api_error(event, said)
            return (said or None), None
        if kind == "assistant":
            return self._assistant(obj(event.get("message")))
        if kind == "user":
            return self._tool_results(obj(event.get("message"))), None
        if kind == "result":
            return self._result(event)
        return None, None

    def _rate_limit(self, info: dict[str, Any]) -> str | None:
        """Claude Code's own rate-limit report (subscriptions): ``rejected`` means it must wait."""
        resets = info.get("resetsAt")
        self._resets = float(resets) if number(resets) else self._resets
        if info.get("status") != "rejected":
            return None
        words = f"claude: {info.get('rateLimitType') or 'usage'} limit reached"
        self.limit = LimitHit(words, self._resets)
        return words

    _resets: float | None = None

    def _api_error(self, event: dict[str, Any], text: str) -> None:
        """An API error of Claude Code's (never the model's text): a 429, or its limit messages
        ("Claude AI usage limit reached|<epoch>", "5-hour limit reached ∙ resets 3pm")."""
        limited = (event.get("api_error_status") == 429 or event.get("error") == "rate_limit"
                   or event.get("api_error_type") == "rate_limit_error" or bool(_LIMIT_WORDS.search(text)))
        if limited and self.limit is None:
            self.limit = LimitHit(first_line(text) or "claude: rate limited", reset_time(text) or self._resets)

    def _system(self, event: dict[str, Any]) -> str | None:
        if event.get("subtype") == "init":
            sid = str(event.get("session_id") or self.claude_id)
            self.report.agent_session_id = sid
            self.model = str(event["model"]) if event.get("model") else self.model
            self._started.add(sid)  # a retry must --resume it now
            model = f" · model {event['model']}" if event.get("model") else ""
            return f"{self.label} session {sid}{model}"
        message = event.get("message") or event.get("error")
        return f"({event.get('subtype') or 'system'}) {first_line(str(message))}" if message else None

    def _assistant(self, message: dict[str, Any]) -> tuple[str | None, str | None]:
        shown: list[str] = []
        said: list[str] = []
        for block in _blocks(message.get("content")):
            if block.get("type") == "text" and block.get("text"):
                said.append(str(block["text"]))
                shown.append(str(block["text"]))
            elif block.get("type") == "tool_use":
                shown.append(tool_line(block.get("name"), block.get("input"), keys=_TOOL_KEYS))
                self.tool_started(str(block.get("id") or ""), str(block.get("name") or "tool"), block.get("input"))
        text = "\n".join(said)
        return ("\n".join(shown) or None), (text or None)

    def _tool_results(self, message: dict[str, Any]) -> str | None:
        shown = []
        for block in _blocks(message.get("content")):
            if block.get("type") != "tool_result":
                continue
            content = block.get("content")
            if isinstance(content, list):
                content = "\n".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            failed = bool(block.get("is_error"))
            self.tool_finished(str(block.get("tool_use_id") or ""), not failed, content,
                               first_line(str(content or "")) if failed else None)
            mark = "✗" if block.get("is_error") else "←"
            shown.append(f"  {mark} {first_line(str(content or ''), 160) or '(no output)'}")
        return "\n".join(shown) or None

    def _result(self, event: dict[str, Any]) -> tuple[str | None, str | None]:
        usage = obj(event.get("usage"))
        tokens_in = int_sum(usage.get("input_tokens"), usage.get("cache_creation_input_tokens"),
                         usage.get("cache_read_input_tokens"))
        self.report.add_tokens(tokens_in, int_sum(usage.get("output_tokens")))  # this run's own
        total = event.get("total_cost_usd")
        cost = float(total) if number(total) else None
        if cost is not None and self.resumed:  # a resumed session's total includes earlier attempts'
            self.report.cost_usd = max(self.report.cost_usd or 0.0, cost)
        else:
            self.report.add_cost(cost)
        spent = f" · ${cost:.4f}" if cost is not None else ""
        turns = f" · {event['num_turns']} turns" if number(event.get("num_turns")) else ""
        if event.get("is_error"):
            why = str(event.get("result") or event.get("subtype") or "error")
            self._api_error(event, why)
            return f"{self.label}: error: {first_line(why)}{turns}{spent}", why  # counts for retry.on_output
        return f"{self.label}: {event.get('subtype') or 'done'}{turns}{spent}", None


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


class ClaudePreset(Preset):
    name = "claude"
    default_binary = "claude"
    structured = True
    provider = "anthropic"

    def __init__(self) -> None:
        self._started = _Recent()  # Claude session UUIDs an attempt was seen to start

    def _resume(self, ctx: AgentContext, claude_id: str) -> bool:
        """Does the session exist already (an earlier attempt started it)? The transcript says so;
        an earlier attempt's init event too, should a Claude Code version keep transcripts elsewhere."""
        return claude_id in self._started or transcript_exists(ctx.env, claude_id)

    def invocation(self, ctx: AgentContext) -> Invocation:
        claude_id = claude_session_id(ctx.session.id)
        agent = ctx.spec.config.agent
        argv = [ctx.binary or "claude", "-p", "--output-format", "stream-json", "--verbose",
                "--resume" if self._resume(ctx, claude_id) else "--session-id", claude_id]
        if agent.model:
            argv += ["--model", agent.model]
        argv += agent.args
        # The prompt on stdin: no argv size limit, and a prompt starting with "-" is not an option.
        return Invocation(tuple(argv), (ctx.prompt or "").encode("utf-8"))

    def parser(self, ctx: AgentContext) -> StreamParser:
        claude_id = claude_session_id(ctx.session.id)
        return ClaudeParser(claude_id, self._resume(ctx, claude_id), self._started)

    def cleanup(self, ctx: AgentContext) -> list[str]:
        """Anything a tool left running (a background shell) still carries this attempt's env: it goes."""
        return end_left_running(ctx)


PRESET = ClaudePreset()

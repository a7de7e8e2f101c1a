"""The ``pi`` preset: the pi coding agent in print mode, JSON events, in a session file that is ours.

``pi -p --mode json --session FILE [--model M] [args]``, the prompt on stdin. pi takes a session's
ID from the header line of its session file, and ``--session`` opens the file it is given. So on an
iteration's first attempt the preset writes that header with our session ID (and the workdir as
the session's cwd) where pi keeps its sessions, ``<agent dir>/sessions/--<cwd>--/<time>_<ID>.jsonl``
(``<agent dir>`` being ``$PI_CODING_AGENT_DIR`` or ``~/.pi/agent``); every attempt of the
iteration passes that file, so a retry continues the session and ``pi --session <ID>`` finds it
later. Text, tokens and cost come from the assistant messages' ``message_end`` events. pi retries
failed model calls itself (``auto_retry_start``), and 0.73.1 exits 0 in JSON mode even when the
call failed for good: the error's text is shown and matched like the model's, but the attempt is
not a failure, so ralph does not retry it. Tool spans come from ``tool_execution_start`` /
``tool_execution_end`` (paired by ``toolCallId``; pi gives them no times, so the times are when
ralph read them). See docs/agent-presets-more.md (pi 0.73.1).
"""

from __future__ import annotations

import json
import os
import threading
import time
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
from ralph.agents.opencode import provider_model

SESSION_VERSION = 3  # pi's session file format (CURRENT_SESSION_VERSION in pi 0.73.1)
_TOOL_KEYS = ("command", "path", "file_path", "pattern", "url", "query", "description")


def sessions_dir(env: Mapping[str, str], cwd: Path) -> Path | None:
    """Where pi keeps the sessions of ``cwd`` (its getDefaultSessionDir)."""
    agent_dir = env.get("PI_CODING_AGENT_DIR")
    if agent_dir:
        if agent_dir == "~" or agent_dir.startswith("~/"):  # pi's expandTildePath
            if not env.get("HOME"):
                return None
            agent_dir = env["HOME"] + agent_dir[1:]
    elif env.get("HOME"):
        agent_dir = os.path.join(env["HOME"], ".pi", "agent")
    else:
        return None
    folder = "--" + str(cwd).lstrip("/\\").replace("/", "-").replace("\\", "-").replace(":", "-") + "--"
    return Path(agent_dir) / "sessions" / folder


class PiParser(StreamParser):
    """``pi --mode json`` events, one per line (stderr is merged in: plain lines)."""

    def feed(self, line: bytes) -> tuple[str | None, str | None]:
        event = json_event(line)
        if event is None:
            return plain_line(line)
        kind = event.get("type")
        if kind == "session" and isinstance(event.get("id"), str):
            self.report.agent_session_id = event["id"]
            return f"pi session {event['id']}", None
        if kind == "message_end":
            message = obj(event.get("message"))
            if message.get("role") == "assistant":  # not the user's message: that is the prompt
                return self._assistant(message)
            return None, None
        if kind == "tool_execution_start":
            self.tool_started(str(event.get("toolCallId") or ""), str(event.get("toolName") or "tool"),
                              event.get("args"))
            return None, None  # the assistant message showed the call
        if kind == "tool_execution_end":
            content = _text(obj(event.get("result")).get("content"))
            failed = bool(event.get("isError"))
            self.tool_finished(str(event.get("toolCallId") or ""), not failed, content,
                               (first_line(content) or "failed") if failed else None)
            mark = "✗" if failed else "←"
            return f"  {mark} {first_line(content, 160) or '(no output)'}", None
        if kind == "auto_retry_start":
            return f"pi: retrying ({event.get('attempt')}/{event.get('maxAttempts')}): " \
                   f"{first_line(str(event.get('errorMessage') or ''))}", None
        return None, None

    def _assistant(self, message: dict[str, Any]) -> tuple[str | None, str | None]:
        self.model = str(message["model"]) if message.get("model") else self.model
        usage = obj(message.get("usage"))
        tokens_in = int_sum(usage.get("input"), usage.get("cacheRead"), usage.get("cacheWrite"))
        self.report.add_tokens(tokens_in, int_sum(usage.get("output")))
        total = obj(usage.get("cost")).get("total")
        if number(total):
            self.report.add_cost(float(total))
        blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
        said = "\n".join(str(b.get("text")) for b in blocks if b.get("type") == "text" and b.get("text"))
        shown = [said] if said else []
        shown += [tool_line(b.get("name"), b.get("arguments"), keys=_TOOL_KEYS) for b in blocks
                  if b.get("type") == "toolCall"]
        if message.get("stopReason") in ("error", "aborted"):
            why = str(message.get("errorMessage") or message.get("stopReason"))
            return "\n".join([*shown, f"pi: error: {first_line(why)}"]), "\n".join(filter(None, [said, why]))
        return ("\n".join(shown) or None), (said or None)


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(c.get("text", "")) for c in content if isinstance(c, dict) and c.get("type") == "text")
    return str(content or "")


class PiPreset(Preset):
    name = "pi"
    default_binary = "pi"
    structured = True

    def model_info(self, model: str | None) -> tuple[str | None, str | None]:
        return provider_model(model)

    def __init__(self) -> None:
        self._lock = threading.Lock()  # batch items run in threads and share the preset
        self._files: dict[str, Path] = {}  # session file by our session ID: retries reuse it

    def prepare(self, ctx: AgentContext) -> list[str]:
        with self._lock:
            if ctx.session.id in self._files:
                return []
        folder = sessions_dir(ctx.env, ctx.spec.workdir.resolve())
        if folder is None:
            folder = ctx.log_dir  # no HOME: pi cannot list it, but the session is still ours
        stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime()) + "-000Z"
        path = folder / f"{stamp}_{ctx.session.id}.jsonl"
        header = {"type": "session", "version": SESSION_VERSION, "id": ctx.session.id,
                  "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                  "cwd": str(ctx.spec.workdir.resolve())}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(header) + "\n")
        except OSError as exc:
            return [f"pi: cannot write its session file {path} ({exc.strerror}); pi makes a session of its own"]
        with self._lock:
            self._files[ctx.session.id] = path
            if len(self._files) > 4096:  # retries only look back within one iteration
                del self._files[next(iter(self._files))]
        return []

    def invocation(self, ctx: AgentContext) -> Invocation:
        agent = ctx.spec.config.agent
        argv = [ctx.binary or "pi", "-p", "--mode", "json"]
        with self._lock:
            path = self._files.get(ctx.session.id)
        if path is not None:
            argv += ["--session", str(path)]
        if agent.model:
            argv += ["--model", agent.model]
        argv += agent.args
        # The prompt on stdin: pi reads a piped stdin as the message (no argv size limit, and a
        # prompt starting with "-" is no option).
        return Invocation(tuple(argv), (ctx.prompt or "").encode("utf-8"))

    def parser(self, ctx: AgentContext) -> StreamParser:
        return PiParser()

    def cleanup(self, ctx: AgentContext) -> list[str]:
        """Anything a tool left running still carries this attempt's env: it goes."""
        return end_left_running(ctx)


PRESET = PiPreset()

"""The ``qwen`` preset: Qwen Code in headless mode, streaming JSON, its session bound to ours.

``qwen -o stream-json --yolo --session-id UUID [-m M] [args]``, the prompt on stdin. Qwen Code (a
Gemini CLI fork) speaks Claude Code's stream-json events (``system``/``init``, ``assistant``,
``user`` tool results, ``result`` with ``usage``; no cost), so the claude preset's parser reads
them. The UUID is derived from our session ID (``bound.py``); Qwen Code refuses a second
``--session-id`` it has stored ("Session Id … is already in use"), so a retry ``--resume``s it.
``--yolo`` unless ``args`` choose an approval mode. Qwen Code answers an API error with exit 0
and the text ``[API Error: …]`` as the model's reply: ``retry.on_output`` sees it, the exit code
does not. See docs/agent-presets.md (Qwen Code 0.15.10).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ralph.agents.base import AgentContext, Invocation, StreamParser, first_line
from ralph.agents.bound import UuidBoundPreset
from ralph.agents.claude import ClaudeParser
from ralph.agents.events import int_sum, obj
from ralph.agents.gemini import stream_json_invocation


def qwen_dirs(env: Mapping[str, str]) -> list[Path]:
    """Where Qwen Code may keep sessions: ``$QWEN_RUNTIME_DIR``, ``$QWEN_HOME``, ``~/.qwen``."""
    dirs = [Path(env[name]) for name in ("QWEN_RUNTIME_DIR", "QWEN_HOME") if env.get(name)]
    if env.get("HOME"):
        dirs.append(Path(env["HOME"]) / ".qwen")
    return dirs


def session_stored(env: Mapping[str, str], qwen_id: str) -> bool:
    """Qwen Code keeps a session in ``<dir>/projects/<project>/chats/<UUID>.jsonl``."""
    try:
        return any(any(d.glob(f"projects/*/chats/{qwen_id}.jsonl")) for d in qwen_dirs(env))
    except OSError:
        return False


class QwenParser(ClaudeParser):
    label = "qwen"

    def _result(self, event: dict[str, Any]) -> tuple[str | None, str | None]:
        # OpenAI-style usage: input_tokens already include the cached ones (Claude's do not).
        usage = obj(event.get("usage"))
        self.report.add_tokens(int_sum(usage.get("input_tokens")), int_sum(usage.get("output_tokens")))
        turns = f" · {event['num_turns']} turns" if isinstance(event.get("num_turns"), int) else ""
        if event.get("is_error"):
            why = str(event.get("result") or event.get("subtype") or "error")
            return f"qwen: error: {first_line(why)}{turns}", why
        return f"qwen: {event.get('subtype') or 'done'}{turns}", None


class QwenPreset(UuidBoundPreset):
    name = "qwen"
    default_binary = "qwen"

    def stored(self, env: Mapping[str, str], native_id: str) -> bool:
        return session_stored(env, native_id)

    def invocation(self, ctx: AgentContext) -> Invocation:
        return stream_json_invocation(ctx, [ctx.binary or "qwen", "-o", "stream-json"], self.session_args(ctx))

    def parser(self, ctx: AgentContext) -> StreamParser:
        native = self.native_id(ctx)
        return QwenParser(native, self.resumes(ctx), self.started)


PRESET = QwenPreset()

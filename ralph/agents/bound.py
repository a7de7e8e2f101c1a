"""What the presets of CLIs that take the caller's session UUID share (Gemini CLI, Qwen Code).

Such a CLI starts a session under the UUID given with ``--session-id`` and refuses that UUID a
second time once it has stored the session; ``--resume UUID`` continues it. So ours maps to a UUID
by ``uuid5`` (the claude preset's namespace: the same ralph session always names the same native
session), recorded as the agent's session ID, and a retry in the same session resumes it: when an
earlier attempt's events showed it started, or the CLI's own session store has it.
"""

from __future__ import annotations

from collections.abc import Mapping

from ralph.agents.base import AgentContext, Preset, end_left_running
from ralph.agents.claude import _Recent, claude_session_id


class UuidBoundPreset(Preset):
    structured = True

    def __init__(self) -> None:
        self.started = _Recent()  # native session UUIDs an attempt was seen to start

    @staticmethod
    def native_id(ctx: AgentContext) -> str:
        return claude_session_id(ctx.session.id)

    def stored(self, env: Mapping[str, str], native_id: str) -> bool:
        """Does the CLI's own store hold this session already?"""
        raise NotImplementedError

    def resumes(self, ctx: AgentContext) -> bool:
        native = self.native_id(ctx)
        return native in self.started or self.stored(ctx.env, native)

    def session_args(self, ctx: AgentContext) -> list[str]:
        return ["--resume" if self.resumes(ctx) else "--session-id", self.native_id(ctx)]

    def cleanup(self, ctx: AgentContext) -> list[str]:
        """Anything a tool left running (a background shell) still carries this attempt's env: it goes."""
        return end_left_running(ctx)

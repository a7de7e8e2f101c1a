"""The ``command`` preset: any program; the prompt, if any, goes to its standard input."""

from __future__ import annotations

from ralph.agents.base import AgentContext, Invocation, Preset
from ralph.process import shell_argv


class CommandPreset(Preset):
    name = "command"

    def invocation(self, ctx: AgentContext) -> Invocation:
        command = ctx.spec.config.agent.command
        assert command is not None  # the schema requires it for this preset
        stdin = ctx.prompt.encode("utf-8") if ctx.prompt is not None else None
        args = ctx.spec.config.agent.args
        if isinstance(command, str) and args:
            # Extra args reach a shell command as "$@", never pasted into its text.
            return Invocation(("/bin/sh", "-c", command + ' "$@"', "agent", *args), stdin)
        return Invocation(shell_argv(command) + args, stdin)


PRESET = CommandPreset()

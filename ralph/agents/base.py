"""What a preset provides: how to start the agent for one attempt, and how to read its output."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ralph.errors import ConfigError
from ralph.loader import LoopSpec
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


class StreamParser:
    """Reads an agent's output one line at a time as it streams.

    ``feed`` returns (what the console shows, text that counts for ``output_contains``); either may
    be None. The raw line always goes to the step log untouched.
    """

    def __init__(self) -> None:
        self.report = AgentReport()

    def feed(self, line: bytes) -> tuple[str | None, str | None]:
        text = line.decode("utf-8", "replace")
        return text, text


class Preset:
    name = "base"
    default_binary: str | None = None
    structured = False  # True: output is JSON events, parsed line by line

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
                raise ConfigError(f"{configured!r} is not an executable file", spec.path, key="agent.bin")
            return found
        found = shutil.which(self.default_binary, path=(env or os.environ).get("PATH"))
        if not found:
            raise ConfigError(
                f"the {self.name} preset needs `{self.default_binary}` on PATH (or set agent.bin)",
                spec.path, key="agent.preset")
        return found

    def prepare(self, ctx: AgentContext) -> list[str]:
        """Before the attempt (e.g. create the agent's own session). Returns warnings."""
        return []

    def invocation(self, ctx: AgentContext) -> Invocation:
        raise NotImplementedError

    def parser(self, ctx: AgentContext) -> StreamParser | None:
        return None

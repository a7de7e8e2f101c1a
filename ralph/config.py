"""The loop file's schema: frozen, typed records validated by pydantic.

The YAML side (line numbers, duplicate keys, tags) lives in ``loader``; this module only knows
shapes and values, so ``ralph schema`` can print the JSON Schema straight from it.
"""

from __future__ import annotations

import re
import sys
import types
from typing import Annotated, Any, Literal


def _skip_pydantic_plugin_lookup() -> None:
    """pydantic looks for plugins (the entry points of every installed distribution) when it builds
    its first model: importing ``importlib.metadata`` for that, and the ``email`` package it pulls in,
    is 25-60 ms of every ``ralph validate`` and ``run``. Plugins instrument a program's own models;
    these models are ralph's config file, so none apply. pydantic imports only ``get_plugins`` from
    this module (checked by tests/test_config.py); a process that loaded the real one keeps it."""
    name = "pydantic.plugin._loader"
    if name not in sys.modules:
        stub = types.ModuleType(name, "ralph: no pydantic plugins for the loop file's models")
        stub.get_plugins = lambda: ()  # type: ignore[attr-defined]
        sys.modules[name] = stub


_skip_pydantic_plugin_lookup()

from pydantic import (  # noqa: E402 (after the stub above)
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ralph.customspec import CustomAgent  # noqa: E402 (after the stub above)
from ralph.hints import check_item  # noqa: E402

NAME_RE = r"^[a-z0-9][a-z0-9._-]*$"
STEP_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PLACEHOLDERS = ("loop", "iteration", "item", "run_id", "date", "feedback")
PROMPT_ONLY = ("feedback",)  # why the previous iteration did not complete: prompts, not titles
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Set by the runner for every child; a loop's `env:` may not override them.
RESERVED_ENV = frozenset(
    {
        "OPENCODE_SESSION_ID", "RALPH_SESSION_ID", "OPENCODE_SESSION_TITLE", "RALPH_SESSION_TITLE",
        "RALPH_RUN_ID", "RALPH_LOOP", "RALPH_ITERATION", "RALPH_ATTEMPT", "RALPH_STEP", "RALPH_ITEM",
        "RALPH_STATE_DIR", "TRACEPARENT", "TRACESTATE", "OTEL_RESOURCE_ATTRIBUTES", "RALPH_FEEDBACK",
        "RALPH_PREVIOUS_SESSION_ID",
    }
)
RESERVED_STEP_NAMES = frozenset({"agent", "check"})
PRESETS = ("command", "opencode", "claude", "codex", "gemini", "copilot", "qwen", "pi", "kilo", "custom")

_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def parse_duration(value: Any) -> float:
    """``90s``, ``30m``, ``2h``, ``1h30m``, ``250ms`` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 30m, 2h or 1h30m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().replace(" ", "")
        match = _DURATION_RE.match(text)
        if not match or not any(match.groups()):
            raise ValueError(f"invalid duration {value!r}; use e.g. 90s, 30m, 2h or 1h30m")
        h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s + ms / 1000
    else:
        raise ValueError("expected a duration such as 90s, 30m, 2h or 1h30m")
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


def _to_str(value: Any) -> Any:
    """YAML turns ``PORT: 8080`` into an int; env values are strings, so accept scalars."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _check_command(value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    if isinstance(value, str) and not value.strip():
        raise ValueError("the command is empty")
    if isinstance(value, tuple) and (not value or not all(value)):
        raise ValueError("a command list needs at least one non-empty element")
    return value


def _check_env_name(name: str) -> str:
    if not ENV_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid environment variable name")
    if name in RESERVED_ENV:
        raise ValueError(f"{name} is set by ralph for every child and may not be set here")
    return name


def _check_env_value(value: str) -> str:
    if "\0" in value:
        raise ValueError("an environment value may not contain a NUL byte")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Command = Annotated[str | tuple[str, ...], AfterValidator(_check_command)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
EnvValue = Annotated[str, BeforeValidator(_to_str), AfterValidator(_check_env_value)]


def unknown_placeholders(template: str) -> list[str]:
    return [name for name in PLACEHOLDER_RE.findall(template) if name not in PLACEHOLDERS]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class Retry(Model):
    attempts: int = Field(1, ge=1, le=100, description="total attempts of the agent per iteration")
    backoff: Duration = Field(2.0, description="first wait between attempts (doubles, with jitter)")
    max_backoff: Duration = Field(60.0, description="longest wait between attempts")
    on_exit_codes: tuple[int, ...] = Field((), description="retry when the agent exits with one of these")
    on_output: tuple[str, ...] = Field((), description="retry when the output contains one (case-insensitive)")


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


class UsageLimit(Model):
    """A usage limit pauses the loop until it resets; the same iteration then runs again."""

    pattern: Annotated[str, AfterValidator(_check_regex)] | None = Field(
        None, min_length=1, description="a regular expression over the agent's output (not the model's words for "
        "the opencode, claude and codex presets, which also know their CLI's own limit signals)")
    wait: Duration = Field(600.0, description="how long to pause when no reset time can be read")


class Agent(Model):
    preset: Literal["command", "opencode", "claude", "codex", "gemini", "copilot", "qwen", "pi", "kilo",
                    "custom"] = "command"
    custom: CustomAgent | None = Field(None, description="the custom preset: an agent CLI described here")
    command: Command | None = Field(None, description="a string runs under /bin/sh -c, a list is exec'd")
    bin: str | None = Field(None, description="the preset's executable (default: found on PATH)")
    prompt: str | None = Field(None, description="placeholders {loop} {iteration} {item} {run_id} {date} and "
                               "{feedback} (why the previous iteration did not complete; empty on the first)")
    prompt_file: str | None = Field(None, description="relative to the loop file; the same placeholders as prompt")
    model: str | None = Field(None, description="presets only")
    args: tuple[str, ...] = Field((), description="appended to the preset's command line")
    timeout: Duration | None = None
    idle_timeout: Duration | None = Field(None, description="no output for this long: the agent is hung")
    retry: Retry = Retry()
    usage_limit: UsageLimit = UsageLimit()

    @model_validator(mode="after")
    def _consistent(self) -> Agent:
        if self.prompt is not None and self.prompt_file is not None:
            raise ValueError("give either prompt or prompt_file, not both")
        if self.preset == "command":
            if self.command is None:
                raise ValueError("the command preset needs `command`")
            if self.model is not None:
                raise ValueError("`model` is for the agent presets, not the command preset")
        elif self.command is not None:
            raise ValueError(f"the {self.preset} preset builds its own command line; use `args` or `bin`")
        if (self.preset == "custom") != (self.custom is not None):
            raise ValueError("the custom preset needs a `custom:` section" if self.preset == "custom"
                             else "`custom:` is for `preset: custom`")
        if self.preset != "command" and self.prompt is None and self.prompt_file is None:
            raise ValueError(f"the {self.preset} preset needs a prompt or prompt_file")
        return self


class Step(Model):
    name: str = Field(pattern=STEP_NAME_RE)
    run: Command
    timeout: Duration | None = None
    continue_on_error: bool = False

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_STEP_NAMES:
            raise ValueError(f"{value!r} is the name of a built-in step; choose another")
        return value


class Steps(Model):
    before: tuple[Step, ...] = ()
    after: tuple[Step, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> Steps:
        seen: set[str] = set()
        for step in self.before + self.after:
            if step.name in seen:
                raise ValueError(f"two steps are named {step.name!r}; step names must be unique")
            seen.add(step.name)
        return self


class Until(Model):
    """The loop ends at the first that holds. Every run ends with a stop_reason: complete,
    max_iterations, max_duration, max_cost, max_consecutive_failures, no_progress, same_failure,
    interrupted, taken_over or error."""

    max_iterations: int = Field(10, ge=1)
    max_duration: Duration | None = None
    output_contains: str | None = Field(None, min_length=1, description="in the agent's output of an iteration "
                                        "(the model's words for presets); lines repeating a line of the prompt "
                                        "never count. With command_succeeds: the claim counts only if the check "
                                        "passes (else status claim_rejected)")
    command_succeeds: Command | None = Field(None, description="run after each iteration; exit 0 ends the loop")
    max_consecutive_failures: int | None = Field(None, ge=1)
    max_cost_usd: float | None = Field(None, gt=0, description="where the agent reports its cost")
    same_failure: int | None = Field(None, ge=1, description="stop after N failed iterations in a row with the "
                                     "same failure fingerprint")
    no_progress: int | None = Field(None, ge=1, description="stop after N iterations that changed nothing "
                                    "in the working tree (git snapshots; commits count as change)")

    @property
    def has_success_condition(self) -> bool:
        return self.output_contains is not None or self.command_succeeds is not None


class Batch(Model):
    items: tuple[Annotated[EnvValue, AfterValidator(check_item)], ...] | None = None
    items_file: str | None = None
    items_command: Command | None = None
    parallel: int = Field(1, ge=1, le=256)
    lease: Duration = Field(60.0, gt=0, description="with a PostgreSQL history, how long a host's claim on an "
                            "item lasts without renewal (renewed while it runs) before another host may take it over")
    isolation: Literal["none", "worktree"] = Field(
        "none", description="worktree: each item in its own git worktree on branch ralph/<loop>/<item>")

    @model_validator(mode="after")
    def _one_source(self) -> Batch:
        given = [k for k in ("items", "items_file", "items_command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of items, items_file or items_command")
        return self


class Telemetry(Model):
    """Defaults for the standard ``OTEL_*`` variables, which win when set."""

    enabled: bool = Field(True, description="false: no spans, metrics or logs at all (like OTEL_SDK_DISABLED)")
    exporter: str | None = Field(None, description="like OTEL_TRACES_EXPORTER: otlp, console, none")
    metrics_exporter: str | None = Field(None, description="like OTEL_METRICS_EXPORTER: otlp, console, none")
    logs_exporter: str | None = Field(None, description="like OTEL_LOGS_EXPORTER: otlp, console, none")
    endpoint: str | None = Field(None, description="like OTEL_EXPORTER_OTLP_ENDPOINT")
    protocol: Literal["http/protobuf", "grpc"] | None = Field(None, description="like OTEL_EXPORTER_OTLP_PROTOCOL")
    service_name: str | None = Field(None, description="like OTEL_SERVICE_NAME (default: ralph)")
    file: bool = Field(True, description="write traces.jsonl in the state folder")
    trace_per: Literal["run", "session"] = Field(
        "run", description="run: one trace per run; session: each iteration roots its own trace, linked to "
        "the run's (for backends such as Phoenix that group one trace into one session)")
    capture_content: bool = Field(
        False, description="put the prompt, the agent's final text and its tool calls' input and output into "
        "spans (like OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true, which wins when set)")


class Git(Model):
    snapshots: bool = Field(True, description="in a git work tree, snapshot it before and after every "
                            "iteration under refs/ralph/ (never touching HEAD, index or files)")


class LoopFile(Model):
    name: str = Field(pattern=NAME_RE, max_length=100)
    title: str | None = Field(None, description="session title template")
    workdir: str | None = Field(None, description="relative to this file; default: the current folder; "
                                "{item} gives each batch item its own folder")
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    agent: Agent
    steps: Steps = Steps()
    until: Until = Until()
    batch: Batch | None = None
    telemetry: Telemetry = Telemetry()
    git: Git = Git()

    @field_validator("title")
    @classmethod
    def _title(cls, value: str | None) -> str | None:
        if value is not None:
            bad = unknown_placeholders(value)
            if bad:
                known = ", ".join("{" + p + "}" for p in PLACEHOLDERS if p not in PROMPT_ONLY)
                raise ValueError(f"unknown placeholder {{{bad[0]}}} (known: {known})")
            for name in PROMPT_ONLY:
                if "{" + name + "}" in value:
                    raise ValueError(f"{{{name}}} is for prompts, not titles")
            if not value.strip():
                raise ValueError("the title is empty")
        return value

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str | None) -> str | None:
        if value is not None:
            bad = [p for p in PLACEHOLDER_RE.findall(value) if p != "item"]
            if bad:
                raise ValueError(f"unknown placeholder {{{bad[0]}}} in workdir (only {{item}} is known here)")
        return value


def json_schema() -> dict[str, Any]:
    schema = LoopFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ralph loop file"
    return schema

"""The ``custom`` preset's section of the loop file (``agent.custom``): an agent CLI wired in YAML.

``argv`` (and ``resume_argv``, for a retry) with placeholders; how the prompt reaches the agent;
whether its output is JSON lines, and where in each event the assistant's text, the agent's own
session ID, tokens and cost are (pointers such as ``$.message.content[*].text``, optionally only
for events matching ``where``), and which events start and end the agent's tool calls. Pointers
are parsed here, once, so a bad one is an error at its key's line before anything runs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

ARGV_PLACEHOLDERS = ("prompt_file", "model", "session_id", "session_uuid", "agent_session_id")
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SEGMENT_RE = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+|\*)\]|\[(['\"])(.*?)\3\]")

Segment = str | int | None  # a key, an index, or None for every element ([*])


def parse_pointer(text: str) -> tuple[Segment, ...]:
    """``$.a.b[0].c``, ``$.a[*].b``, ``$['odd key']``; a bare ``a.b`` means ``$.a.b``."""
    source = text.strip()
    rest = source[1:] if source.startswith("$") else "." + source
    segments: list[Segment] = []
    pos = 0
    while pos < len(rest):
        match = _SEGMENT_RE.match(rest, pos)
        if not match:
            raise ValueError(f"{text!r} is not a pointer like $.message.content[*].text (at {rest[pos:]!r})")
        key, index, _, quoted = match.groups()
        segments.append(key if key is not None else quoted if quoted is not None else
                        None if index == "*" else int(index))
        pos = match.end()
    return tuple(segments)


def resolve(value: Any, segments: tuple[Segment, ...]) -> list[Any]:
    """Every value the pointer reaches in ``value`` (``[*]`` fans out)."""
    found = [value]
    for segment in segments:
        step: list[Any] = []
        for item in found:
            if segment is None:
                step.extend(item if isinstance(item, list) else item.values() if isinstance(item, dict) else [])
            elif isinstance(segment, int):
                if isinstance(item, list) and -len(item) <= segment < len(item):
                    step.append(item[segment])
            elif isinstance(item, dict) and segment in item:
                step.append(item[segment])
        found = step
    return found


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


def _pointer_shorthand(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class _Where(_Model):
    where: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="pointer -> value the event must have, e.g. {type: assistant}")

    @field_validator("where")
    @classmethod
    def _where(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            parse_pointer(key)
        return value

    def matches(self, event: dict[str, Any]) -> bool:
        return all(wanted in resolve(event, parse_pointer(key)) for key, wanted in self.where.items())


def _pointer(value: str | None) -> str | None:
    if value is not None:
        parse_pointer(value)
    return value


class Pointer(_Where):
    """Where a value is in an event; with ``where``, only in events whose pointers equal the values."""

    path: str = Field(description="e.g. $.message.content[*].text")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        parse_pointer(value)
        return value

    def values(self, event: dict[str, Any]) -> list[Any]:
        return resolve(event, parse_pointer(self.path)) if self.matches(event) else []


def first(event: dict[str, Any], path: str | None) -> Any:
    """The first value ``path`` reaches in the event (None: none, or no pointer)."""
    found = resolve(event, parse_pointer(path)) if path is not None else []
    return found[0] if found else None


class ToolStart(_Where):
    """An event that starts a tool call (one call an event): pointers to its ID, name and input."""

    id: str = Field(description="the call's ID, e.g. $.tool_id (pairs it with its tool_end event)")
    name: str = Field(description="the tool's name, e.g. $.tool_name")
    input: str | None = Field(None, description="its input (a span's content: only with content capture)")

    @field_validator("id", "name", "input")
    @classmethod
    def _pointers(cls, value: str | None) -> str | None:
        return _pointer(value)


class ToolEnd(_Where):
    """An event that ends a tool call: pointers to its ID, output and error."""

    id: str = Field(description="the call's ID, e.g. $.tool_id")
    output: str | None = Field(None, description="its output (a span's content: only with content capture)")
    error: str | None = Field(None, description="a value here (not null, false, 0 or empty) fails the call; "
                              "text is its error message")

    @field_validator("id", "output", "error")
    @classmethod
    def _pointers(cls, value: str | None) -> str | None:
        return _pointer(value)


PointerSpec = Annotated[Pointer, BeforeValidator(_pointer_shorthand)]


def _check_argv(value: tuple[str, ...], allowed: tuple[str, ...]) -> tuple[str, ...]:
    if not value or not value[0]:
        raise ValueError("needs at least the executable")
    for arg in value:
        for name in PLACEHOLDER_RE.findall(arg):
            if name not in allowed:
                known = ", ".join("{" + p + "}" for p in allowed)
                raise ValueError(f"unknown placeholder {{{name}}} (known here: {known})")
    return value


class CustomAgent(_Model):
    """An agent without a preset. Order matters: each field is checked against those above it."""

    prompt: Literal["stdin", "arg", "file"] = Field(
        "stdin", description="stdin; arg: the last argument; file: written to a file, its path in {prompt_file}")
    events: Literal["jsonl", "text"] = Field(
        "text", description="jsonl: one JSON event a line, read with the pointers; text: every line counts")
    text: PointerSpec | None = Field(None, description="jsonl: the assistant's text (counts for output_contains)")
    text_deltas: bool = Field(False, description="jsonl: the text comes in pieces (streamed deltas), joined "
                              "into lines before they show and count")
    session_id: PointerSpec | None = Field(None, description="jsonl: the agent's own session ID")
    tokens_in: PointerSpec | None = Field(None, description="jsonl: input tokens (summed over events)")
    tokens_out: PointerSpec | None = Field(None, description="jsonl: output tokens (summed over events)")
    cost_usd: PointerSpec | None = Field(None, description="jsonl: cost in USD (summed over events)")
    tool_start: ToolStart | None = Field(None, description="jsonl: events that start a tool call (tool spans)")
    tool_end: ToolEnd | None = Field(None, description="jsonl: events that end one")
    argv: tuple[str, ...] = Field(description="the command; placeholders {prompt_file} {model} {session_id} "
                                  "{session_uuid}")
    resume_argv: tuple[str, ...] | None = Field(
        None, description="a retry in the same session, e.g. with {agent_session_id} (from the session_id pointer)")

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        _check_argv(value, tuple(p for p in ARGV_PLACEHOLDERS if p != "agent_session_id"))
        if info.data.get("prompt") == "file" and not any("{prompt_file}" in a for a in value):
            raise ValueError("with `prompt: file` the argv needs {prompt_file} where the file's path goes")
        return value

    @field_validator("resume_argv")
    @classmethod
    def _resume_argv(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        if value is not None:
            _check_argv(value, ARGV_PLACEHOLDERS)
            if info.data.get("prompt") == "file" and not any("{prompt_file}" in a for a in value):
                raise ValueError("with `prompt: file` the resume_argv needs {prompt_file} too")
            if any("{agent_session_id}" in a for a in value) and info.data.get("session_id") is None:
                raise ValueError("{agent_session_id} needs a `session_id` pointer to learn it from the events")
        return value

    @field_validator("text", "session_id", "tokens_in", "tokens_out", "cost_usd", "tool_start", "tool_end")
    @classmethod
    def _jsonl_only(cls, value: _Where | None, info: ValidationInfo) -> _Where | None:
        if value is not None and info.data.get("events") != "jsonl":
            raise ValueError("pointers read JSON events: set `events: jsonl`")
        return value

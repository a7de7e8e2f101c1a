"""The attribute names ralph's spans share with tracing backends, in one place.

Followed (pinned in docs/CONTRACT.md and README "Tracing backends"):

- OpenTelemetry GenAI semantic conventions **v1.37.0** (``gen_ai.*``; ``gen_ai.provider.name``
  replaced ``gen_ai.system`` in that version): the agent step is an ``invoke_agent`` span, each tool
  call of the agent an ``execute_tool`` span named ``execute_tool {gen_ai.tool.name}``.
- OpenInference semantic conventions **0.1.42** (what Arize Phoenix 20.26.1 ships): the span kind,
  ``llm.*`` token counts and model, ``session.id``, ``input.value`` / ``output.value``, ``tool.name``.

Content (the prompt, the model's final text, tool inputs and outputs) goes into spans only on
request: ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` (the conventions' switch) or
``telemetry: {capture_content: true}``; each value is cut at ``CONTENT_LIMIT`` characters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ralph.agents.base import ToolCall
    from ralph.config import Telemetry as TelemetryConfig
    from ralph.session import Session
    from ralph.telemetry import Span, Telemetry

GENAI_SEMCONV_VERSION = "1.37.0"
OPENINFERENCE_SEMCONV_VERSION = "0.1.42"
CONTENT_LIMIT = 16_384  # characters of one captured value; more is cut and marked
TRUNCATED = " …[truncated]"
CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

# OpenTelemetry GenAI
OPERATION = "gen_ai.operation.name"
AGENT_NAME = "gen_ai.agent.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CONVERSATION = "gen_ai.conversation.id"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"  # opt-in content
TOOL_RESULT = "gen_ai.tool.call.result"  # opt-in content
INVOKE_AGENT, EXECUTE_TOOL = "invoke_agent", "execute_tool"

# OpenInference
SPAN_KIND = "openinference.span.kind"
SESSION = "session.id"
MODEL_NAME = "llm.model_name"
LLM_PROVIDER = "llm.provider"
PROMPT_TOKENS = "llm.token_count.prompt"
COMPLETION_TOKENS = "llm.token_count.completion"
TOTAL_TOKENS = "llm.token_count.total"
INPUT_VALUE, OUTPUT_VALUE = "input.value", "output.value"
INPUT_MIME, OUTPUT_MIME = "input.mime_type", "output.mime_type"
OI_TOOL_NAME = "tool.name"

# ralph's own
AGENT_SESSION = "ralph.agent.session_id"
ITERATION_INPUT_TOKENS = "ralph.usage.input_tokens"  # the iteration's sum over its agent attempts
ITERATION_OUTPUT_TOKENS = "ralph.usage.output_tokens"

CHAIN, AGENT, TOOL, EVALUATOR, LLM = "CHAIN", "AGENT", "TOOL", "EVALUATOR", "LLM"
CHAT = "chat"
# A check step judges whether the loop is done; before/after/exec steps are plain work in the chain.
STEP_KINDS = {"agent": AGENT, "check": EVALUATOR}


def capture_content(config: TelemetryConfig, env: Mapping[str, str]) -> bool:
    """The convention's variable wins when set (like every ``OTEL_*``), else the loop file's key."""
    raw = (env.get(CAPTURE_ENV) or "").strip().lower()
    if raw:
        return raw in ("1", "true", "yes", "on")
    return config.capture_content


def truncate(text: str) -> str:
    return text if len(text) <= CONTENT_LIMIT else text[:CONTENT_LIMIT] + TRUNCATED


def run_attributes() -> dict[str, Any]:
    return {SPAN_KIND: CHAIN}


def iteration_attributes(session: Session) -> dict[str, Any]:
    return {SPAN_KIND: CHAIN, CONVERSATION: session.id}


def step_attributes(kind: str, session: Session) -> dict[str, Any]:
    """What a step span gets when it starts, by step kind."""
    attributes: dict[str, Any] = {SPAN_KIND: STEP_KINDS.get(kind, CHAIN)}
    if kind == "agent":
        attributes.update({OPERATION: INVOKE_AGENT, AGENT_NAME: session.loop, CONVERSATION: session.id})
    return attributes


def agent_result(tel: Telemetry, span: Span, session: Session, *, started: float, provider: str | None,
                 model: str | None, response_model: str | None, tokens_in: int | None, tokens_out: int | None,
                 agent_session_id: str | None, prompt: str | None, output: str | None, capture: bool) -> None:
    """An agent attempt's span once the agent ended: models, this attempt's tokens, content if asked.

    When the agent reported tokens, a ``chat {model}`` LLM child span from ``started`` to now carries
    the attempt's model usage too: Phoenix (and others) count tokens and cost from LLM spans only."""
    usage = {
        PROVIDER: provider, LLM_PROVIDER: provider, REQUEST_MODEL: model, RESPONSE_MODEL: response_model,
        MODEL_NAME: response_model or model, INPUT_TOKENS: tokens_in, OUTPUT_TOKENS: tokens_out,
        PROMPT_TOKENS: tokens_in, COMPLETION_TOKENS: tokens_out,
        TOTAL_TOKENS: (tokens_in or 0) + (tokens_out or 0) if tokens_in is not None or tokens_out is not None
        else None,
    }
    span.set_many({**usage, AGENT_SESSION: agent_session_id})
    if tokens_in is not None or tokens_out is not None:
        name = " ".join(p for p in (CHAT, response_model or model) if p)
        llm = tel.span(name, {**usage, SPAN_KIND: LLM, OPERATION: CHAT, SESSION: session.id,
                              CONVERSATION: session.id}, parent=span, start=started)
        llm.end()
    if capture:
        if prompt is not None:
            span.set_many({INPUT_VALUE: truncate(prompt), INPUT_MIME: "text/plain"})
        if output is not None:
            span.set_many({OUTPUT_VALUE: truncate(output), OUTPUT_MIME: "text/plain"})


def tool_spans(tel: Telemetry, parent: Span, session: Session, calls: Iterable[ToolCall], capture: bool) -> None:
    """One ``execute_tool`` child span per tool call, with the call's own start and end times."""
    for call in calls:
        attributes: dict[str, Any] = {
            SPAN_KIND: TOOL, OPERATION: EXECUTE_TOOL, TOOL_NAME: call.name, OI_TOOL_NAME: call.name,
            TOOL_CALL_ID: call.call_id, SESSION: session.id, CONVERSATION: session.id,
        }
        if capture:
            if call.input is not None:
                attributes.update({TOOL_ARGUMENTS: truncate(call.input), INPUT_VALUE: truncate(call.input),
                                   INPUT_MIME: _mime(call.input)})
            if call.output is not None:
                attributes.update({TOOL_RESULT: truncate(call.output), OUTPUT_VALUE: truncate(call.output),
                                   OUTPUT_MIME: _mime(call.output)})
        span = tel.span(f"{EXECUTE_TOOL} {call.name}", attributes, parent=parent, start=call.start)
        # The tool's own error text may quote what it ran: only with content capture.
        span.end(None if call.ok else "tool_error", (call.error if capture else None) or "the tool failed",
                 at=max(call.end, call.start))


def _mime(text: str) -> str:
    if text[:1] in "{[":
        try:
            json.loads(text)
        except ValueError:
            return "text/plain"
        return "application/json"
    return "text/plain"

"""The wire formats of tests/support/scripted_llm.py (stdlib only): a scripted turn, and per wire one
small encoder answering it the way that API does.

- ``chat``: OpenAI chat completions, ``POST /v1/chat/completions`` (SSE when ``stream``, ``usage`` in
  the last chunk, ``[DONE]``); ``GET /v1/models`` lists the server's model. opencode, kilo, copilot, pi, qwen.
- ``anthropic``: the Messages API, ``POST /v1/messages`` (message_start, content_block_*,
  message_delta, message_stop when ``stream``); ``/v1/messages/count_tokens``. claude.
- ``responses``: the OpenAI Responses API, ``POST /v1/responses``, always streamed (response.created,
  response.output_item.*, response.output_text.delta, response.completed with ``usage``). codex.
- ``gemini``: the Gemini API, ``POST /v1beta/models/M:streamGenerateContent?alt=sse`` (chunks of
  ``GenerateContentResponse``), ``:generateContent`` (one JSON document), ``:countTokens``. gemini.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

Wire = Literal["chat", "anthropic", "responses", "gemini"]
Json = dict[str, Any]
# A reply: (status, JSON body, extra headers), or the frames of an SSE stream.
Reply = tuple[int, Json, dict[str, str]] | Iterator[str]


@dataclass
class Turn:
    """One scripted model reply: text and/or tool calls; or an HTTP error (``status`` not 200)."""

    text: str = ""
    tool_calls: list[tuple[str, Json]] = field(default_factory=list)
    input_tokens: int = 100
    output_tokens: int = 20
    delay: float = 0.0  # seconds to wait before answering (timeouts)
    status: int = 200
    error: str = ""  # the error's message ("" = the wire's usual one)
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers (retry-after, ...)
    resets_at: int | None = None  # a subscription usage limit, reset at this epoch second (429)


# -- encoders: one per wire -------------------------------------------------------------------------


def sse(data: Any, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"


def pieces(s: str) -> list[str]:
    return [s[i:i + 16] for i in range(0, len(s), 16)]  # several deltas, like a real model


class Encoder:
    """What a wire answers: side routes, which requests are model calls, errors and replies."""

    root = "/v1"  # of base_url

    def side(self, method: str, path: str, model: str) -> Json | None:
        return None  # a fixed answer for a route that is not a model call (lists, token counts)

    def model_call(self, path: str, body: Json) -> Json | None:
        raise NotImplementedError  # the body to record, if the request is a model call

    def error(self, turn: Turn) -> Json:
        raise NotImplementedError

    def error_headers(self, turn: Turn) -> dict[str, str]:
        return {}

    def reply(self, turn: Turn, body: Json, model: str, path: str) -> Reply:
        raise NotImplementedError


class _Chat(Encoder):
    def side(self, method: str, path: str, model: str) -> Json | None:
        if method == "GET" and path.endswith("/models"):
            return {"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                                "owned_by": "ralph-tests"}]}
        return None

    def model_call(self, path: str, body: Json) -> Json | None:
        return body if path.endswith("/chat/completions") else None

    def error(self, turn: Turn) -> Json:
        return {"error": {"message": turn.error or "scripted error", "type": "scripted_error", "code": turn.status}}

    def reply(self, turn: Turn, body: Json, model: str, path: str) -> Reply:
        usage = {"prompt_tokens": turn.input_tokens, "completion_tokens": turn.output_tokens,
                 "total_tokens": turn.input_tokens + turn.output_tokens}
        calls = [{"id": "call_" + uuid.uuid4().hex[:16], "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                 for name, args in turn.tool_calls]
        finish = "tool_calls" if calls else "stop"
        cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        if not body.get("stream"):
            message: Json = {"role": "assistant", "content": turn.text or None}
            if calls:
                message["tool_calls"] = calls
            return 200, {"id": cid, "object": "chat.completion", "created": created, "model": model,
                         "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}, {}
        return self._stream(turn, calls, finish, usage, cid, created, model)

    def _stream(self, turn: Turn, calls: list[Json], finish: str, usage: Json, cid: str, created: int,
                model: str) -> Iterator[str]:
        def chunk(delta: Json, finish_reason: str | None = None, **extra: Any) -> str:
            return sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra})

        yield chunk({"role": "assistant", "content": ""})
        for piece in pieces(turn.text):
            yield chunk({"content": piece})
        for i, call in enumerate(calls):
            yield chunk({"tool_calls": [{"index": i, **call}]})
        yield chunk({}, finish, usage=usage)
        yield "data: [DONE]\n\n"


class _Anthropic(Encoder):
    root = ""

    def side(self, method: str, path: str, model: str) -> Json | None:
        if method == "HEAD":
            return {}
        if method == "POST" and path.endswith("/messages/count_tokens"):
            return {"input_tokens": 100}
        return None

    def model_call(self, path: str, body: Json) -> Json | None:
        return body if path.endswith("/v1/messages") else None

    def error(self, turn: Turn) -> Json:
        kind = "rate_limit_error" if turn.status == 429 else "invalid_request_error"
        message = turn.error or ("Rate limited" if turn.resets_at is not None else "scripted error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def error_headers(self, turn: Turn) -> dict[str, str]:
        if turn.resets_at is None:
            return {}
        return {"anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-reset": str(turn.resets_at),
                "anthropic-ratelimit-unified-representative-claim": "five_hour", "retry-after": "1"}

    def reply(self, turn: Turn, body: Json, model: str, path: str) -> Reply:
        content: list[Json] = [{"type": "text", "text": turn.text}] if turn.text else []
        content += [{"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": name, "input": args}
                    for name, args in turn.tool_calls]
        message = {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant", "model": model,
                   "content": content, "stop_reason": "tool_use" if turn.tool_calls else "end_turn",
                   "stop_sequence": None,
                   "usage": {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
        return self._stream(message) if body.get("stream") else (200, message, {})

    def _stream(self, message: Json) -> Iterator[str]:
        def event(data: Json) -> str:
            return sse(data, data["type"])

        usage = message["usage"]
        yield event({"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                                          "usage": {**usage, "output_tokens": 1}}})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                yield event({"type": "content_block_start", "index": index,
                             "content_block": {"type": "text", "text": ""}})
                for piece in pieces(block["text"]):
                    yield event({"type": "content_block_delta", "index": index,
                                 "delta": {"type": "text_delta", "text": piece}})
            else:
                yield event({"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}})
                yield event({"type": "content_block_delta", "index": index,
                             "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
            yield event({"type": "content_block_stop", "index": index})
        yield event({"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                     "usage": {"output_tokens": usage["output_tokens"]}})
        yield event({"type": "message_stop"})


class _Responses(Encoder):

    def side(self, method: str, path: str, model: str) -> Json | None:
        if method == "GET" and path.endswith("/models"):
            return {"object": "list", "data": [], "models": []}
        return None

    def model_call(self, path: str, body: Json) -> Json | None:
        return body if path.endswith("/responses") else None

    def error(self, turn: Turn) -> Json:
        body: Json = {"message": turn.error or "scripted error", "type": "server_error", "code": None}
        if turn.resets_at is not None:
            body.update(message=turn.error or "The usage limit has been reached", type="usage_limit_reached",
                        plan_type="plus", resets_at=turn.resets_at,
                        resets_in_seconds=max(0, turn.resets_at - int(time.time())))
        return {"error": body}

    def reply(self, turn: Turn, body: Json, model: str, path: str) -> Reply:
        return self._stream(turn, model)  # codex always streams

    def _stream(self, turn: Turn, model: str) -> Iterator[str]:
        def event(data: Json) -> str:
            return sse(data, data["type"])

        response: Json = {"id": "resp_" + uuid.uuid4().hex, "object": "response", "created_at": int(time.time()),
                          "model": model, "status": "in_progress", "output": []}
        yield event({"type": "response.created", "response": response})
        items: list[Json] = []
        if turn.text:
            items.append({"type": "message", "id": "msg_" + uuid.uuid4().hex, "role": "assistant",
                          "status": "completed",
                          "content": [{"type": "output_text", "text": turn.text, "annotations": []}]})
        items += [{"type": "function_call", "id": "fc_" + uuid.uuid4().hex, "status": "completed",
                   "call_id": "call_" + uuid.uuid4().hex[:24], "name": name, "arguments": json.dumps(args)}
                  for name, args in turn.tool_calls]
        for index, item in enumerate(items):
            if item["type"] == "message":
                yield event({"type": "response.output_item.added", "output_index": index,
                             "item": {**item, "status": "in_progress", "content": []}})
                for piece in pieces(turn.text):
                    yield event({"type": "response.output_text.delta", "item_id": item["id"],
                                 "output_index": index, "content_index": 0, "delta": piece})
            else:
                yield event({"type": "response.output_item.added", "output_index": index, "item": item})
            yield event({"type": "response.output_item.done", "output_index": index, "item": item})
        usage = {"input_tokens": turn.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": turn.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": turn.input_tokens + turn.output_tokens}
        yield event({"type": "response.completed",
                     "response": {**response, "status": "completed", "output": items, "usage": usage}})


class _Gemini(Encoder):
    root = ""

    def side(self, method: str, path: str, model: str) -> Json | None:
        return {"totalTokens": 100} if method == "POST" and path.endswith(":countTokens") else None

    def model_call(self, path: str, body: Json) -> Json | None:
        if not path.endswith((":streamGenerateContent", ":generateContent")):
            return None
        return {**body, "model": path.rsplit("/", 1)[-1].split(":")[0]}  # the model is in the path

    def error(self, turn: Turn) -> Json:
        status = "UNAVAILABLE" if turn.status >= 500 else "INVALID_ARGUMENT"
        return {"error": {"code": turn.status, "message": turn.error or "scripted error", "status": status}}

    def reply(self, turn: Turn, body: Json, model: str, path: str) -> Reply:
        usage = {"promptTokenCount": turn.input_tokens, "candidatesTokenCount": turn.output_tokens,
                 "totalTokenCount": turn.input_tokens + turn.output_tokens}
        calls: list[Json] = [{"functionCall": {"name": name, "args": args}} for name, args in turn.tool_calls]
        if not path.endswith(":streamGenerateContent"):
            parts = ([{"text": turn.text}] if turn.text else []) + calls
            return 200, {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP",
                                         "index": 0}], "usageMetadata": usage, "modelVersion": model}, {}
        return self._stream(turn, calls, usage, model)

    def _stream(self, turn: Turn, calls: list[Json], usage: Json, model: str) -> Iterator[str]:
        for piece in pieces(turn.text):
            yield sse({"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}],
                       "modelVersion": model})
        yield sse({"candidates": [{"content": {"role": "model", "parts": calls or [{"text": ""}]},
                                   "finishReason": "STOP", "index": 0}], "usageMetadata": usage, "modelVersion": model})


WIRES: dict[str, Encoder] = {"chat": _Chat(), "anthropic": _Anthropic(), "responses": _Responses(), "gemini": _Gemini()}

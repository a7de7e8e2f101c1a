"""One scripted model API for every agent preset's tests (stdlib only), in each wire format the CLIs speak.

Usage::

    from tests.support.scripted_llm import ScriptedLLM, bash, text

    with ScriptedLLM([bash("env | sort"), text("done")], wire="chat") as srv:
        srv.base_url            # where to point the agent (see WIRES)
        srv.requests            # every model request body, in order
        srv.scripted_requests   # those that consumed (or ran past) the script
        srv.aux_requests        # the side calls

Wires (one small encoder each):

- ``chat``: OpenAI chat completions, ``POST /v1/chat/completions`` (SSE when ``stream``, ``usage`` in
  the last chunk, ``[DONE]``); ``GET /v1/models`` lists ``model``. opencode, kilo, copilot, pi, qwen.
- ``anthropic``: the Messages API, ``POST /v1/messages`` (message_start, content_block_*,
  message_delta, message_stop when ``stream``); ``/v1/messages/count_tokens``. claude.
- ``responses``: the OpenAI Responses API, ``POST /v1/responses``, always streamed (response.created,
  response.output_item.*, response.output_text.delta, response.completed with ``usage``). codex.
- ``gemini``: the Gemini API, ``POST /v1beta/models/M:streamGenerateContent?alt=sse`` (chunks of
  ``GenerateContentResponse``), ``:generateContent`` (one JSON document), ``:countTokens``. gemini.

Each model request the agent makes as its own turn consumes the next scripted turn; once the script
is exhausted the server answers ``final_text``. Side calls the CLIs make on their own (titles,
next-speaker checks, summaries) are told apart by ``is_aux(body)`` and answered ``aux_text`` without
consuming a turn, so the script's order does not depend on timing. The default ``is_aux``:
:func:`is_title_request` (opencode's title generator) for ``chat``, :func:`offers_no_tools` else.
Every reply carries token usage; every response is sent with ``Connection: close`` (opencode waits
for the end of a streamed body otherwise).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = ["ScriptedLLM", "Turn", "bash", "error", "exec_command", "is_title_request", "offers_no_tools",
           "rate_limited", "shell", "text", "tool_call", "tool_use", "usage_limit"]

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


# -- turns ------------------------------------------------------------------------------------------


def text(content: str, **kw: Any) -> Turn:
    return Turn(text=content, **kw)


def tool_call(name: str, arguments: Json, **kw: Any) -> Turn:
    return Turn(tool_calls=[(name, arguments)], **kw)


tool_use = tool_call  # the Messages API's name for it


def bash(command: str, description: str = "Run a command", **kw: Any) -> Turn:
    """A call of the ``bash`` tool (opencode, kilo, copilot, pi name their shell tool so)."""
    return tool_call("bash", {"command": command, "description": description}, **kw)


def shell(command: str, tool: str = "run_shell_command", **kw: Any) -> Turn:
    """A call of the ``run_shell_command`` tool (Gemini CLI and Qwen Code name their shell tool so)."""
    return tool_call(tool, {"command": command, "description": "Run a command", "is_background": False}, **kw)


def exec_command(cmd: str, **kw: Any) -> Turn:
    """A call of codex's shell tool (``exec_command`` in codex 0.169 for a model it has no metadata of)."""
    return tool_call("exec_command", {"cmd": cmd, "tty": False}, **kw)


def error(status: int, message: str = "scripted error", **kw: Any) -> Turn:
    """An HTTP error reply (400, 500, ...) with the wire's error body."""
    return Turn(status=status, error=message, **kw)


def rate_limited(retry_after: float, message: str = "Rate limit reached", retry_after_ms: float | None = None,
                 **kw: Any) -> Turn:
    """A 429 with a ``retry-after`` header (seconds; ``retry-after-ms`` too if given)."""
    headers = {"retry-after": f"{retry_after:g}"}
    if retry_after_ms is not None:
        headers["retry-after-ms"] = f"{retry_after_ms:g}"
    return Turn(status=429, error=message, headers=headers, **kw)


def usage_limit(resets_at: int, message: str = "") -> Turn:
    """A 429 the way a subscription over its limit is refused, until ``resets_at`` (epoch seconds):
    Anthropic's unified rate-limit headers saying ``rejected``; ChatGPT-plan Codex's
    ``usage_limit_reached`` body."""
    return Turn(status=429, error=message, resets_at=resets_at)


def _as_turn(item: Any) -> Turn:
    if isinstance(item, Turn):
        return item
    if isinstance(item, str):
        return Turn(text=item)
    raise TypeError(f"cannot script a turn from {item!r}")


# -- side calls -------------------------------------------------------------------------------------


def offers_no_tools(body: Json) -> bool:
    """Agent turns offer the model tools; a CLI's side calls (titles, checks, summaries) don't."""
    return not body.get("tools")


def is_title_request(body: Json) -> bool:
    """True for opencode's title-generation call: no ``tools`` and a system prompt that starts with
    "You are a title generator" (opencode 1.18.x, kilo)."""
    if body.get("tools"):
        return False
    for msg in body.get("messages", []):
        content = msg.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if msg.get("role") == "system" and isinstance(content, str) and "title generator" in content.lower():
            return True
    return False


# -- encoders: one per wire -------------------------------------------------------------------------


def sse(data: Any, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"


def _pieces(s: str) -> list[str]:
    return [s[i:i + 16] for i in range(0, len(s), 16)]  # several deltas, like a real model


class _Encoder:
    """What a wire answers: side routes, which requests are model calls, errors and replies."""

    root = "/v1"  # of base_url

    def side(self, method: str, path: str, api: ScriptedLLM) -> Json | None:
        return None  # a fixed answer for a route that is not a model call (lists, token counts)

    def model_call(self, path: str, body: Json) -> Json | None:
        raise NotImplementedError  # the body to record, if the request is a model call

    def error(self, turn: Turn) -> Json:
        raise NotImplementedError

    def error_headers(self, turn: Turn) -> dict[str, str]:
        return {}

    def reply(self, turn: Turn, body: Json, model: str, path: str) -> Reply:
        raise NotImplementedError


class _Chat(_Encoder):
    def side(self, method: str, path: str, api: ScriptedLLM) -> Json | None:
        if method == "GET" and path.endswith("/models"):
            return {"object": "list", "data": [{"id": api.model, "object": "model", "created": 0,
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
        for piece in _pieces(turn.text):
            yield chunk({"content": piece})
        for i, call in enumerate(calls):
            yield chunk({"tool_calls": [{"index": i, **call}]})
        yield chunk({}, finish, usage=usage)
        yield "data: [DONE]\n\n"


class _Anthropic(_Encoder):
    root = ""

    def side(self, method: str, path: str, api: ScriptedLLM) -> Json | None:
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
                for piece in _pieces(block["text"]):
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


class _Responses(_Encoder):

    def side(self, method: str, path: str, api: ScriptedLLM) -> Json | None:
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
                for piece in _pieces(turn.text):
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


class _Gemini(_Encoder):
    root = ""

    def side(self, method: str, path: str, api: ScriptedLLM) -> Json | None:
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
        for piece in _pieces(turn.text):
            yield sse({"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}],
                       "modelVersion": model})
        yield sse({"candidates": [{"content": {"role": "model", "parts": calls or [{"text": ""}]},
                                   "finishReason": "STOP", "index": 0}], "usageMetadata": usage, "modelVersion": model})


WIRES: dict[str, _Encoder] = {"chat": _Chat(), "anthropic": _Anthropic(), "responses": _Responses(), "gemini": _Gemini()}


# -- the server -------------------------------------------------------------------------------------


class ScriptedLLM:
    def __init__(self, turns: Iterable[Turn | str] = (), *, wire: Wire = "chat",
                 final_text: str = "Nothing more to do.", aux_text: str = "Scripted",
                 model: str = "scripted-model", is_aux: Callable[[Json], bool] | None = None) -> None:
        self.turns = [_as_turn(t) for t in turns]
        self.wire, self.encoder = wire, WIRES[wire]
        self.final_text, self.aux_text, self.model = final_text, aux_text, model
        self.is_aux = is_aux or (is_title_request if wire == "chat" else offers_no_tools)
        self.requests: list[Json] = []  # every model request body, in order
        self.scripted_requests: list[Json] = []  # those answered from the script (or past its end)
        self.aux_requests: list[Json] = []  # the side calls
        self.headers: list[dict[str, str]] = []  # the request headers of every model request
        self.paths: list[tuple[str, str]] = []  # (method, path) of every request
        self._lock = threading.Lock()
        self._next = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> ScriptedLLM:
        owner = self

        class Handler(_Handler):
            api = owner

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` plus ``/v1`` for the OpenAI wires (what their clients expect)."""
        return f"http://127.0.0.1:{self.port}{self.encoder.root}"

    @property
    def turns_used(self) -> int:
        return self._next

    def next_turn(self, body: Json, headers: dict[str, str]) -> Turn:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            if self.is_aux(body):
                self.aux_requests.append(body)
                return Turn(text=self.aux_text, input_tokens=10, output_tokens=3)
            self.scripted_requests.append(body)
            turn = self.turns[self._next] if self._next < len(self.turns) else Turn(text=self.final_text)
            self._next += 1
            return turn


class _Handler(BaseHTTPRequestHandler):
    api: ScriptedLLM
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.close_connection = True

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self._head(status, {**(headers or {}), "Content-Type": "application/json", "Content-Length": str(len(data))})
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send(self, reply: Reply) -> None:
        if isinstance(reply, tuple):
            self._send_json(*reply)
            return
        self._head(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        self.end_headers()
        for frame in reply:
            self.wfile.write(frame.encode())
            self.wfile.flush()

    def _handle(self, method: str) -> None:
        self.api.paths.append((method, self.path))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        path = self.path.split("?")[0].rstrip("/")
        encoder = self.api.encoder
        side = encoder.side(method, path, self.api)
        if side is not None:
            self._send_json(200, side)
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"error": {"code": 400, "message": "bad json", "type": "invalid_request_error"}})
            return
        body = encoder.model_call(path, body) if method == "POST" else None
        if body is None:
            self._send_json(404, {"error": {"code": 404, "message": f"no route {self.path}", "type": "not_found"}})
            return
        turn = self.api.next_turn(body, dict(self.headers.items()))
        if turn.delay:
            time.sleep(turn.delay)
        if turn.status != 200:
            headers = {**encoder.error_headers(turn), **turn.headers}
            self._send_json(turn.status, encoder.error(turn), headers)
            return
        model = body.get("model") or self.api.model
        self._send(encoder.reply(turn, body, model, path))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

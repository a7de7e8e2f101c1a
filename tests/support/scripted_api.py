"""One scripted model API for the agent presets' tests (stdlib only), in the wire shapes the CLIs speak.

Usage::

    from tests.support.scripted_api import ScriptedAPI, shell, text

    with ScriptedAPI([shell("env | sort"), text("done")], shape="gemini") as api:
        api.base_url            # "http://127.0.0.1:PORT" (gemini) or ".../v1" (openai)
        ...                     # point the agent at it
        api.scripted_requests   # the request bodies that consumed (or ran past) the script

Shapes:

- ``gemini``: the Gemini API. ``POST /v1beta/models/M:streamGenerateContent?alt=sse`` streams SSE
  chunks of ``GenerateContentResponse`` (``candidates[0].content.parts`` with ``text`` or
  ``functionCall``, ``usageMetadata``); ``:generateContent`` answers one JSON document;
  ``:countTokens`` a count. A function call names the CLI's tool (``run_shell_command`` for the
  Gemini CLI).
- ``openai``: OpenAI chat completions, ``POST /v1/chat/completions`` (SSE when ``stream``), with
  ``usage`` in the last chunk; ``GET /v1/models`` lists ``model``.

Every request that is the agent's own turn (:attr:`ScriptedAPI.is_aux` false) consumes the next
scripted turn; once the script is exhausted it answers ``final_text``. Side calls the CLIs make on
their own (a next-speaker check, a title, a summary, a second background call) are told apart by
``is_aux(body)`` and answered ``aux_text`` without consuming a turn, so the script's order does not
depend on timing. The default ``is_aux``: a request that offers the model no tools.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = ["ScriptedAPI", "Turn", "error", "offers_no_tools", "shell", "text", "tool_call"]

Shape = Literal["gemini", "openai"]


@dataclass
class Turn:
    """One scripted model reply: text, and/or tool calls; or an HTTP error."""

    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    input_tokens: int = 100
    output_tokens: int = 20
    status: int = 200  # else: an HTTP error with an API-shaped error body
    error: str = ""


def text(content: str, **kw: Any) -> Turn:
    return Turn(text=content, **kw)


def tool_call(name: str, arguments: dict[str, Any], **kw: Any) -> Turn:
    return Turn(tool_calls=[(name, arguments)], **kw)


def shell(command: str, tool: str = "run_shell_command", **kw: Any) -> Turn:
    """A call of the CLI's shell tool (``run_shell_command``: Gemini CLI and Qwen Code name it so)."""
    return tool_call(tool, {"command": command, "description": "Run a command", "is_background": False}, **kw)


def error(status: int, message: str = "scripted error") -> Turn:
    return Turn(status=status, error=message)


def offers_no_tools(body: dict[str, Any]) -> bool:
    """Agent turns offer the model tools; a CLI's side calls (titles, checks, summaries) don't."""
    return not body.get("tools")


class ScriptedAPI:
    def __init__(self, turns: Iterable[Turn] = (), *, shape: Shape, final_text: str = "Nothing more to do.",
                 aux_text: str = "Scripted", model: str = "scripted-model",
                 is_aux: Callable[[dict[str, Any]], bool] = offers_no_tools) -> None:
        self.turns = list(turns)
        self.shape, self.final_text, self.aux_text, self.model, self.is_aux = shape, final_text, aux_text, model, is_aux
        self.requests: list[dict[str, Any]] = []  # every model request body, in order
        self.scripted_requests: list[dict[str, Any]] = []
        self.aux_requests: list[dict[str, Any]] = []
        self.paths: list[tuple[str, str]] = []  # (method, path) of every request
        self._lock = threading.Lock()
        self._next = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> ScriptedAPI:
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

    def __enter__(self) -> ScriptedAPI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        root = f"http://127.0.0.1:{self._server.server_address[1]}"
        return root + "/v1" if self.shape == "openai" else root

    def _reply_for(self, body: dict[str, Any]) -> Turn:
        with self._lock:
            self.requests.append(body)
            if self.is_aux(body):
                self.aux_requests.append(body)
                return Turn(text=self.aux_text, input_tokens=10, output_tokens=3)
            self.scripted_requests.append(body)
            turn = self.turns[self._next] if self._next < len(self.turns) else Turn(text=self.final_text)
            self._next += 1
            return turn


class _Handler(BaseHTTPRequestHandler):
    api: ScriptedAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _event(self, obj: Any) -> None:
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()

    def _not_found(self) -> None:
        self._send_json(404, {"error": {"code": 404, "message": f"no route {self.path}", "status": "NOT_FOUND"}})

    def do_GET(self) -> None:
        self.api.paths.append(("GET", self.path))
        path = self.path.split("?")[0].rstrip("/")
        if self.api.shape == "openai" and path.endswith("/models"):
            self._send_json(200, {"object": "list", "data": [
                {"id": self.api.model, "object": "model", "created": 0, "owned_by": "ralph-tests"}]})
        else:
            self._not_found()

    def do_POST(self) -> None:
        self.api.paths.append(("POST", self.path))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0].rstrip("/")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"error": {"code": 400, "message": "bad json"}})
            return
        if self.api.shape == "gemini":
            self._gemini(path, body)
        elif path.endswith("/chat/completions"):
            self._openai(body)
        else:
            self._not_found()

    # -- Gemini API ------------------------------------------------------------------------------
    def _gemini(self, path: str, body: dict[str, Any]) -> None:
        method = path.rsplit(":", 1)[-1] if ":" in path else ""
        if method == "countTokens":
            self._send_json(200, {"totalTokens": 100})
            return
        if method not in ("streamGenerateContent", "generateContent"):
            self._not_found()
            return
        body = {**body, "model": path.rsplit("/", 1)[-1].split(":")[0]}
        turn = self.api._reply_for(body)
        if turn.status != 200:
            self._send_json(turn.status, {"error": {"code": turn.status, "message": turn.error,
                                                    "status": "UNAVAILABLE" if turn.status >= 500 else "INVALID_ARGUMENT"}})
            return
        usage = {"promptTokenCount": turn.input_tokens, "candidatesTokenCount": turn.output_tokens,
                 "totalTokenCount": turn.input_tokens + turn.output_tokens}
        parts: list[dict[str, Any]] = [{"functionCall": {"name": name, "args": args}} for name, args in turn.tool_calls]
        if method == "generateContent":
            whole = ([{"text": turn.text}] if turn.text else []) + parts
            self._send_json(200, {"candidates": [{"content": {"role": "model", "parts": whole}, "finishReason": "STOP",
                                                  "index": 0}], "usageMetadata": usage, "modelVersion": body["model"]})
            return
        self._start_sse()
        chunks = [turn.text[i:i + 16] for i in range(0, len(turn.text), 16)]
        for piece in chunks:  # several deltas, like a real model
            self._event({"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}],
                         "modelVersion": body["model"]})
        self._event({"candidates": [{"content": {"role": "model", "parts": parts or [{"text": ""}]},
                                     "finishReason": "STOP", "index": 0}],
                     "usageMetadata": usage, "modelVersion": body["model"]})

    # -- OpenAI chat completions -----------------------------------------------------------------
    def _openai(self, body: dict[str, Any]) -> None:
        turn = self.api._reply_for(body)
        model = body.get("model") or self.api.model
        if turn.status != 200:
            self._send_json(turn.status, {"error": {"message": turn.error, "type": "scripted_error",
                                                    "code": turn.status}})
            return
        usage = {"prompt_tokens": turn.input_tokens, "completion_tokens": turn.output_tokens,
                 "total_tokens": turn.input_tokens + turn.output_tokens}
        calls = [{"id": f"call_{uuid.uuid4().hex[:16]}", "type": "function",
                  "function": {"name": name, "arguments": json.dumps(args)}} for name, args in turn.tool_calls]
        finish = "tool_calls" if calls else "stop"
        cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
            if calls:
                message["tool_calls"] = calls
            self._send_json(200, {"id": cid, "object": "chat.completion", "created": created, "model": model,
                                  "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                                  "usage": usage})
            return
        self._start_sse()

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, usage: dict[str, int] | None = None) -> None:
            obj: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            if usage is not None:
                obj["usage"] = usage
            self._event(obj)

        chunk({"role": "assistant", "content": ""})
        for i in range(0, len(turn.text), 16):
            chunk({"content": turn.text[i:i + 16]})
        for i, call in enumerate(calls):
            chunk({"tool_calls": [{"index": i, **call}]})
        chunk({}, finish, usage)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

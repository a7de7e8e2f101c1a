"""A scripted OpenAI-compatible chat-completions server for tests (stdlib only).

Usage::

    from tests.support.llm_server import ScriptedLLM, text, tool_call

    turns = [
        tool_call("bash", {"command": "env | sort", "description": "Print env"}),
        text("all done <promise>COMPLETE</promise>"),
    ]
    with ScriptedLLM(turns) as srv:
        srv.base_url          # "http://127.0.0.1:PORT/v1"
        ...                   # point the agent at it
        srv.requests          # every JSON request body received, in order
        srv.scripted_requests # only the requests that consumed (or ran past) the script

Each ``POST /v1/chat/completions`` that is *not* an auxiliary request consumes the next
scripted turn. When the script is exhausted the server answers ``final_text``.

Auxiliary requests (opencode's session-title generator, which runs on the "small model"
in parallel with the main turn) are detected by :func:`is_title_request` and answered
with ``title_text`` without consuming a turn, so the scripted order stays deterministic
whatever the timing.

Replies stream as Server-Sent Events when the request has ``"stream": true`` (each
response is closed with ``Connection: close``), otherwise they are one JSON document.
Every reply carries ``usage`` so the client can report tokens.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ScriptedLLM", "Turn", "bash", "error", "is_title_request", "rate_limited", "text", "tool_call"]


@dataclass
class Turn:
    """One scripted assistant reply: text, or one or more tool calls (with optional text)."""

    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    prompt_tokens: int = 100
    completion_tokens: int = 20
    delay: float = 0.0  # seconds to wait before answering (to test timeouts)
    status: int = 200  # non-200: answer with an OpenAI-style error body instead
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers (retry-after)


def text(content: str, **kw: Any) -> Turn:
    return Turn(text=content, **kw)


def tool_call(name: str, arguments: dict[str, Any], **kw: Any) -> Turn:
    return Turn(tool_calls=[(name, arguments)], **kw)


def bash(command: str, description: str = "Run a command", **kw: Any) -> Turn:
    """A call of opencode's ``bash`` tool."""
    return tool_call("bash", {"command": command, "description": description}, **kw)


def error(status: int, message: str = "scripted error", **kw: Any) -> Turn:
    """An HTTP error reply (e.g. 400, 429, 500) with an OpenAI-style error body."""
    return Turn(status=status, error=message, **kw)


def rate_limited(retry_after: float, message: str = "Rate limit reached", retry_after_ms: float | None = None,
                 **kw: Any) -> Turn:
    """A 429 with a ``retry-after`` header (seconds; ``retry-after-ms`` too if given), as an
    OpenAI-compatible API refuses."""
    headers = {"retry-after": f"{retry_after:g}"}
    if retry_after_ms is not None:
        headers["retry-after-ms"] = f"{retry_after_ms:g}"
    return Turn(status=429, error=message, headers=headers, **kw)


def _as_turn(item: Any) -> Turn:
    if isinstance(item, Turn):
        return item
    if isinstance(item, str):
        return Turn(text=item)
    if isinstance(item, dict):
        if "tool" in item:
            return Turn(
                text=item.get("text", ""),
                tool_calls=[(item["tool"], item.get("arguments", item.get("args", {})))],
            )
        return Turn(**item)
    raise TypeError(f"cannot script a turn from {item!r}")


def _message_text(msg: dict[str, Any]) -> str:
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def is_title_request(body: dict[str, Any]) -> bool:
    """True for opencode's title-generation call.

    opencode 1.18.x sends it with no ``tools`` and a system prompt that starts with
    "You are a title generator".
    """
    if body.get("tools"):
        return False
    for msg in body.get("messages", []):
        if msg.get("role") == "system" and "title generator" in _message_text(msg).lower():
            return True
    return False


class ScriptedLLM:
    def __init__(
        self,
        turns: Iterable[Any] = (),
        *,
        final_text: str = "Nothing more to do.",
        title_text: str = "Scripted title",
        model: str = "scripted-model",
    ) -> None:
        self.turns: list[Turn] = [_as_turn(t) for t in turns]
        self.final_text = final_text
        self.title_text = title_text
        self.model = model
        self.requests: list[dict[str, Any]] = []  # every chat-completions body, in order
        self.scripted_requests: list[dict[str, Any]] = []  # those answered from the script
        self.aux_requests: list[dict[str, Any]] = []  # title generation etc.
        self.other_requests: list[tuple[str, str]] = []  # (method, path) of anything else
        self._lock = threading.Lock()
        self._next = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> ScriptedLLM:
        owner = self

        class Handler(_Handler):
            llm = owner

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
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
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def turns_used(self) -> int:
        return self._next

    # -- scripting -------------------------------------------------------------------
    def _reply_for(self, body: dict[str, Any]) -> Turn:
        with self._lock:
            self.requests.append(body)
            if is_title_request(body):
                self.aux_requests.append(body)
                return Turn(text=self.title_text, prompt_tokens=10, completion_tokens=3)
            self.scripted_requests.append(body)
            if self._next < len(self.turns):
                turn = self.turns[self._next]
                self._next += 1
                return turn
            self._next += 1
            return Turn(text=self.final_text)


class _Handler(BaseHTTPRequestHandler):
    llm: ScriptedLLM
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path.endswith("/models"):
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [{"id": self.llm.model, "object": "model", "created": 0, "owned_by": "ralph-tests"}],
                },
            )
            return
        self.llm.other_requests.append(("GET", self.path))
        self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0].rstrip("/")
        if not path.endswith("/chat/completions"):
            self.llm.other_requests.append(("POST", self.path))
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
            return
        turn = self.llm._reply_for(body)
        if turn.delay:
            time.sleep(turn.delay)
        model = body.get("model") or self.llm.model
        if turn.status != 200:
            self._send_json(
                turn.status,
                {"error": {"message": turn.error or "scripted error", "type": "scripted_error", "code": turn.status}},
                turn.headers,
            )
        elif body.get("stream"):
            self._stream(turn, model)
        else:
            self._send_json(200, _completion(turn, model))

    def _stream(self, turn: Turn, model: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict | None = None) -> None:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage is not None:
                obj["usage"] = usage
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        chunk({"role": "assistant", "content": ""})
        for i in range(0, len(turn.text), 16):  # several deltas, like a real model
            chunk({"content": turn.text[i : i + 16]})
        for i, (name, args) in enumerate(turn.tool_calls):
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": f"call_{uuid.uuid4().hex[:16]}",
                            "type": "function",
                            "function": {"name": name, "arguments": json.dumps(args)},
                        }
                    ]
                }
            )
        finish = "tool_calls" if turn.tool_calls else "stop"
        chunk({}, finish, _usage(turn))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _usage(turn: Turn) -> dict[str, int]:
    return {
        "prompt_tokens": turn.prompt_tokens,
        "completion_tokens": turn.completion_tokens,
        "total_tokens": turn.prompt_tokens + turn.completion_tokens,
    }


def _completion(turn: Turn, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if turn.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{uuid.uuid4().hex[:16]}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for name, args in turn.tool_calls
        ]
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if turn.tool_calls else "stop",
            }
        ],
        "usage": _usage(turn),
    }

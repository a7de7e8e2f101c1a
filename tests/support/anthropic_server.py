"""A scripted Anthropic Messages API server for tests (stdlib only), for the real ``claude`` CLI.

Usage::

    from tests.support.anthropic_server import ScriptedAnthropic, text, tool_use

    with ScriptedAnthropic([tool_use("Bash", {"command": "env"}), text("done")]) as srv:
        env = {"ANTHROPIC_BASE_URL": srv.base_url, "ANTHROPIC_API_KEY": "test-key", ...}
        ...
        srv.scripted_requests   # the request bodies that consumed a turn, in order

Each ``POST /v1/messages`` that offers tools (the agent's own turns) consumes the next scripted
turn; once the script is exhausted it answers ``final_text``. Requests without tools (Claude
Code's side calls: titles, topic detection, ...) get ``aux_text`` and consume nothing, so the
scripted order does not depend on timing. Replies stream as Server-Sent Events in the Messages
API shape (message_start, content_block_*, message_delta, message_stop) when ``"stream": true``,
else they are one JSON message. Every reply carries ``usage``.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["ScriptedAnthropic", "Turn", "claude_env", "error", "text", "tool_use", "usage_limit"]


@dataclass
class Turn:
    text: str = ""
    tool_uses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    input_tokens: int = 100
    output_tokens: int = 20
    status: int = 200  # else: an HTTP error with a Messages-API error body
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers (rate limits)


def text(content: str, **kw: Any) -> Turn:
    return Turn(text=content, **kw)


def tool_use(name: str, arguments: dict[str, Any], **kw: Any) -> Turn:
    return Turn(tool_uses=[(name, arguments)], **kw)


def error(status: int, message: str = "scripted error") -> Turn:
    return Turn(text=message, status=status)


def usage_limit(resets_at: int, message: str = "Rate limited") -> Turn:
    """A 429 the way Anthropic refuses a subscription over its limit: unified rate-limit headers
    saying ``rejected`` and the reset time (epoch seconds)."""
    return Turn(text=message, status=429, headers={
        "anthropic-ratelimit-unified-status": "rejected", "anthropic-ratelimit-unified-reset": str(resets_at),
        "anthropic-ratelimit-unified-representative-claim": "five_hour", "retry-after": "1"})


def claude_env(tmp_path: Path, base_url: str) -> dict[str, str]:
    """Env additions for a ``claude`` isolated in ``tmp_path/claude-home`` that talks only to
    ``base_url``: no update check, telemetry, error reports or other side traffic."""
    home = Path(tmp_path) / "claude-home"
    (home / ".config").mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    return {
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
        "TMPDIR": str(home / "tmp"),  # its sockets (cc-socks/) and scratch files, else left in /tmp
        "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": "sk-ant-test-key",
        "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_MAX_RETRIES": "0",
    }


class ScriptedAnthropic:
    def __init__(self, turns: Iterable[Turn] = (), *, final_text: str = "Nothing more to do.",
                 aux_text: str = "Scripted") -> None:
        self.turns = list(turns)
        self.final_text, self.aux_text = final_text, aux_text
        self.requests: list[dict[str, Any]] = []
        self.scripted_requests: list[dict[str, Any]] = []
        self.other_requests: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._next = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> ScriptedAnthropic:
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

    def __enter__(self) -> ScriptedAnthropic:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _reply_for(self, body: dict[str, Any], headers: dict[str, str]) -> Turn:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            if not body.get("tools"):
                return Turn(text=self.aux_text, input_tokens=10, output_tokens=3)
            self.scripted_requests.append(body)
            self._next += 1
            return self.turns[self._next - 1] if self._next <= len(self.turns) else Turn(text=self.final_text)


class _Handler(BaseHTTPRequestHandler):
    api: ScriptedAnthropic
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
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
        self.close_connection = True

    def do_GET(self) -> None:
        self.api.other_requests.append(("GET", self.path))
        self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})

    def do_HEAD(self) -> None:
        self.api.other_requests.append(("HEAD", self.path))
        self._send_json(200, {})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0].rstrip("/")
        if path.endswith("/messages/count_tokens"):
            self._send_json(200, {"input_tokens": 100})
            return
        if not path.endswith("/v1/messages"):
            self.api.other_requests.append(("POST", self.path))
            self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
            return
        body = json.loads(raw or b"{}")
        turn = self.api._reply_for(body, dict(self.headers.items()))
        if turn.status != 200:
            kind = "rate_limit_error" if turn.status == 429 else "invalid_request_error"
            self._send_json(turn.status, {"type": "error", "error": {"type": kind, "message": turn.text}},
                            turn.headers)
            return
        message = _message(turn, body.get("model", "scripted"))
        if body.get("stream"):
            self._stream(message)
        else:
            self._send_json(200, message)

    def _stream(self, message: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(name: str, data: dict[str, Any]) -> None:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**usage, "output_tokens": 1}}
        event("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                event("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": {"type": "text", "text": ""}})
                for i in range(0, len(block["text"]), 16):
                    event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                  "delta": {"type": "text_delta", "text": block["text"][i:i + 16]}})
            else:
                event("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": {**block, "input": {}}})
                event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                    "type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
            event("content_block_stop", {"type": "content_block_stop", "index": index})
        event("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                "usage": {"output_tokens": usage["output_tokens"]}})
        event("message_stop", {"type": "message_stop"})


def _message(turn: Turn, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if turn.text:
        content.append({"type": "text", "text": turn.text})
    for name, args in turn.tool_uses:
        content.append({"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": name, "input": args})
    return {
        "id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": "tool_use" if turn.tool_uses else "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }

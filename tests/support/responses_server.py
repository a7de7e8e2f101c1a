"""A scripted OpenAI Responses API server for tests (stdlib only), for the real ``codex`` CLI.

Usage::

    from tests.support.responses_server import ScriptedResponses, function_call, text

    with ScriptedResponses([function_call("shell_command", {"command": "env"}), text("done")]) as srv:
        srv.base_url            # "http://127.0.0.1:PORT/v1": a codex model_provider's base_url
        srv.scripted_requests   # the request bodies that consumed a turn, in order

Each ``POST /v1/responses`` that offers tools (the agent's own turns) consumes the next scripted
turn; once the script is exhausted it answers ``final_text``. Requests without tools (side calls)
get ``aux_text`` and consume nothing. Replies stream as Server-Sent Events (response.created,
response.output_item.added/done, response.output_text.delta, response.completed with ``usage``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["ScriptedResponses", "Turn", "codex_env", "error", "exec_command", "function_call", "text",
           "usage_limit"]


@dataclass
class Turn:
    text: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    input_tokens: int = 100
    output_tokens: int = 20
    status: int = 200  # else: an HTTP error with an OpenAI-style error body
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers (rate limits)
    error_fields: dict[str, Any] = field(default_factory=dict)  # extra fields of the error body


def text(content: str, **kw: Any) -> Turn:
    return Turn(text=content, **kw)


def function_call(name: str, arguments: dict[str, Any], **kw: Any) -> Turn:
    return Turn(calls=[(name, arguments)], **kw)


def error(status: int, message: str = "scripted error") -> Turn:
    return Turn(text=message, status=status)


def usage_limit(resets_at: int, message: str = "The usage limit has been reached") -> Turn:
    """A 429 the way ChatGPT-plan Codex is refused over its limit: ``usage_limit_reached`` with the
    reset time (epoch seconds) and the seconds until it."""
    return Turn(text=message, status=429, error_fields={
        "type": "usage_limit_reached", "plan_type": "plus", "resets_at": resets_at,
        "resets_in_seconds": max(0, resets_at - int(time.time()))})


def exec_command(cmd: str, **kw: Any) -> Turn:
    """A call of codex's shell tool (``exec_command`` in codex 0.169 for a model it has no metadata of)."""
    return function_call("exec_command", {"cmd": cmd, "tty": False}, **kw)


def codex_env(tmp_path: Path, base_url: str, model: str = "scripted-model") -> dict[str, str]:
    """Env additions for a ``codex`` isolated in ``tmp_path/codex-home`` whose default model
    provider is a Responses API at ``base_url`` (``$CODEX_HOME/config.toml``)."""
    home = Path(tmp_path) / "codex-home"
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "scripted"\n'
        "[model_providers.scripted]\n"
        'name = "Scripted test API"\n'
        f'base_url = "{base_url}"\n'
        'wire_api = "responses"\n'
        'env_key = "SCRIPTED_API_KEY"\n'
        "request_max_retries = 0\nstream_max_retries = 0\n"  # an error reply ends the turn at once
        "[analytics]\nenabled = false\n"
        "[feedback]\nenabled = false\n")
    return {"HOME": str(home), "CODEX_HOME": str(codex_home), "SCRIPTED_API_KEY": "test-key"}


class ScriptedResponses:
    def __init__(self, turns: Iterable[Turn] = (), *, final_text: str = "Nothing more to do.",
                 aux_text: str = "Scripted") -> None:
        self.turns = list(turns)
        self.final_text, self.aux_text = final_text, aux_text
        self.requests: list[dict[str, Any]] = []
        self.scripted_requests: list[dict[str, Any]] = []
        self.other_requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._next = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> ScriptedResponses:
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

    def __enter__(self) -> ScriptedResponses:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _reply_for(self, body: dict[str, Any]) -> Turn:
        with self._lock:
            self.requests.append(body)
            if not body.get("tools"):
                return Turn(text=self.aux_text, input_tokens=10, output_tokens=3)
            self.scripted_requests.append(body)
            self._next += 1
            return self.turns[self._next - 1] if self._next <= len(self.turns) else Turn(text=self.final_text)


class _Handler(BaseHTTPRequestHandler):
    api: ScriptedResponses
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
        if self.path.split("?")[0].rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": [], "models": []})
            return
        self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.split("?")[0].rstrip("/").endswith("/responses"):
            self.api.other_requests.append(("POST", self.path))
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        body = json.loads(raw or b"{}")
        turn = self.api._reply_for(body)
        if turn.status != 200:
            self._send_json(turn.status, {"error": {"message": turn.text, "type": "server_error", "code": None,
                                                    **turn.error_fields}}, turn.headers)
            return
        self._stream(turn, body.get("model", "scripted"))

    def _stream(self, turn: Turn, model: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(data: dict[str, Any]) -> None:
            self.wfile.write(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        rid = "resp_" + uuid.uuid4().hex
        response: dict[str, Any] = {"id": rid, "object": "response", "created_at": int(time.time()),
                                    "model": model, "status": "in_progress", "output": []}
        event({"type": "response.created", "response": response})
        items: list[dict[str, Any]] = []
        if turn.text:
            items.append({"type": "message", "id": "msg_" + uuid.uuid4().hex, "role": "assistant",
                          "status": "completed",
                          "content": [{"type": "output_text", "text": turn.text, "annotations": []}]})
        for name, args in turn.calls:
            items.append({"type": "function_call", "id": "fc_" + uuid.uuid4().hex, "status": "completed",
                          "call_id": "call_" + uuid.uuid4().hex[:24], "name": name, "arguments": json.dumps(args)})
        for index, item in enumerate(items):
            if item["type"] == "message":
                event({"type": "response.output_item.added", "output_index": index,
                       "item": {**item, "status": "in_progress", "content": []}})
                for i in range(0, len(turn.text), 16):
                    event({"type": "response.output_text.delta", "item_id": item["id"], "output_index": index,
                           "content_index": 0, "delta": turn.text[i:i + 16]})
            else:
                event({"type": "response.output_item.added", "output_index": index, "item": item})
            event({"type": "response.output_item.done", "output_index": index, "item": item})
        usage = {"input_tokens": turn.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": turn.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": turn.input_tokens + turn.output_tokens}
        event({"type": "response.completed",
               "response": {**response, "status": "completed", "output": items, "usage": usage}})

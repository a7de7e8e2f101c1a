"""One scripted model API for every agent preset's tests (stdlib only), in each wire format the CLIs speak.

Usage::

    from tests.support.scripted_llm import ScriptedLLM, bash, text

    with ScriptedLLM([bash("env | sort"), text("done")], wire="chat") as srv:
        srv.base_url            # where to point the agent (see WIRES)
        srv.requests            # every model request body, in order
        srv.scripted_requests   # those that consumed (or ran past) the script
        srv.aux_requests        # the side calls

Wires (one small encoder each, in tests/support/llm_wires.py, which describes them): ``chat`` (OpenAI
chat completions: opencode, kilo, copilot, pi, qwen), ``anthropic`` (the Messages API: claude),
``responses`` (the OpenAI Responses API: codex), ``gemini`` (the Gemini API: gemini).

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
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.llm_wires import WIRES, Json, Reply, Turn, Wire

__all__ = ["ScriptedLLM", "Turn", "bash", "error", "exec_command", "is_title_request", "offers_no_tools",
           "rate_limited", "shell", "text", "tool_call", "tool_use", "usage_limit"]


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
        side = encoder.side(method, path, self.api.model)
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

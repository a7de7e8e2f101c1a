"""A real Arize Phoenix server for end-to-end tests of ralph's OTLP export.

Phoenix lives in its own virtualenv (``scripts/install-phoenix.sh``); this module only
runs its ``phoenix`` executable as a child process and talks to it over HTTP, so nothing
of Phoenix is imported into the test environment.

    with PhoenixServer(tmp_path) as px:
        ...export spans to px.otlp_traces_endpoint (OTLP/HTTP protobuf)...
        spans = px.wait_for_spans(5)              # REST: /v1/projects/default/spans
        sessions = px.sessions()                  # REST: /v1/projects/default/sessions

Findings behind the choices here are in docs/phoenix-notes.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

#: The arize-phoenix version these helpers were written and tested against
#: (keep in step with scripts/install-phoenix.sh).
PHOENIX_VERSION = "20.26.1"

#: Phoenix's project for spans whose resource has no ``openinference.project.name``.
DEFAULT_PROJECT = "default"

#: Resource attribute that picks the Phoenix project of incoming spans.
PROJECT_RESOURCE_ATTRIBUTE = "openinference.project.name"

HOST = "127.0.0.1"


def default_cache_dir() -> Path:
    """``$RALPH_TEST_CACHE``, else ``~/.cache/ralph-tests``."""
    cache = os.environ.get("RALPH_TEST_CACHE")
    return Path(cache).expanduser() if cache else Path.home() / ".cache" / "ralph-tests"


def find_phoenix() -> Path | None:
    """Locate the ``phoenix`` executable, or None when Phoenix is not installed.

    Order: ``$RALPH_PHOENIX_BIN``, then ``$RALPH_TEST_CACHE/phoenix-venv/bin/phoenix``
    (default cache ``~/.cache/ralph-tests``, where scripts/install-phoenix.sh puts it),
    then ``phoenix`` on ``PATH``.
    """
    explicit = os.environ.get("RALPH_PHOENIX_BIN")
    if explicit:
        path = Path(explicit).expanduser()
        return path if path.is_file() and os.access(path, os.X_OK) else None
    cached = default_cache_dir() / "phoenix-venv" / "bin" / "phoenix"
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    on_path = shutil.which("phoenix")
    return Path(on_path) if on_path else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class PhoenixError(RuntimeError):
    """Phoenix did not start, or did not answer as expected."""


# Variables that would change what the child Phoenix does if inherited from the test run:
# its own configuration, an OpenTelemetry setup meant for the code under test, and the
# Python environment of the test venv. RALPH_* goes too: among them RALPH_TEST_MARK, by
# which tests/conftest.py finds processes that outlive a test (Phoenix may, when a fixture
# of wider scope owns it).
_STRIPPED_PREFIXES = ("PHOENIX_", "OTEL_", "RALPH_")
_STRIPPED_NAMES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")

# Phoenix settings for a private, offline, quiet instance (see docs/phoenix-notes.md).
_OFFLINE_ENV = {
    # No telemetry pixels (FullStory, Scarf) in the UI.
    "PHOENIX_TELEMETRY_ENABLED": "false",
    # No public-internet requests on Phoenix's own initiative (web fonts, telemetry, the
    # WASM sandbox binary download).
    "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
    # The LLM "agent assistant" (/chat) and its tools off.
    "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
    "PHOENIX_AGENTS_DISABLE_WEB_ACCESS": "true",
    "PHOENIX_AGENTS_DISABLE_BASH": "true",
    "PHOENIX_AGENTS_DISABLE_GITHUB": "true",
    # No MCP server at /mcp, no code sandboxes, no Prometheus endpoint.
    "PHOENIX_ENABLE_MCP_SERVER": "false",
    "PHOENIX_ALLOWED_SANDBOX_PROVIDERS": "NONE",
    "PHOENIX_ENABLE_PROMETHEUS": "false",
    # Don't print every SQL statement of the ~100 migrations into the log.
    "PHOENIX_LOG_MIGRATIONS": "false",
}

_ADDR_IN_USE = ("address already in use", "errno 98", "failed to bind", "could not bind")


class PhoenixServer:
    """Run ``phoenix serve`` on 127.0.0.1 for the duration of a ``with`` block.

    Fresh HTTP and gRPC ports and a fresh working dir (SQLite database) under
    ``tmp_path`` for each instance, so instances can run side by side. On exit the
    whole process group is terminated (SIGTERM, then SIGKILL) and waited for.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        executable: Path | None = None,
        startup_timeout: float = 120.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.executable = executable
        self.startup_timeout = startup_timeout
        self.extra_env = dict(extra_env or {})
        self.working_dir = self.tmp_path / "phoenix-working-dir"
        self.log_path = self.tmp_path / "phoenix.log"
        self.port = 0
        self.grpc_port = 0
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: also what ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes."""
        return f"http://{HOST}:{self.port}"

    @property
    def otlp_traces_endpoint(self) -> str:
        """OTLP/HTTP (protobuf only) traces URL: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``."""
        return f"{self.base_url}/v1/traces"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """OTLP/gRPC traces endpoint (insecure)."""
        return f"http://{HOST}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> PhoenixServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._proc is not None:
            raise PhoenixError("Phoenix is already running")
        exe = self.executable or find_phoenix()
        if exe is None:
            raise PhoenixError(
                "Phoenix is not installed: run scripts/install-phoenix.sh "
                "(or set RALPH_PHOENIX_BIN to a `phoenix` executable)"
            )
        self.executable = Path(exe)
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        # A port picked free can be taken before Phoenix binds it: try again on new ports.
        for attempt in range(3):
            try:
                self._start_once()
                return
            except PhoenixError as err:
                log = self.log()
                self.stop()
                if attempt < 2 and any(s in log.lower() for s in _ADDR_IN_USE):
                    continue
                message = f"{err}\n--- {self.log_path} (last 150 lines) ---\n{self.log(tail=150)}"
                print(message, file=sys.stderr)
                raise PhoenixError(message) from None

    def _child_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_STRIPPED_PREFIXES) and k not in _STRIPPED_NAMES
        }
        env.update(_OFFLINE_ENV)
        env.update(
            PHOENIX_HOST=HOST,
            PHOENIX_PORT=str(self.port),
            PHOENIX_GRPC_PORT=str(self.grpc_port),
            PHOENIX_WORKING_DIR=str(self.working_dir),
            PYTHONUNBUFFERED="1",
            NO_COLOR="1",
        )
        env.update(self.extra_env)
        return env

    def _start_once(self) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        while self.grpc_port == self.port:
            self.grpc_port = free_port()
        shutil.rmtree(self.working_dir, ignore_errors=True)
        self.working_dir.mkdir(parents=True)
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [str(self.executable), "serve"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                cwd=self.working_dir,
                start_new_session=True,
            )
        # Ready = uvicorn has bound *our* port (it logs this only after a successful bind,
        # which rules out answering for some other server on a recycled port) and the
        # database answers /readyz.
        bound = f"Uvicorn running on http://{HOST}:{self.port}"
        deadline = started + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise PhoenixError(f"`phoenix serve` exited with code {code} during startup")
            if bound in self.log() and self._ready():
                self.startup_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                raise PhoenixError(f"Phoenix was not ready within {self.startup_timeout:.0f}s")
            time.sleep(0.25)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _failure(self, what: str) -> str:
        text = f"{what}\n--- {self.log_path} (last 150 lines) ---\n{self.log(tail=150)}"
        print(text, file=sys.stderr)
        return text

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate Phoenix's whole process group and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # start_new_session=True: pgid == pid
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Reap any straggler of the group (a worker that outlived the leader).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log(self, tail: int | None = None) -> str:
        """What Phoenix printed so far (its last ``tail`` lines)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-tail:]) if tail else text

    # -- HTTP --------------------------------------------------------------------------
    def request(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        """JSON request to Phoenix; returns the decoded JSON (None for 404)."""
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(
                {k: v for k, v in params.items() if v is not None}, doseq=True
            )
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            detail = err.read().decode(errors="replace")[:2000]
            raise PhoenixError(f"{method} {url}: HTTP {err.code}: {detail}") from err

    def version(self) -> str:
        """The server's version, from ``GET /arize_phoenix_version`` (plain text)."""
        with urllib.request.urlopen(f"{self.base_url}/arize_phoenix_version", timeout=10) as resp:
            return str(resp.read().decode().strip())

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a GraphQL query at /graphql; returns its ``data`` (raises on ``errors``)."""
        answer = self.request("POST", "/graphql", body={"query": query, "variables": variables or {}})
        if not isinstance(answer, dict) or answer.get("errors"):
            raise PhoenixError(f"GraphQL error: {answer!r}")
        data: dict[str, Any] = answer["data"]
        return data

    def _paginate(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = self.get_json(path, {**params, "cursor": cursor})
            if page is None:  # unknown project: Phoenix creates it with its first span
                return items
            items.extend(page["data"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    @staticmethod
    def _project_path(project: str) -> str:
        return urllib.parse.quote(project, safe="")

    # -- reading back ------------------------------------------------------------------
    def projects(self) -> list[str]:
        """Names of Phoenix's projects (``default`` always exists)."""
        return [p["name"] for p in self._paginate("/v1/projects", {"limit": 100})]

    def spans(self, project: str = DEFAULT_PROJECT, **filters: Any) -> list[dict[str, Any]]:
        """All spans of ``project`` in insertion order, via ``GET /v1/projects/{p}/spans``.

        ``filters`` are passed as query parameters (e.g. ``trace_id=``, ``name=``,
        ``parent_id="null"``). Each span is a dict like::

            {"id": "U3Bhbjox", "name": "ralph.step",
             "context": {"trace_id": "<32 hex>", "span_id": "<16 hex>"},
             "span_kind": "UNKNOWN", "parent_id": "<16 hex>" | None,
             "start_time": "...+00:00", "end_time": "...", "status_code": "UNSET",
             "status_message": "", "attributes": {"session.id": "ses_..."}, "events": []}
        """
        path = f"/v1/projects/{self._project_path(project)}/spans"
        return self._paginate(path, {"limit": 1000, "order": "asc", **filters})

    def sessions(self, project: str = DEFAULT_PROJECT) -> list[dict[str, Any]]:
        """Phoenix's sessions of ``project``, via ``GET /v1/projects/{p}/sessions``.

        Each is ``{"id", "session_id", "project_id", "start_time", "end_time",
        "traces": [{"id", "trace_id", "start_time", "end_time"}], "token_count_*"}``.
        NB: Phoenix attaches a whole *trace* to at most one session (see the notes).
        """
        path = f"/v1/projects/{self._project_path(project)}/sessions"
        return self._paginate(path, {"limit": 100})

    def session_ids(self, project: str = DEFAULT_PROJECT) -> list[str]:
        return [s["session_id"] for s in self.sessions(project)]

    def graphql_session_ids(self, project: str = DEFAULT_PROJECT) -> list[str]:
        """The same sessions read through GraphQL (what the UI's Sessions tab uses)."""
        ids: list[str] = []
        for edge in self.graphql(_PROJECTS_QUERY)["projects"]["edges"]:
            if edge["node"]["name"] != project:
                continue
            after: str | None = None
            while True:
                node = self.graphql(_SESSIONS_QUERY, {"id": edge["node"]["id"], "after": after})["node"]
                conn = node["sessions"]
                ids.extend(e["node"]["sessionId"] for e in conn["edges"])
                if not conn["pageInfo"]["hasNextPage"]:
                    break
                after = conn["pageInfo"]["endCursor"]
        return ids

    def wait_for(self, what: str, fetch: Callable[[], list[Any]], n: int, timeout: float) -> list[Any]:
        """Poll ``fetch`` until it returns at least ``n`` items (ingestion is async)."""
        deadline = time.monotonic() + timeout
        while True:
            items = fetch()
            if len(items) >= n:
                return items
            if self._proc is None or self._proc.poll() is not None:
                raise PhoenixError(self._failure(f"Phoenix is not running while waiting for {what}"))
            if time.monotonic() > deadline:
                raise PhoenixError(
                    self._failure(
                        f"expected at least {n} {what} within {timeout:.0f}s, got {len(items)}: "
                        f"{json.dumps(items, indent=1)[:4000]}"
                    )
                )
            time.sleep(0.2)

    def wait_for_spans(
        self, n: int, project: str = DEFAULT_PROJECT, timeout: float = 30.0, **filters: Any
    ) -> list[dict[str, Any]]:
        return self.wait_for(
            f"spans in project {project!r}", lambda: self.spans(project, **filters), n, timeout
        )

    def wait_for_sessions(
        self, n: int, project: str = DEFAULT_PROJECT, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        return self.wait_for(f"sessions in project {project!r}", lambda: self.sessions(project), n, timeout)


_PROJECTS_QUERY = "query { projects(first: 1000) { edges { node { id name } } } }"

_SESSIONS_QUERY = """
query ($id: ID!, $after: String) {
  node(id: $id) {
    ... on Project {
      sessions(first: 100, after: $after) {
        edges { node { id sessionId numTraces startTime endTime } }
        pageInfo { hasNextPage endCursor }
      }
    }
  }
}
"""

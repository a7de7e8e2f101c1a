"""The ``opencode`` preset: ``opencode run --format json`` in a session that *is* ours.

Before the first attempt of an iteration, ``opencode import`` of a minimal session file creates
opencode's session with our ID and title, and ``run --session ID`` continues it: ``opencode
session list``, ``opencode export $OPENCODE_SESSION_ID`` and the bash tool's env all name one
session. If that binding fails (another opencode version), the run goes on with ``--title`` and
opencode's own session ID, read from the events, is recorded as the agent's session ID.
See docs/opencode-notes.md for the opencode 1.18.33 behaviour this relies on.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from ralph.agents.base import (
    AgentContext,
    Invocation,
    Preset,
    StreamParser,
    ToolCall,
    as_text,
    end_left_running,
    first_line,
)
from ralph.agents.events import int_sum, number, obj
from ralph.limits import LimitHit, reset_time, retry_after
from ralph.process import Request, private_dirs, run

FORMAT_VERSION = "1.18.33"  # the opencode version the import file's shape was verified with
HELPER_TIMEOUT = 60.0  # seconds for `opencode import` / `export`: about 1-2 s when all is well
IMPORT_FILE = "opencode-session.json"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class _Binding:
    """How one iteration's session is tied to opencode's."""

    bound: bool  # opencode's session has our ID (and title)
    agent_id: str | None = None  # opencode's session ID, from the events
    not_found: bool = False  # `run --session` answered "Session not found"


class OpencodeParser(StreamParser):
    """opencode's JSON events, one per line (stderr is merged in: plain lines)."""

    def __init__(self, binding: _Binding) -> None:
        super().__init__()
        self.binding = binding
        self.events = 0

    def feed(self, line: bytes) -> tuple[str | None, str | None]:
        stripped = line.strip()
        if not stripped:
            return None, None
        if stripped.startswith(b"{"):
            try:
                event = json.loads(stripped)
            except ValueError:
                event = None
            if isinstance(event, dict):
                self.events += 1
                return self._event(event)
        text = _ANSI.sub("", line.decode("utf-8", "replace")).rstrip()
        if "Session not found" in text and not self.events:
            self.binding.not_found = True
        # Not for output_contains: a plain line can quote the agent's command (a rejected permission).
        return text, None

    def _event(self, event: dict[str, Any]) -> tuple[str | None, str | None]:
        session_id = event.get("sessionID")
        if self.events == 1 and isinstance(session_id, str) and session_id:  # this attempt's session
            self.report.agent_session_id = self.binding.agent_id = session_id
        kind = event.get("type")
        part = obj(event.get("part"))
        if kind == "text":
            text = str(part.get("text") or "")
            return (text, text) if text else (None, None)
        if kind == "reasoning":
            text = str(part.get("text") or "")
            return (f"(thinking) {text}" if text else None), None
        if kind == "tool_use":
            self._tool(event, part)
            return _tool_line(part), None
        if kind == "step_finish":
            tokens = obj(part.get("tokens"))
            cache = obj(tokens.get("cache"))
            # opencode splits the provider's counts: input excludes cached tokens, output excludes
            # reasoning. The totals are what was billed.
            self.report.add_tokens(int_sum(tokens.get("input"), cache.get("read"), cache.get("write")),
                                   int_sum(tokens.get("output"), tokens.get("reasoning")))
            cost = part.get("cost")
            if number(cost):
                self.report.add_cost(cost)
            return None, None
        if kind == "error":
            error = obj(event.get("error"))
            data = obj(error.get("data"))
            message = f"{error.get('name') or 'Error'}: {data.get('message') or ''}".rstrip(": ")
            body = str(data.get("responseBody") or "")
            if data.get("statusCode") == 429 or "UsageLimitError" in body:  # a limit opencode gave up waiting on
                headers = obj(data.get("responseHeaders"))
                self.limit = self.limit or LimitHit(first_line(message), retry_after(headers) or reset_time(body))
            return f"error: {message}", message  # counts for retry.on_output ("rate limit")
        return None, None


    def _tool(self, event: dict[str, Any], part: dict[str, Any]) -> None:
        """A finished tool part (``completed`` or ``error``), with opencode's own start/end times (ms)."""
        state = obj(part.get("state"))
        times = obj(state.get("time"))
        at = event.get("timestamp")
        end = _seconds(times.get("end")) or _seconds(at) or time.time()
        start = _seconds(times.get("start")) or end
        code = obj(state.get("metadata")).get("exit")  # bash: the command's exit code
        failed = state.get("status") == "error" or part.get("tool") == "invalid" or code not in (0, None)
        error = str(state.get("error") or (f"exit {code}" if code not in (0, None) else "failed"))
        self.tool_call(ToolCall(str(part.get("callID") or part.get("id") or ""), str(part.get("tool") or "tool"),
                                start, end, not failed, as_text(state.get("input")), as_text(state.get("output")),
                                error if failed else None))


def _seconds(ms: Any) -> float | None:
    return ms / 1000 if number(ms) and ms > 0 else None


def _tool_line(part: dict[str, Any]) -> str:
    tool = str(part.get("tool") or "tool")
    state = obj(part.get("state"))
    given = obj(state.get("input"))
    if tool == "bash" and isinstance(given.get("command"), str):
        what = "$ " + first_line(given["command"])
    elif state.get("title"):
        what = first_line(str(state["title"]))
    else:
        what = first_line(json.dumps(given, ensure_ascii=False))
    line = f"→ {tool}: {what}"
    if state.get("status") == "error":
        return f"{line} ✗ {first_line(str(state.get('error') or 'failed'))}"
    metadata = obj(state.get("metadata"))
    code = metadata.get("exit")
    return f"{line} (exit {code})" if isinstance(code, int) and code != 0 else line


# opencode's provider IDs that the GenAI conventions name otherwise (the rest are taken as they are).
PROVIDERS = {"google": "gcp.gemini", "google-vertex": "gcp.vertex_ai", "amazon-bedrock": "aws.bedrock",
             "azure": "azure.ai.openai", "mistral": "mistral_ai", "xai": "x_ai"}


def provider_model(model: str | None) -> tuple[str | None, str | None]:
    """``provider/model`` (opencode's, and pi's, whose provider IDs are opencode's) as (the
    semantic-convention provider name, the model)."""
    if not model or "/" not in model:
        return None, model
    provider, name = model.split("/", 1)
    return PROVIDERS.get(provider, provider), name


class OpencodePreset(Preset):
    name = "opencode"
    default_binary = "opencode"
    structured = True
    import_file = IMPORT_FILE  # in the session's log folder

    def model_info(self, model: str | None) -> tuple[str | None, str | None]:
        return provider_model(model)

    def __init__(self) -> None:
        self._lock = threading.Lock()  # batch items run in threads and share the preset
        self._bindings: dict[str, _Binding] = {}  # by our session ID: retries reuse it
        self._verified: set[str] = set()  # runs where an imported session was found again
        self._unbound: dict[str, str] = {}  # runs where binding failed (the same binary fails again), why
        self._warned: set[str] = set()

    # -- the attempt --------------------------------------------------------------------

    def prepare(self, ctx: AgentContext) -> list[str]:
        session, run_id = ctx.session, ctx.session.run_id
        with self._lock:
            binding = self._bindings.get(session.id)
            failed = self._unbound.get(run_id)
        if binding is None:  # the first attempt of this iteration: create the session, once
            why = failed or self._bind(ctx)
            binding = _Binding(bound=why is None)
        elif binding.not_found and binding.bound:
            why, binding.bound, binding.not_found = f"`{self.name} run --session` said: Session not found", False, False
        else:
            if binding.not_found:  # opencode's own session could not be continued either: a new one
                binding.agent_id, binding.not_found = None, False
            why = None
        with self._lock:
            self._bindings[session.id] = binding
            if why is None:
                return []
            self._unbound.setdefault(run_id, why)
            if run_id in self._warned:
                return []
            self._warned.add(run_id)
        return [f"{self.name}: cannot bind its session to ralph's ({why}); running with --title instead and "
                f"recording {self.name}'s own session ID as the agent session ID"]

    def invocation(self, ctx: AgentContext) -> Invocation:
        binding = self._binding(ctx)
        workdir = str(ctx.spec.workdir)
        # `--opt=value`: a title or model starting with "-" stays a value.
        argv = [ctx.binary or self.name, "run", "--format=json", f"--dir={workdir}"]
        if binding.bound:
            argv.append(f"--session={ctx.session.id}")
        elif binding.agent_id:  # a retry continues the session opencode made for this iteration
            argv.append(f"--session={binding.agent_id}")
        else:
            argv.append(f"--title={ctx.session.title}")
        agent = ctx.spec.config.agent
        if agent.model:
            argv.append(f"--model={agent.model}")
        argv.extend(agent.args)
        # The prompt on stdin, then closed: as an argument it would reach the model in quotes, and
        # `run` reads a non-TTY stdin to its end. opencode takes its folder from $PWD, not the cwd.
        return Invocation(tuple(argv), (ctx.prompt or "").encode("utf-8"), {"PWD": workdir})

    def parser(self, ctx: AgentContext) -> StreamParser:
        return OpencodeParser(self._binding(ctx))

    def cleanup(self, ctx: AgentContext) -> list[str]:
        """opencode runs its bash tool in a session of its own: ending opencode's process group
        does not reach what a tool left running. Anything still carrying this attempt's env goes."""
        return end_left_running(ctx)

    # -- binding ------------------------------------------------------------------------

    def _binding(self, ctx: AgentContext) -> _Binding:
        with self._lock:
            return self._bindings.setdefault(ctx.session.id, _Binding(bound=False))

    def _bind(self, ctx: AgentContext) -> str | None:
        """Create opencode's session with our ID and title. None if done, else why not."""
        session, workdir = ctx.session, ctx.spec.workdir
        now = int(time.time() * 1000)
        doc = {"info": {"id": session.id, "slug": "ralph-" + session.id[-8:].lower(), "directory": str(workdir),
                        "title": session.title, "version": FORMAT_VERSION,
                        "time": {"created": now, "updated": now}},
               "messages": []}
        path = ctx.log_dir / self.import_file
        try:
            private_dirs(ctx.log_dir)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
        except OSError as exc:
            return f"cannot write {path}: {exc.strerror}"
        code, output = self._helper(ctx, "import", str(path))
        if code != 0 or f"Imported session: {session.id}" not in output:
            return f"`{self.name} import` failed (exit {code}): {first_line(output) or 'no output'}"
        if session.run_id in self._verified:
            return None
        # Once per run: does opencode find the session again, under our title?
        code, output = self._helper(ctx, "export", session.id)
        if code != 0:
            return f"`{self.name} export` cannot find the imported session (exit {code}): {first_line(output)}"
        info = _exported_info(output)
        if info is not None and (info.get("id"), info.get("title")) != (session.id, session.title):
            return f"{self.name} exported the session as {info.get('id')!r} titled {info.get('title')!r}"
        with self._lock:
            self._verified.add(session.run_id)
        return None

    def _helper(self, ctx: AgentContext, *args: str) -> tuple[int, str]:
        """A short opencode command with the attempt's env, in the workdir (PWD too)."""
        chunks: list[bytes] = []
        workdir = ctx.spec.workdir
        outcome = run(Request((ctx.binary or self.name, *args), workdir, {**ctx.env, "PWD": str(workdir)},
                              timeout=HELPER_TIMEOUT), chunks.append)
        output = _ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).strip()
        if outcome.status == "timeout":
            output = f"timed out after {HELPER_TIMEOUT:.0f}s"
        return outcome.exit_code, output


def _exported_info(output: str) -> dict[str, Any] | None:
    """``info`` of `opencode export` (stdout JSON; stderr's "Exporting session" line is merged in)."""
    start = output.find("{")
    try:
        doc = json.JSONDecoder().raw_decode(output[start:])[0] if start >= 0 else None
    except ValueError:
        return None
    info = doc.get("info") if isinstance(doc, dict) else None
    return info if isinstance(info, dict) else None


PRESET = OpencodePreset()

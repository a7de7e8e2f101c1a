"""``ralph exec``, ``ralph shell`` and ``ralph env``: follow-up work inside a recorded session.

The session comes from ``--session`` (an ID or unique prefix), else ``$RALPH_SESSION_ID``, else the
newest in the history. Its env is rebuilt from the history row (and the loop's ``env:`` from the
loop file the run recorded). Where no session can be found the session variables are set empty, a
warning goes to stderr, and the command still runs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ralph.console import Console
from ralph.errors import ConfigError, UsageError
from ralph.session import Session, child_env
from ralph.steps import Services
from ralph.store import Store, history_exists
from ralph.telemetry import Span, Telemetry

TRACE_KEYS = ("TRACEPARENT", "TRACESTATE")


def _warn(message: str) -> None:
    print(f"ralph: warning: {message}", file=sys.stderr, flush=True)


@dataclass
class Target:
    """The session a tool works in: ``row`` is None when there is none (its variables are empty)."""

    session: Session
    row: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    loop_env: dict[str, str] = field(default_factory=dict)
    telemetry: Any = None  # the loop's telemetry settings, when its file could be read

    @property
    def trace(self) -> dict[str, str]:
        """The W3C context of the session's iteration span (children of it join its trace)."""
        row = self.row or {}
        if not row.get("trace_id") or not row.get("span_id"):
            return {}
        return {"TRACEPARENT": f"00-{row['trace_id']}-{row['span_id']}-01"}

    def env(self, step: str, trace: Mapping[str, str] | None = None) -> dict[str, str]:
        return child_env(self.session, step, 1, self.loop_env, self.trace if trace is None else trace)

    def names(self) -> list[str]:
        """The variables this session sets (what ``ralph env`` prints)."""
        return [*self.session.env("shell"), "OTEL_RESOURCE_ATTRIBUTES", *self.loop_env]


def _empty(state_dir: Path, why: str) -> Target:
    _warn(f"{why}; the session variables are empty")
    return Target(Session("", "", "", "", 0, None, state_dir))


def find_target(state_dir: Path, ident: str | None) -> Target:
    if not history_exists(state_dir):
        return _empty(state_dir, f"no session history at {state_dir / 'ralph.db'}")
    store = Store(state_dir, create=False)
    db = store.path
    try:
        if ident:
            row = store.find_session(ident)  # an ambiguous prefix is a usage error (exit 2)
            if row is None:
                raise UsageError(f"no session {ident!r} in {db}")
        else:
            env_id = os.environ.get("RALPH_SESSION_ID", "").strip()
            row = store.find_session(env_id) if env_id else store.newest_session()
            if row is None:
                why = f"session {env_id} ($RALPH_SESSION_ID) is not in {db}" if env_id else f"no sessions in {db}"
                return _empty(state_dir, why)
        run = store.find_run(row["run_id"])
    finally:
        store.close()
    session = Session(row["id"], row["title"], row["run_id"], row["loop"], row["iteration"], row["item"],
                      state_dir, row.get("previous_id"), row.get("feedback") or "")
    target = Target(session, row, run)
    loop_file = (run or {}).get("loop_file")
    if loop_file:
        from ralph import loader

        try:
            spec = loader.load(loop_file)
            target.loop_env, target.telemetry = dict(spec.config.env), spec.config.telemetry
        except ConfigError as exc:
            _warn(f"the loop's env is left out: {exc.render().splitlines()[0]}")
    return target


# -- ralph env ----------------------------------------------------------------------------------------
def print_env(state_dir: Path, ident: str | None, fmt: str) -> int:
    if fmt not in ("sh", "json"):
        raise UsageError(f"--format {fmt!r}: use sh or json")
    target = find_target(state_dir, ident)
    env = target.env("shell")
    values = {name: env[name] for name in dict.fromkeys([*target.names(), *TRACE_KEYS]) if name in env}
    if fmt == "json":
        print(json.dumps(values, indent=2, ensure_ascii=False))
        return 0
    lines = [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    # An inherited trace context belongs to some other trace: drop what the session does not set.
    gone = [k for k in TRACE_KEYS if k not in values]
    if gone:
        lines.append("unset " + " ".join(gone))
    print("\n".join(lines))
    return 0


# -- ralph shell --------------------------------------------------------------------------------------
def shell(state_dir: Path, ident: str | None) -> int:
    """Replace ralph with ``$SHELL`` so the shell owns the terminal (its stdin, job control, signals)."""
    target = find_target(state_dir, ident)
    env = target.env("shell")
    program = os.environ.get("SHELL") or "/bin/sh"
    path = shutil.which(program, path=env.get("PATH"))
    if path is None:
        print(f"ralph: cannot run the shell {program!r} ($SHELL)", file=sys.stderr)
        return 127
    if target.row is not None:
        print(f"ralph: shell in session {target.session.id} ({target.session.title}); exit to leave",
              file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(path, [program], env)  # noqa: S606 - the user's own shell, no command string


# -- ralph exec ---------------------------------------------------------------------------------------
class _ParentSpan(Span):
    """The session's iteration span, known only by its IDs: the exec span is started under it."""

    def __init__(self, carrier: Mapping[str, str]) -> None:
        self.carrier_ = dict(carrier)


class _ExecTelemetry(Telemetry):
    def __init__(self, inner: Telemetry) -> None:
        super().__init__()
        self.inner = inner
        self.warnings, self.capture_content = inner.warnings, inner.capture_content

    @property
    def enabled(self) -> bool:  # type: ignore[override]
        return self.inner.enabled

    def span(self, name: str, attributes: Mapping[str, Any], parent: Span | None = None,
             carrier: Mapping[str, str] | None = None, start: float | None = None, later: bool = False) -> Span:
        if isinstance(parent, _ParentSpan):
            return self.inner.span(name, attributes, None, parent.carrier_ or None, start, later)
        return self.inner.span(name, attributes, parent, carrier, start, later)

    def shutdown(self) -> None:
        self.inner.shutdown()


@dataclass
class _ExecServices(Services):
    log_file: Path = Path()

    def log_path(self, session: Session, name: str, attempt: int) -> Path:
        return self.log_file


class _Silent(Console):
    """The command's own output goes to the terminal as is; ralph adds nothing to it."""

    def _print(self, text: str, later: bool = False, wait: bool = True) -> None:
        pass

    def warn(self, message: str) -> None:
        _warn(message)


def _reserve_log(folder: Path) -> Path:
    """``exec-N.log``, the first N free: created exclusively, so concurrent execs never share one."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    n = 1
    while True:
        path = folder / f"exec-{n}.log"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return path
        except FileExistsError:
            n += 1


def _to_terminal(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def exec_command(state_dir: Path, ident: str | None, argv: tuple[str, ...]) -> int:
    """Run CMD as an ``exec`` step of the session: its own span under the session's iteration span,
    a history row, ``logs/<run>/<session>/exec-N.log``; exit with CMD's code."""
    from ralph import meanwhile, telemetry
    from ralph.batch import TaggedTelemetry
    from ralph.config import Telemetry as TelemetryConfig
    from ralph.interrupt import handle_signals
    from ralph.process import Request, run
    from ralph.runlog import RunLog
    from ralph.steps import StepCall, run_step

    if not argv:
        raise UsageError("ralph exec needs a command: ralph exec [--session ID] -- CMD...")
    target = find_target(state_dir, ident)
    session = target.session
    if target.row is None:  # nothing to record it under: just run it in the (empty) session env
        with handle_signals() as cancel:
            return run(Request(argv, Path.cwd(), target.env("exec")), _to_terminal, cancel).exit_code

    store = Store(state_dir)
    tel: Telemetry = telemetry.setup(state_dir, target.telemetry or TelemetryConfig())
    batch = (target.run or {}).get("batch")
    if batch:
        tel = TaggedTelemetry(tel, {"ralph.batch": batch})
    log_file = _reserve_log(state_dir / "logs" / session.run_id / session.id)
    runlog = RunLog(session.run_id, state_dir / "logs" / session.run_id / "ralph.jsonl")
    try:
        with handle_signals() as cancel:
            console = _Silent(quiet=True)
            for warning in tel.warnings:
                console.warn(warning)
            sv = _ExecServices(session.run_id, state_dir, Path.cwd(), store, _ExecTelemetry(tel), runlog, console,
                               cancel, target.loop_env, target.trace, log_file=log_file)
            outcome = run_step(sv, session, _ParentSpan(target.trace), StepCall("exec", "exec", argv),
                               on_output=_to_terminal, show_output=False)
            meanwhile.run_own()  # the step span's end
    finally:
        tel.shutdown()
        runlog.close()
        store.close()
    return outcome.exit_code

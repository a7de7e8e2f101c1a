"""One step attempt: a span, a history row, a log file, the session env, a real process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ralph import meanwhile, semconv
from ralph.console import Console, LineSplitter
from ralph.errors import StateError
from ralph.interrupt import CancelToken
from ralph.limits import Pauses
from ralph.process import Outcome, Request, run
from ralph.runlog import RunLog
from ralph.session import Session, child_env
from ralph.store import Store
from ralph.telemetry import Span, Telemetry

MIRROR_SLICE = 1 << 18  # bytes of child output split into lines for the console at a time


@dataclass(frozen=True)
class StepCall:
    name: str
    kind: str  # before | agent | after | check | exec
    argv: tuple[str, ...] = ()
    stdin: bytes | None = field(default=None, repr=False)
    timeout: float | None = None
    idle_timeout: float | None = None
    attempt: int = 1
    show_args: bool = True  # user scripts: their argv goes on the span; an agent's may hold the prompt


@dataclass
class Services:
    """What every step of a run shares."""

    run_id: str
    state_dir: Path
    workdir: Path
    store: Store
    tel: Telemetry
    runlog: RunLog
    console: Console
    cancel: CancelToken
    loop_env: Mapping[str, str]
    inbound_trace: Mapping[str, str]  # handed on to children when we make no spans of our own
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    pauses: Pauses = field(default_factory=Pauses)  # usage-limit pauses the run's items share

    def log_path(self, session: Session, name: str, attempt: int) -> Path:
        file = f"{name}.log" if attempt == 1 else f"{name}.attempt{attempt}.log"
        return self.state_dir.joinpath("logs", session.run_id, session.id, file)  # one Path, not four

    def env_for(self, session: Session, name: str, attempt: int, span: Span) -> dict[str, str]:
        trace = span.carrier() or dict(self.inbound_trace)
        env = child_env(session, name, attempt, self.loop_env, trace, self.base_env)
        env["PWD"] = str(self.workdir)  # as a shell's cd would: an inherited PWD names ralph's folder, not theirs
        return env


def run_step(
    services: Services,
    session: Session,
    parent: Span,
    call: StepCall,
    on_output: Callable[[bytes], None] | None = None,
    show_output: bool = True,
    deadline: float | None = None,
    prepare: Callable[[dict[str, str]], StepCall] | None = None,
    finish: Callable[[Span, Outcome], None] | None = None,
) -> Outcome:
    """Run one step attempt to its end. ``on_output`` sees the raw chunks as they arrive;
    ``prepare`` builds the call from the step's final env (a preset needs it to start the agent);
    ``finish`` adds to the span (and below it) once the process ended, before the span ends."""
    sv = services
    log_path = sv.log_path(session, call.name, call.attempt)
    span = sv.tel.span("ralph.step", {
        "session.id": session.id, "ralph.step.name": call.name, "ralph.step.kind": call.kind,
        "ralph.attempt": call.attempt, "ralph.iteration": session.iteration, "ralph.run_id": session.run_id,
        **semconv.step_attributes(call.kind, session),
    }, parent=parent, later=True)  # made by the SDK while the child runs: TRACEPARENT has its IDs already
    full_env = sv.env_for(session, call.name, call.attempt, span)
    if prepare is not None:
        call = prepare(full_env)
    span.set("process.executable.name", os.path.basename(call.argv[0]))
    if call.show_args:
        span.set("process.command_args", list(call.argv))
    row: dict[str, Any] = {"session_id": session.id, "run_id": session.run_id, "name": call.name, "kind": call.kind,
                           "attempt": call.attempt, "log_path": str(log_path), "span_id": span.span_id or None,
                           "started": time.time()}
    step_ids: list[Any] = []  # the row is written when the child is spawned, with its PID
    sv.runlog.routine(f"step {call.name} started", session, span, step=call.name, attempt=call.attempt)
    sv.console.status(f"{session.loop} · iteration {session.iteration} · {session.id} · {call.name}")
    splitter = LineSplitter() if show_output and not sv.console.quiet else None

    def consume(data: bytes) -> None:
        if on_output is not None:
            on_output(data)
        if splitter is not None:
            # 256 KiB at a time: a megabyte of lines at once has malloc give memory back and fault it in
            # again on every chunk, which costs more than the mirroring itself.
            for at in range(0, len(data), MIRROR_SLICE):
                sv.console.output_lines(session, call.name, splitter.feed(data[at:at + MIRROR_SLICE]))

    outcome = run(
        Request(call.argv, sv.workdir, full_env, call.stdin, call.timeout, call.idle_timeout, deadline, log_path),
        consume, sv.cancel,
        # Once the child runs: what waited for that moment, then its row, with the PID and start time
        # recovery needs.
        on_start=lambda pid, born: step_ids.append(sv.store.start_step(pid, pid_start=born, **row)),
        meanwhile=meanwhile.run_pending,
    )
    if not step_ids:  # nothing was spawned (a missing program): the attempt still gets its row
        step_ids.append(sv.store.start_step(**row))
    step_id = step_ids[0]
    if splitter is not None:
        sv.console.output_lines(session, call.name, splitter.flush())
    sv.store.finish_step(step_id, outcome.status, outcome.exit_code, pid=outcome.pid, reason=outcome.reason)
    span.set_many({"process.exit.code": outcome.exit_code, "process.pid": outcome.pid,
                   "ralph.step.status": outcome.status})
    if finish is not None:
        finish(span, outcome)
    error = None
    if not outcome.ok:
        error = {"timeout": "timeout", "interrupted": "interrupted", "error": "spawn_error"}.get(
            outcome.status, str(outcome.exit_code))
    span.end_later(error, outcome.reason)
    sv.runlog.routine(f"step {call.name} {outcome.status}", session, span, step=call.name, attempt=call.attempt,
                      exit_code=outcome.exit_code, duration=round(outcome.duration, 6), status=outcome.status)
    sv.console.step_end(session, call.name, outcome.status, outcome.exit_code, outcome.duration, call.attempt,
                        outcome.reason)
    if outcome.log_error:
        raise StateError(outcome.log_error)
    return outcome

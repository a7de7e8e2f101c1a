"""The loop: a new titled session per iteration, before steps -> agent -> after steps -> check,
until a stop condition holds. A batch runs one such loop per item, ``parallel`` at a time."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ralph import batch as batching
from ralph import isolation, meanwhile, semconv, telemetry
from ralph.agents import get_preset
from ralph.agents.base import AgentReport, Preset
from ralph.attempt import AgentAttempts
from ralph.config import Step
from ralph.console import Console, make_console
from ralph.errors import EXIT_FAILED, EXIT_OK, exit_code_for
from ralph.interrupt import CancelToken, handle_signals
from ralph.judge import Facts, Failure, Judge, Stop, claim_suffices, feedback, tail, verdict
from ralph.loader import LoopSpec
from ralph.process import Outcome, shell_argv
from ralph.provenance import Provenance, compact_change
from ralph.queue import BatchQueue, shared_queue
from ralph.runlog import RunLog
from ralph.session import Session, new_run_id, new_session_id, placeholder_values, render
from ralph.steps import Services, StepCall, run_step
from ralph.store import ResumePoint, Store, database_url, ensure_dir
from ralph.store.url import DATABASE_URL_ENV
from ralph.telemetry import Span


@dataclass(frozen=True)
class RunOptions:
    state_dir: Path
    max_iterations: int | None = None
    quiet: bool = False
    json: bool = False
    items: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None
    resume: bool = False
    report: Path | None = None  # --report FILE: the run's HTML page, kept fresh while it goes


@dataclass(frozen=True)
class LoopResult:
    item: str | None
    status: str  # complete | exhausted | failed | interrupted | lost (a shared batch's item taken over)
    reason: str
    iterations: int
    succeeded: bool  # this item counts as a success for the exit code
    stop_reason: str = "complete"  # one of judge.STOP_REASONS


class ItemLoop(AgentAttempts):
    """Iterations for one item (or the only loop, outside a batch)."""

    def __init__(self, spec: LoopSpec, options: RunOptions, sv: Services, run_span: Span, preset: Preset,
                 binary: str | None, item: str | None, resume: ResumePoint | None = None) -> None:
        self.spec, self.options, self.sv, self.run_span = spec, options, sv, run_span
        self.preset, self.binary, self.item = preset, binary, item
        # --resume: number on from where the unfinished run stopped; what it finished counts.
        self.resume = resume
        self.first_iteration = resume.last_iteration + 1 if resume else 1
        self.previous_id = resume.last_session_id if resume else None
        self.provenance = Provenance(sv, spec.workdir, spec.config.git.snapshots, spec.workdir_template is not None)

    def run(self) -> LoopResult:
        try:
            return self._run()
        finally:
            meanwhile.run_own()  # the last spans' ends (they wait for a next child's run otherwise)
            # The last iteration's end rows, which would wait for a next child's commit. (Its console
            # lines, run-log records and spans wait for any next child, or the run's end.)
            self.sv.store.flush(wait=False)  # a batch's items ending together: one commits for all

    def _run(self) -> LoopResult:
        until = self.spec.config.until
        deadline = time.monotonic() + until.max_duration if until.max_duration else None
        judge = Judge(until, self.options.max_iterations or until.max_iterations, deadline)
        if self.resume is not None:
            if self.resume.complete:
                return self._result(Stop("complete", "success condition held (before the resume)", True), 0)
            judge.done, judge.cost = self.resume.finished, self.resume.cost
        iteration, previous, told = self.first_iteration - 1, self.previous_id, ""
        while True:
            stop = judge.before_iteration(self.sv.cancel.cancelled)
            if stop is None and self.taken_over is not None and self.taken_over():
                stop = Stop("taken_over", "taken over by another host")
            # Before another iteration (not after the last: a batch item's one stat less): nothing can
            # run any more, so say so once.
            if stop is None and iteration >= self.first_iteration and not self.spec.workdir.is_dir():
                stop = Stop("error", f"the working folder {self.spec.workdir} no longer exists")
            if stop is not None:
                return self._result(stop, judge.done)
            iteration += 1
            facts, told = self.iteration(iteration, previous, deadline, told)
            previous = facts.session_id
            stop = judge.after_iteration(facts)
            if stop is not None:
                return self._result(stop, judge.done)

    # A shared batch's item: true once another host took it over (this one could not renew its lease).
    taken_over: Callable[[], bool] | None = None

    def _result(self, stop: Stop, iterations: int) -> LoopResult:
        return LoopResult(self.item, stop.status, stop.words, iterations, stop.ok, stop.reason)

    def iteration(self, number: int, previous: str | None, deadline: float | None,
                  told: str = "") -> tuple[Facts, str]:
        """One iteration, given the previous one's feedback; returns its facts and its own feedback."""
        spec, sv = self.spec, self.sv
        values = placeholder_values(spec.name, number, self.item, sv.run_id, told)
        session = Session(new_session_id(), render(spec.title_template, values), sv.run_id, spec.name, number,
                          self.item, sv.state_dir, previous, told)
        span = sv.tel.span("ralph.iteration", {
            "session.id": session.id, "session.title": session.title, "ralph.iteration": number,
            "ralph.loop": spec.name, "ralph.run_id": sv.run_id, "session.previous_id": previous,
            "ralph.item": self.item, **semconv.iteration_attributes(session),
        }, parent=self.run_span, later=True)  # made by the SDK while the first child runs
        sv.store.start_session(id=session.id, run_id=sv.run_id, loop=spec.name, title=session.title,
                               iteration=number, item=self.item, previous_id=previous,
                               trace_id=span.trace_id or None, span_id=span.span_id or None, feedback=told or None)
        sv.console.iteration_start(session)
        sv.runlog.routine("iteration started", session, span, title=session.title)
        before = self.provenance.before(session, span)

        self._failure = None
        ok, agent = self._steps(session, span, "before", deadline), None
        if ok and not sv.cancel.cancelled:
            agent = self._agent(session, span, values, deadline)
            ok = agent.outcome.ok
            if not ok:
                self._failed(session, "agent", agent.outcome, agent.attempt)
        after_ok = self._steps(session, span, "after", deadline)
        ok = ok and after_ok
        until = self.spec.config.until
        claimed, check, passed = bool(agent and agent.matched), until.command_succeeds, None
        if check is not None and agent is not None and not claim_suffices(until, claimed) \
                and not sv.cancel.cancelled:
            outcome = run_step(sv, session, span, StepCall("check", "check", shell_argv(check)), deadline=deadline)
            passed = outcome.ok
            if not outcome.ok:  # what failed is the check, whatever else did
                self._failure = None
                self._failed(session, "check", outcome, 1)
        status = verdict(until, cancelled=sv.cancel.cancelled, claimed=claimed, check_passed=passed,
                         agent_status=agent.outcome.status if agent else None, ok=ok)
        change = self.provenance.after(before, session, span)
        report = agent.report if agent else AgentReport()
        failure = self._failure if status not in ("complete", "interrupted") else None
        facts = Facts(session.id, status, report.cost_usd, failure, change)
        told_next = feedback(facts, until)
        sv.store.finish_session(session.id, status, agent_session_id=report.agent_session_id,
                                tokens_in=report.tokens_in, tokens_out=report.tokens_out, cost_usd=report.cost_usd,
                                fingerprint=failure.fingerprint if failure else None)
        # gen_ai.usage.* is on each agent attempt's span: backends sum it, so the iteration has its own names.
        span.set_many({"ralph.outcome": status, "ralph.failure.fingerprint": failure.fingerprint if failure else None,
                       semconv.ITERATION_INPUT_TOKENS: report.tokens_in,
                       semconv.ITERATION_OUTPUT_TOKENS: report.tokens_out, "ralph.cost_usd": report.cost_usd,
                       "ralph.agent.session_id": report.agent_session_id})
        span.end_later(status if status in ("failed", "timeout", "interrupted") else None)
        sv.runlog.routine(f"iteration {status}", session, span, status=status,
                       fingerprint=failure.fingerprint if failure else None)
        detail = f"${report.cost_usd:.4f}" if report.cost_usd is not None else ""
        if change is not None:  # what it did to the code, as `ralph sessions` shows it
            detail = " · ".join(filter(None, (detail, compact_change(change))))
        sv.console.iteration_end(session, status, detail)
        return facts, told_next

    _failure: Failure | None = None

    def _failed(self, session: Session, step: str, outcome: Outcome, attempt: int) -> None:
        """The first thing that failed this iteration (a step, the agent; the check overrides)."""
        if self._failure is None:
            log = self.sv.log_path(session, step, attempt)
            self._failure = Failure(step, outcome.status, outcome.exit_code, outcome.reason, tail(log))

    def _steps(self, session: Session, span: Span, kind: str, deadline: float | None) -> bool:
        ok = True
        for step in self.spec.steps(kind):
            if self.sv.cancel.cancelled:
                return False
            if not self._step(session, span, step, kind, deadline) and not step.continue_on_error:
                ok = False
                if kind == "before":
                    return False
        return ok

    def _step(self, session: Session, span: Span, step: Step, kind: str, deadline: float | None) -> bool:
        call = StepCall(step.name, kind, shell_argv(step.run), timeout=step.timeout)
        outcome = run_step(self.sv, session, span, call, deadline=deadline)
        if not outcome.ok and not step.continue_on_error:
            self._failed(session, step.name, outcome, 1)
        return outcome.ok



def _exit_status(results: list[LoopResult], cancel: CancelToken) -> tuple[str, int, str, str]:
    """The run's status, exit code, words, and stop_reason (a batch's: its first unsuccessful item's)."""
    if cancel.cancelled and cancel.signum is not None:
        return "interrupted", 128 + cancel.signum, "interrupted", "interrupted"
    failed = [r for r in results if not r.succeeded]
    if not results:
        return "ok", EXIT_OK, "no items to run", "complete"
    if not failed:
        why = results[0].reason if len(results) == 1 else f"all {len(results)} items succeeded"
        complete = all(r.status == "complete" for r in results)
        reason = "complete" if complete else next(r.stop_reason for r in results if r.status != "complete")
        return "complete" if complete else "ok", EXIT_OK, why, reason
    if len(results) == 1:
        item = f"item {failed[0].item}: " if failed[0].item is not None else ""
        return failed[0].status, EXIT_FAILED, item + failed[0].reason, failed[0].stop_reason
    names = ", ".join(f"{r.item} ({r.reason})" for r in failed)
    return ("failed", EXIT_FAILED, f"{len(failed)} of {len(results)} items did not succeed: {names}",
            failed[0].stop_reason)


def run(spec: LoopSpec, options: RunOptions, console: Console | None = None) -> int:
    """Run a validated loop to its end and return the exit code."""
    preset = get_preset(spec.config.agent.preset)
    binary = preset.binary(spec)  # a missing agent is a usage error, before anything is written
    # A shared history opens before items_command runs (a bad database URL runs nothing); the local
    # one after the items are known (a bad item writes nothing).
    store = Store(ensure_dir(options.state_dir)) if database_url() is not None else None
    try:
        items: list[str | None] = (batching.resolve_items(spec, options.items, options.shard) if spec.config.batch
                                   else [None])
    except BaseException:
        if store is not None:
            store.close()
        raise
    state_dir = ensure_dir(options.state_dir)
    store = store or Store(state_dir)
    notes: list[str] = []
    store.mark_abandoned(notes.append)
    resumed = store.unfinished_run(spec.name) if options.resume else None
    points = store.resume_points(resumed["id"]) if resumed else {}
    if options.resume:
        notes.append(f"resuming run {resumed['id']} of loop {spec.name}" if resumed
                     else f"no unfinished run of loop {spec.name} to resume; starting a new run")
    run_id = new_run_id()
    tel = telemetry.setup(state_dir, spec.config.telemetry,
                          parallel=spec.config.batch.parallel if spec.config.batch else 1)
    batch_id = batching.batch_id(spec.name) if spec.config.batch else None
    if batch_id is not None:  # every shard's run, iteration and step spans: one batch in the backend
        tel = batching.TaggedTelemetry(tel, {"ralph.batch": batch_id})
    runlog = RunLog(run_id, state_dir / "logs" / run_id / "ralph.jsonl")
    console = console or make_console(options.json, options.quiet, batch=batch_id is not None)
    for warning in notes + tel.warnings:
        console.warn(warning)
    inbound = {k: os.environ[k] for k in ("TRACEPARENT", "TRACESTATE") if os.environ.get(k)}
    try:
        with handle_signals() as cancel:
            run_span = tel.span("ralph.run", {"ralph.run_id": run_id, "ralph.loop": spec.name,
                                              **semconv.run_attributes()}, carrier=inbound)
            store.start_run(run_id, spec.name, str(spec.path.resolve()), trace_id=run_span.trace_id or None,
                            span_id=run_span.span_id or None, batch=batch_id,
                            shard="/".join(map(str, options.shard)) if options.shard else None,
                            resumed_from=resumed["id"] if resumed else None)
            live = None
            if options.report is not None:
                from ralph.report import live as live_report

                live = live_report.start(options.report, state_dir, run_id, console.warn)
            console.run_start(run_id, spec.name, str(spec.path))
            runlog.info("run started", span=run_span, loop=spec.name, file=str(spec.path))
            sv = Services(run_id, state_dir, spec.workdir, store, tel, runlog, console, cancel,
                          spec.config.env, {} if tel.enabled else inbound)
            if store.url:  # --db too: the agents' own `ralph exec`, `ralph sessions` find this history
                sv.base_env = {**sv.base_env, DATABASE_URL_ENV: store.url}
            if resumed:
                run_span.set("ralph.resumed_from", resumed["id"])
                runlog.info("run resumed", span=run_span, resumed_from=resumed["id"])
            queue: BatchQueue | None = None
            try:
                queue = shared_queue(store, spec.name, batch_id, run_id, items, spec.config.batch, cancel,
                                     console.warn, only=bool(options.items or options.shard))
                # What exists now (modules, the config, telemetry) lives to the run's end: frozen, the
                # collector stops walking it on every full collection of a long run. And what comes is
                # freed by reference counting: the collector's default pass every 700 new containers
                # ran ~300 times in a 2,000-item batch (0.1 s of its one GIL); every 20,000, a few times.
                gc.freeze()
                gc.set_threshold(20_000, 10, 10)
                results = _run_items(spec, options, sv, run_span, preset, binary, items, points, queue)
                status, code, detail, stop_reason = _exit_status(results, cancel)
            except BaseException as exc:
                status, code, detail = "error", exit_code_for(exc), f"{type(exc).__name__}: {exc}"
                stop_reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "error"
                raise
            finally:
                # Every record of the run's end is attempted even if one fails (a full disk), and
                # spans are flushed while a second Ctrl-C is still only a request.
                _closing([
                    lambda: queue.close() if queue else None,
                    lambda: store.finish_run(run_id, status, code, stop_reason),
                    lambda: run_span.set_many({"ralph.outcome": status, "process.exit.code": code,
                                               "ralph.stop_reason": stop_reason}),
                    lambda: run_span.end(None if code == EXIT_OK else status, detail),
                    lambda: runlog.info(f"run {status}", span=run_span, status=status, exit_code=code,
                                        detail=detail, stop_reason=stop_reason),
                    lambda: live.close() if live is not None else None,  # after the run's end is recorded
                    console.close,
                    # An error's one line comes from errors.guard; --json still gets its run.end event.
                    lambda: console.run_end(run_id, status, code, detail, stop_reason)
                    if status != "error" or options.json
                    else None,
                    tel.shutdown,
                ], failing=status == "error")
    finally:
        runlog.close()
        store.close()
    return code


def _closing(actions: list[Callable[[], object]], failing: bool) -> None:
    """Run every action; raise the first failure at the end unless an error is already on its way."""
    failure: BaseException | None = None
    for action in actions:
        try:
            action()
        except Exception as exc:
            failure = failure or exc
    if failure is not None and not failing:
        raise failure


def _run_items(spec: LoopSpec, options: RunOptions, sv: Services, run_span: Span, preset: Preset,
               binary: str | None, items: list[str | None],
               points: dict[str | None, ResumePoint] | None = None,
               queue: BatchQueue | None = None) -> list[LoopResult]:
    def one(item: str | None, point: ResumePoint | None = None) -> LoopResult:
        try:
            point = point or (points or {}).get(item)
            with isolation.place(spec, sv, item) as (item_spec, item_sv, problem):
                if problem is not None:  # its folder is missing: this item fails, not the run
                    result = LoopResult(item, "failed", problem, 0, False)
                else:
                    loop = ItemLoop(item_spec, options, item_sv, run_span, preset, binary, item, point)
                    if queue is not None and item is not None:
                        loop.taken_over = lambda: queue.lost(item)
                    result = loop.run()
        except BaseException:
            sv.cancel.stop()  # the run fails as a whole: the other items' children stop now
            raise
        if item is not None:
            sv.console.item_end(item, result.status, isolation.describe(spec, item, result.reason), result.iterations)
        # ralph report reads it; written with the next child's run-log records (or at the run's end)
        sv.runlog.routine("item ended", span=run_span, item=item, status=result.status,
                       reason=result.reason, iterations=result.iterations, succeeded=result.succeeded)
        return result

    if spec.config.batch:
        sv.console.batch_start([i for i in items if i is not None])

    parallel = spec.config.batch.parallel if spec.config.batch else 1
    isolation.prepare(spec, sv, parallel, len(items))
    if queue is not None:  # a shared batch: items come from the queue, as hosts free up
        return queue.run(one, parallel)
    if parallel <= 1 or len(items) <= 1:
        return [one(item) for item in items]
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="ralph-item") as pool:
        return list(pool.map(one, items))

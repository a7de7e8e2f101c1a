"""The loop: a new titled session per iteration, before steps -> agent -> after steps -> check,
until a stop condition holds. A batch runs one such loop per item, ``parallel`` at a time."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ralph import batch as batching
from ralph import isolation, semconv, telemetry
from ralph.agents import get_preset
from ralph.agents.base import AgentContext, AgentReport, Preset, StreamParser
from ralph.config import Step
from ralph.console import Console, LineSplitter, make_console
from ralph.errors import EXIT_FAILED, EXIT_OK, exit_code_for
from ralph.interrupt import CancelToken, handle_signals
from ralph.judge import Facts, Failure, Judge, Stop, claim_suffices, feedback, tail, verdict
from ralph.limits import LimitHit, LimitWatch, resume_at
from ralph.loader import LoopSpec
from ralph.process import Outcome, shell_argv
from ralph.provenance import Provenance, compact_change
from ralph.queue import BatchQueue, shared_queue
from ralph.runlog import RunLog
from ralph.scan import EchoFilter, StreamMatcher
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


@dataclass
class AgentResult:
    outcome: Outcome
    matched: bool
    report: AgentReport
    attempt: int = 1
    limit: LimitHit | None = None  # the agent hit a usage limit


class ItemLoop:
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
            if stop is not None:
                return self._result(stop, judge.done)
            iteration += 1
            facts, told = self.iteration(iteration, previous, deadline, told)
            previous = facts.session_id
            stop = judge.after_iteration(facts)
            if stop is None and not self.spec.workdir.is_dir():  # nothing can run any more: say so once
                stop = Stop("error", f"the working folder {self.spec.workdir} no longer exists")
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
        }, parent=self.run_span)
        sv.store.start_session(id=session.id, run_id=sv.run_id, loop=spec.name, title=session.title,
                               iteration=number, item=self.item, previous_id=previous,
                               trace_id=span.trace_id or None, span_id=span.span_id or None, feedback=told or None)
        sv.console.iteration_start(session)
        sv.runlog.info("iteration started", session, span, title=session.title)
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
        span.end(status if status in ("failed", "timeout", "interrupted") else None)
        sv.runlog.info(f"iteration {status}", session, span, status=status,
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

    def _agent(self, session: Session, span: Span, values: dict[str, object], deadline: float | None) -> AgentResult:
        agent = self.spec.config.agent
        retry = agent.retry
        prompt = render(self.spec.prompt, values) if self.spec.prompt is not None else None
        report = AgentReport()
        until = StreamMatcher([self.spec.config.until.output_contains or ""])
        attempts: list[AgentResult] = []

        def attempt() -> AgentResult:
            if attempts and self.sv.cancel.cancelled:
                return attempts[-1]
            while True:  # a usage limit pauses, then the same iteration goes on in the same session
                self.sv.pauses.wait(self.preset.name, self.sv.cancel)
                result = self._agent_attempt(session, span, prompt, len(attempts) + 1, until, report, deadline)
                attempts.append(result)
                if result.limit is None or not self._pause(session, span, result.limit, deadline):
                    return result

        if retry.attempts == 1:  # no retries: what tenacity would return, without building it every iteration
            return attempt()
        from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_exponential_jitter

        def should_retry(result: AgentResult) -> bool:
            if result.outcome.ok or result.matched or self.sv.cancel.cancelled:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if not retry.on_exit_codes and not retry.on_output:
                return True
            return result.outcome.exit_code in retry.on_exit_codes or bool(self._retry_hit)

        def before_sleep(state: object) -> None:
            seconds = getattr(getattr(state, "next_action", None), "sleep", 0.0)
            self.sv.console.retry_wait(session, "agent", seconds, len(attempts))
            self.sv.runlog.info("agent retry", session, span, attempt=len(attempts), wait=seconds)

        backoff = wait_exponential_jitter(initial=retry.backoff, max=retry.max_backoff, jitter=retry.backoff / 2)

        def wait(state: RetryCallState) -> float:  # never wait past max_duration
            left = deadline - time.monotonic() if deadline is not None else float("inf")
            return max(0.0, min(backoff(state), left))

        retrying = Retrying(
            stop=stop_after_attempt(retry.attempts),
            wait=wait,
            retry=retry_if_result(should_retry), sleep=self._sleep, before_sleep=before_sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else attempts[-1],
        )
        return retrying(attempt)

    _retry_hit: str | None = None

    def _sleep(self, seconds: float) -> None:
        self.sv.cancel.wait(seconds)  # an interrupt cuts the backoff short

    def _pause(self, session: Session, span: Span, hit: LimitHit, deadline: float | None) -> bool:
        """Wait out a usage limit (every item on this preset waits too). False: do not run again
        (interrupted, or max_duration came first)."""
        if self.sv.cancel.cancelled:
            return False
        until = resume_at(hit, self.spec.config.agent.usage_limit.wait, deadline)
        self.sv.pauses.hold(self.preset.name, until)
        span.event("ralph.usage_limit", {"ralph.usage_limit.message": hit.words,
                                         "ralph.usage_limit.resumes_at": round(until, 3)})
        self.sv.console.paused(session, until, "usage limit")
        self.sv.runlog.info("paused: usage limit", session, span, said=hit.words, until=round(until, 3))
        self.sv.pauses.wait(self.preset.name, self.sv.cancel)
        return not self.sv.cancel.cancelled and (deadline is None or time.monotonic() < deadline)

    def _agent_attempt(self, session: Session, span: Span, prompt: str | None, number: int, until: StreamMatcher,
                       report: AgentReport, deadline: float | None) -> AgentResult:
        agent = self.spec.config.agent
        retry_on = StreamMatcher(agent.retry.on_output, ignore_case=True)
        claims = EchoFilter(prompt, until)  # an echoed prompt claims nothing
        watch = LimitWatch(agent.usage_limit.pattern)
        ctx_holder: list[AgentContext] = []
        parser_holder: list[StreamParser] = []
        said: list[str] = []  # the model's last words, for output.value
        before = (report.tokens_in, report.tokens_out)

        started: list[float] = []

        def prepare(env: dict[str, str]) -> StepCall:
            started.append(time.time())
            ctx = AgentContext(self.spec, session, prompt, env, self.sv.log_path(session, "agent", number).parent,
                               number, self.binary)
            ctx_holder.append(ctx)
            for warning in self.preset.prepare(ctx):
                self.sv.console.warn(warning)
                self.sv.runlog.warning(warning, session, span)
            parser = self.preset.parser(ctx)
            if parser is not None:
                parser.report = report  # attempts of one iteration add up
                parser_holder.append(parser)
            inv = self.preset.invocation(ctx)
            env.update(inv.env)  # run_step spawns the agent with this very dict
            return StepCall("agent", "agent", inv.argv, inv.stdin, agent.timeout, agent.idle_timeout, number,
                            show_args=False)

        splitter = LineSplitter()

        def on_output(data: bytes) -> None:
            if not parser_holder:
                claims.feed(data)
                retry_on.feed(data)
                if watch.pattern is not None:
                    for line in splitter.feed(data):
                        watch.line(line.decode("utf-8", "replace"))
                return
            shown = []
            for line in splitter.feed(data):
                display, text = parser_holder[0].feed(line)
                if text:
                    said[:] = [text]
                    claims.feed_text(text)
                    retry_on.feed(text.encode("utf-8") + b"\n")
                elif display:  # not the model's words: the CLI's own (stderr, errors)
                    watch.line(display)
                if display is not None:
                    shown.extend(display.encode("utf-8").split(b"\n"))  # each line gets the prefix
            self.sv.console.output_lines(session, "agent", shown)

        def finish(step_span: Span, outcome: Outcome) -> None:
            if parser_holder:
                on_output(b"")
                for line in splitter.flush():
                    parser_holder[0].feed(line)
            else:
                claims.flush()
                for line in splitter.flush():
                    watch.line(line.decode("utf-8", "replace"))
            parser = parser_holder[0] if parser_holder else None
            provider, model = self.preset.model_info(agent.model)
            tel = self.sv.tel
            semconv.agent_result(
                tel, step_span, session, started=started[0] if started else time.time(), provider=provider,
                model=model, response_model=parser.model if parser else None,
                tokens_in=_spent(before[0], report.tokens_in), tokens_out=_spent(before[1], report.tokens_out),
                agent_session_id=report.agent_session_id, prompt=prompt, output=said[-1] if said else None,
                capture=tel.capture_content)
            if parser is not None:
                semconv.tool_spans(tel, step_span, session, parser.finish(), tel.capture_content)

        try:
            outcome = run_step(self.sv, session, span, StepCall("agent", "agent", attempt=number), on_output,
                               show_output=not self.preset.structured, deadline=deadline, prepare=prepare,
                               finish=finish)
        finally:
            for ctx in ctx_holder:  # however the attempt ended: the preset ends what the agent left running
                for note in self.preset.cleanup(ctx):
                    self.sv.runlog.info(note, session, span, step="agent", attempt=number)
        self._retry_hit = retry_on.found
        hit = watch.hit or (parser_holder[0].limit if parser_holder else None)
        if self.sv.cancel.cancelled or until.found is not None:
            hit = None  # interrupted, or done anyway: nothing to run again
        return AgentResult(outcome, until.found is not None, report, number, hit)


def _spent(before: int | None, after: int | None) -> int | None:
    """An attempt's share of an iteration's running token total."""
    return None if after is None else after - (before or 0)


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
    tel = telemetry.setup(state_dir, spec.config.telemetry)
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
        sv.runlog.info("item ended", span=run_span, item=item, status=result.status,  # ralph report reads it
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

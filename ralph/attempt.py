"""One iteration's agent: its attempts (retries with backoff, a usage limit's pause), each a step
whose output is watched for the promise, retry patterns and usage limits. Mixed into the runner's
``ItemLoop``."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ralph import semconv
from ralph.agents.base import AgentContext, AgentReport, Preset, StreamParser
from ralph.console import LineSplitter
from ralph.limits import LimitHit, LimitWatch, resume_at
from ralph.loader import LoopSpec
from ralph.process import Outcome
from ralph.scan import EchoFilter, StreamMatcher
from ralph.session import Session, render
from ralph.steps import Services, StepCall, run_step
from ralph.telemetry import Span


@dataclass
class AgentResult:
    outcome: Outcome
    matched: bool
    report: AgentReport
    attempt: int = 1
    limit: LimitHit | None = None  # the agent hit a usage limit


class AgentAttempts:
    """The agent of an iteration (``ItemLoop`` has the loop around it)."""

    spec: LoopSpec
    sv: Services
    preset: Preset
    binary: str | None

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
                if self.sv.pauses.until(self.preset.name) > time.time():
                    self.sv.store.flush()  # nothing waits uncommitted through a pause
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
        self.sv.store.flush()
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
        self.sv.store.flush()
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

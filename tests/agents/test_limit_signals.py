"""The presets' parsers read usage limits from their CLI's own events, never from the model's words.
The real CLIs' 429 paths run in the preset tests; these are the event shapes a local API cannot make
a CLI print (Claude's subscription ``rate_limit_event``, its limit messages)."""

from __future__ import annotations

import json
import time

from ralph.agents.claude import ClaudeParser, _Recent
from ralph.agents.codex import CodexParser, _Threads
from ralph.agents.opencode import OpencodeParser, _Binding


def feed(parser: object, *events: dict) -> list[tuple[str | None, str | None]]:
    return [parser.feed(json.dumps(e).encode()) for e in events]  # type: ignore[attr-defined]


def test_claude_rate_limit_event_rejected_with_its_reset() -> None:
    parser = ClaudeParser("uuid", False, _Recent())
    feed(parser, {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning", "resetsAt": 1}})
    assert parser.limit is None  # a warning: it goes on
    shown = feed(parser, {"type": "rate_limit_event", "rate_limit_info": {
        "status": "rejected", "resetsAt": 1767003600, "rateLimitType": "five_hour"}})
    assert shown == [("claude: five_hour limit reached", None)]
    assert parser.limit is not None and parser.limit.resets_at == 1767003600.0


def test_claude_limit_messages_are_read_from_its_errors_only() -> None:
    parser = ClaudeParser("uuid", False, _Recent())
    said = "I read that Claude AI usage limit reached|1767003600 is a message you may see."
    (shown,) = feed(parser, {"type": "assistant", "message": {"content": [{"type": "text", "text": said}]}})
    assert shown == (said, said) and parser.limit is None  # the model's words: a claim, never a limit
    synthetic = {"type": "assistant", "is_api_error_message": True, "api_error_status": 429, "error": "rate_limit",
                 "message": {"model": "<synthetic>", "content": [{"type": "text", "text":
                             "Claude AI usage limit reached|1767003600"}]}}
    (shown,) = feed(parser, synthetic)
    assert shown == ("Claude AI usage limit reached|1767003600", None)  # shown, but claims nothing
    assert parser.limit is not None and parser.limit.resets_at == 1767003600.0

    parser = ClaudeParser("uuid", False, _Recent())
    feed(parser, {"type": "result", "is_error": True, "result": "5-hour limit reached ∙ resets 3pm"})
    assert parser.limit is not None and time.localtime(parser.limit.resets_at or 0).tm_hour == 15


def test_codex_limits_come_from_its_error_events_not_agent_messages() -> None:
    parser = CodexParser("ses_x", False, _Threads())
    feed(parser, {"type": "item.completed", "item": {"type": "agent_message",
                                                     "text": "You've hit your usage limit, try again in 5 minutes"}})
    assert parser.limit is None
    before = time.time()
    feed(parser, {"type": "error", "message": "You've hit your usage limit. Try again in 5 minutes."})
    assert parser.limit is not None and parser.limit.resets_at is not None
    assert before + 299 <= parser.limit.resets_at <= time.time() + 301


def test_opencode_limits_come_from_its_error_events() -> None:
    parser = OpencodeParser(_Binding(bound=True))
    feed(parser, {"type": "text", "part": {"type": "text", "text": "got a 429, retry-after: 30"}})
    assert parser.limit is None
    before = time.time()
    feed(parser, {"type": "error", "error": {"name": "APIError", "data": {
        "message": "Rate limit reached", "statusCode": 429, "responseHeaders": {"retry-after": "30"}}}})
    assert parser.limit is not None and parser.limit.resets_at is not None
    assert before + 30 <= parser.limit.resets_at <= time.time() + 30

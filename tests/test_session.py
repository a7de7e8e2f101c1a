from __future__ import annotations

from pathlib import Path

from ralph.session import SESSION_ID_RE, Session, child_env, new_run_id, new_session_id, render, resource_attributes


def test_session_ids_have_opencodes_shape_and_are_unique() -> None:
    ids = [new_session_id() for _ in range(5000)]
    assert all(SESSION_ID_RE.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert new_run_id().startswith("run_")


def test_render_replaces_only_named_placeholders() -> None:
    values = {"loop": "l", "iteration": 3, "item": "api", "run_id": "run_x", "date": "2026-11-25"}
    assert render("{loop}/{item} #{iteration} {run_id} {date}", values) == "l/api #3 run_x 2026-11-25"
    assert render("{other} {{iteration}} {ITERATION} { iteration }", values) == "{other} {3} {ITERATION} { iteration }"
    assert render("$(rm -rf /) `x` {item}", {"item": "$(y)"}) == "$(rm -rf /) `x` $(y)"


def test_child_env_is_a_new_dict_with_ours_winning(monkeypatch) -> None:
    import os

    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=a,session.id=old")
    monkeypatch.setenv("TRACEPARENT", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    s = Session("ses_x", "T", "run_y", "loop", 2, None, Path("/state"))
    before = dict(os.environ)
    env = child_env(s, "agent", 3, {"MINE": "1"}, {"TRACEPARENT": "tp"})
    assert dict(os.environ) == before
    assert env["OPENCODE_SESSION_ID"] == env["RALPH_SESSION_ID"] == "ses_x"
    assert env["RALPH_ATTEMPT"] == "3" and env["RALPH_ITEM"] == "" and env["MINE"] == "1"
    assert env["TRACEPARENT"] == "tp"
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "team=a,session.id=ses_x"


def test_resource_attributes() -> None:
    assert resource_attributes(None, "ses_1") == "session.id=ses_1"
    assert resource_attributes("a=b", "") == "a=b"

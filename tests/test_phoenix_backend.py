"""End to end against a real tracing backend: Arize Phoenix (see docs/phoenix-notes.md).

Exports ralph's span shape (``ralph.run`` -> ``ralph.iteration`` -> ``ralph.step``, with
``session.id`` on iterations and steps) with the plain OpenTelemetry SDK over OTLP/HTTP,
and reads it back through Phoenix's REST and GraphQL APIs.

Phoenix lives in its own venv: ``scripts/install-phoenix.sh``. Without it this module is
skipped, except under CI (env ``CI`` set), where it fails.
"""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

try:  # `python -m pytest` from the repo root, or tests/ as a package
    from tests.support.phoenix import (
        DEFAULT_PROJECT,
        PHOENIX_VERSION,
        PROJECT_RESOURCE_ATTRIBUTE,
        PhoenixServer,
        find_phoenix,
    )
except ImportError:  # plain `pytest`: tests/ itself is on sys.path
    from support.phoenix import (  # type: ignore[no-redef]
        DEFAULT_PROJECT,
        PHOENIX_VERSION,
        PROJECT_RESOURCE_ATTRIBUTE,
        PhoenixServer,
        find_phoenix,
    )

pytestmark = pytest.mark.phoenix

_B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def new_session_id() -> str:
    """A contract-shaped session ID: ``ses_`` + 12 lowercase hex + 14 base62."""
    return "ses_" + secrets.token_hex(6) + "".join(secrets.choice(_B62) for _ in range(14))


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhoenixServer]:
    if find_phoenix() is None:
        message = (
            "Arize Phoenix is not installed: run scripts/install-phoenix.sh "
            "(or point RALPH_PHOENIX_BIN at a `phoenix` executable)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with PhoenixServer(tmp_path_factory.mktemp("phoenix")) as server:
        yield server


def make_provider(endpoint: str, project: str | None = None) -> TracerProvider:
    attributes: dict[str, Any] = {"service.name": "ralph"}
    if project is not None:
        attributes[PROJECT_RESOURCE_ATTRIBUTE] = project
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=10)))
    return provider


def by_span_id(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["context"]["span_id"]: s for s in spans}


def test_ralph_span_tree_round_trips_through_phoenix(phoenix: PhoenixServer) -> None:
    """ralph's layout: one trace per run, iterations and steps nested under ralph.run.

    No project resource attribute, so Phoenix files the spans under ``default``.
    """
    sessions = [new_session_id(), new_session_id()]
    provider = make_provider(phoenix.otlp_traces_endpoint)
    tracer = provider.get_tracer("ralph")
    with tracer.start_as_current_span("ralph.run", attributes={"ralph.run_id": "run-1"}) as run:
        for number, session_id in enumerate(sessions, start=1):
            iteration_attributes = {"session.id": session_id, "ralph.iteration": number, "ralph.loop": "demo"}
            step_attributes = {
                "session.id": session_id,
                "ralph.step.name": "agent",
                "ralph.step.kind": "agent",
                "process.exit.code": 0,
            }
            with (
                tracer.start_as_current_span("ralph.iteration", attributes=iteration_attributes),
                tracer.start_as_current_span("ralph.step", attributes=step_attributes),
            ):
                pass
    provider.shutdown()
    run_trace_id = format(run.get_span_context().trace_id, "032x")

    spans = phoenix.wait_for_spans(5, project=DEFAULT_PROJECT, trace_id=run_trace_id)
    assert len(spans) == 5, spans
    assert sorted(s["name"] for s in spans) == [
        "ralph.iteration",
        "ralph.iteration",
        "ralph.run",
        "ralph.step",
        "ralph.step",
    ]
    assert {s["context"]["trace_id"] for s in spans} == {run_trace_id}

    index = by_span_id(spans)
    (root,) = [s for s in spans if s["name"] == "ralph.run"]
    assert root["parent_id"] is None
    assert root["context"]["span_id"] == format(run.get_span_context().span_id, "016x")
    assert root["attributes"] == {"ralph.run_id": "run-1"}

    iterations = sorted(
        (s for s in spans if s["name"] == "ralph.iteration"),
        key=lambda s: s["attributes"]["ralph.iteration"],
    )
    assert [s["attributes"]["session.id"] for s in iterations] == sessions
    for iteration in iterations:
        assert iteration["parent_id"] == root["context"]["span_id"]
        assert iteration["attributes"]["ralph.loop"] == "demo"

    steps = [s for s in spans if s["name"] == "ralph.step"]
    for step in steps:
        parent = index[step["parent_id"]]
        assert parent["name"] == "ralph.iteration"
        assert step["attributes"]["session.id"] == parent["attributes"]["session.id"]
        assert step["attributes"]["process.exit.code"] == 0
    assert sorted(s["attributes"]["session.id"] for s in steps) == sorted(sessions)

    # Phoenix keeps span attributes only: resource attributes are not stored with spans.
    assert all("service.name" not in s["attributes"] for s in spans)

    # Phoenix's session view is per *trace*: a trace joins the session of the first
    # session.id it ingests and keeps it, so a run whose iterations share one trace
    # shows as ONE Phoenix session (holding the whole run), not one per ralph session.
    listed = phoenix.wait_for_sessions(1, project=DEFAULT_PROJECT)
    mine = [s for s in listed if s["session_id"] in sessions]
    assert len(mine) == 1, listed
    assert [t["trace_id"] for t in mine[0]["traces"]] == [run_trace_id]
    assert set(phoenix.graphql_session_ids(DEFAULT_PROJECT)) & set(sessions) == {mine[0]["session_id"]}
    # Each ralph session's spans can still be found by attribute filter.
    for session_id in sessions:
        found = phoenix.spans(DEFAULT_PROJECT, attribute=f"session.id:{session_id}")
        assert sorted(s["name"] for s in found) == ["ralph.iteration", "ralph.step"]


def test_every_session_listed_when_each_iteration_roots_its_own_trace(
    phoenix: PhoenixServer,
) -> None:
    """The layout Phoenix's Sessions view needs to list every ralph session: each
    ``ralph.iteration`` starts a new trace (linked to ``ralph.run``), so each trace
    carries exactly one session.id. Also checks project choice by resource attribute.
    """
    project = "ralph-e2e"
    sessions = [new_session_id(), new_session_id()]
    provider = make_provider(phoenix.otlp_traces_endpoint, project=project)
    tracer = provider.get_tracer("ralph")
    iteration_trace_ids: list[str] = []
    with tracer.start_as_current_span("ralph.run") as run:
        for number, session_id in enumerate(sessions, start=1):
            with tracer.start_as_current_span(
                "ralph.iteration",
                context=otel_context.Context(),  # a new trace
                links=[trace.Link(run.get_span_context())],
                attributes={"session.id": session_id, "ralph.iteration": number},
            ) as iteration:
                iteration_trace_ids.append(format(iteration.get_span_context().trace_id, "032x"))
                with tracer.start_as_current_span("ralph.step", attributes={"session.id": session_id}):
                    pass
    provider.shutdown()

    spans = phoenix.wait_for_spans(5, project=project)
    assert project in phoenix.projects()
    assert len({s["context"]["trace_id"] for s in spans}) == 3
    index = by_span_id(spans)
    for step in (s for s in spans if s["name"] == "ralph.step"):
        assert index[step["parent_id"]]["name"] == "ralph.iteration"
    for iteration in (s for s in spans if s["name"] == "ralph.iteration"):
        assert iteration["parent_id"] is None  # a trace root; the Link is not kept by Phoenix

    listed = phoenix.wait_for_sessions(2, project=project)
    assert sorted(s["session_id"] for s in listed) == sorted(sessions)
    for session in listed:
        (trace_id,) = [t["trace_id"] for t in session["traces"]]
        assert trace_id == iteration_trace_ids[sessions.index(session["session_id"])]
    assert sorted(phoenix.graphql_session_ids(project)) == sorted(sessions)
    # Nothing of this run leaked into the default project.
    assert not set(phoenix.session_ids(DEFAULT_PROJECT)) & set(sessions)


def test_server_helpers(phoenix: PhoenixServer) -> None:
    assert phoenix.base_url.startswith("http://127.0.0.1:")
    assert phoenix.otlp_traces_endpoint == phoenix.base_url + "/v1/traces"
    assert phoenix.port != phoenix.grpc_port
    assert phoenix.version() == PHOENIX_VERSION
    assert DEFAULT_PROJECT in phoenix.projects()
    assert phoenix.spans("no-such-project") == []
    assert phoenix.sessions("no-such-project") == []

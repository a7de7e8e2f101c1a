"""``ralph show`` draws the span tree of a run or session from traces.jsonl, with no backend."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from helpers import PY, ralph, write_loop, yaml_list
from ralph import spantree

DURATION = r"\d+\.\d(ms)?|\d+\.\d\ds"


def _run(tmp_path: Path, extra_env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """Two iterations of before -> agent -> after (which fails, leniently); the run ID and session IDs."""
    loop = write_loop(
        tmp_path,
        f"""
        name: tree
        agent: {{command: {yaml_list([PY, "-c", "print('agent')"])}}}
        steps:
          before: [{{name: prep, run: "true"}}]
          after: [{{name: flaky, run: "exit 3", continue_on_error: true}}]
        until: {{max_iterations: 2}}
    """,
    )
    result = ralph("run", str(loop), env=extra_env)
    assert result.returncode == 0, result.stderr
    sessions = json.loads(ralph("sessions", "--json").stdout)
    return sessions[0]["run_id"], [s["id"] for s in sorted(sessions, key=lambda s: s["iteration"])]


def _tree(output: str) -> list[str]:
    return output[output.index("\nspans:\n") + len("\nspans:\n") :].splitlines()


def test_show_run_draws_the_whole_tree_indented_by_parent(tmp_path: Path) -> None:
    run_id, (first, second) = _run(tmp_path)
    result = ralph("show", run_id)
    assert result.returncode == 0, result.stderr
    tree = _tree(result.stdout)
    shapes = [re.sub(rf"  ({DURATION})$", "  D", line) for line in tree]
    assert shapes == [
        f"ralph.run tree {run_id} ok exit=0  D",
        f"  ralph.iteration #1 {first} ok  D",
        "    ralph.step before:prep exit=0  D",
        "    ralph.step agent:agent exit=0  D",
        "    ralph.step after:flaky exit=3 ERROR(3)  D",
        f"  ralph.iteration #2 {second} ok  D",
        "    ralph.step before:prep exit=0  D",
        "    ralph.step agent:agent exit=0  D",
        "    ralph.step after:flaky exit=3 ERROR(3)  D",
    ], tree


def test_show_session_draws_only_its_iteration(tmp_path: Path) -> None:
    _run_id, (_first, second) = _run(tmp_path)
    tree = _tree(ralph("show", second[:12]).stdout)  # a unique prefix works too
    assert [line.rsplit("  ", 1)[0] for line in tree] == [
        f"ralph.iteration #2 {second} ok",
        "  ralph.step before:prep exit=0",
        "  ralph.step agent:agent exit=0",
        "  ralph.step after:flaky exit=3 ERROR(3)",
    ]


def test_show_json_includes_the_spans(tmp_path: Path) -> None:
    run_id, (first, _second) = _run(tmp_path)
    data = json.loads(ralph("show", run_id, "--json").stdout)
    spans = {s["span_id"]: s for s in data["spans"]}
    assert len(spans) == 1 + 2 * 4
    (root,) = [s for s in spans.values() if s["parent_id"] is None]
    assert root["name"] == "ralph.run" and root["span_id"] == data["span_id"]
    for s in spans.values():
        assert s["trace_id"] == data["trace_id"] and s["end"] >= s["start"] > 0
        if s["name"] == "ralph.step":
            parent = spans[s["parent_id"]]
            assert parent["name"] == "ralph.iteration"
            assert parent["attributes"]["session.id"] == s["attributes"]["session.id"]
            assert isinstance(s["attributes"]["process.exit.code"], int)
            assert s["status"] == ("error" if s["attributes"]["ralph.step.name"] == "flaky" else "unset")

    session = json.loads(ralph("show", first, "--json").stdout)
    assert [s["name"] for s in session["spans"]] == ["ralph.iteration"] + ["ralph.step"] * 3
    assert session["spans"][0]["span_id"] == session["span_id"]


def test_show_without_traces_has_no_tree(tmp_path: Path) -> None:
    run_id, _ = _run(tmp_path, {"OTEL_SDK_DISABLED": "true"})
    result = ralph("show", run_id)
    assert result.returncode == 0, result.stderr
    assert "spans:" not in result.stdout
    assert json.loads(ralph("show", run_id, "--json").stdout)["spans"] == []


def _span(
    name: str, span_id: str, parent: str = "", start: int = 1, links: tuple[str, ...] = (), **attrs: object
) -> dict[str, object]:
    def value(v: object) -> dict[str, object]:
        return {"intValue": str(v)} if isinstance(v, int) else {"stringValue": str(v)}

    return {
        "traceId": "ab" * 16,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "startTimeUnixNano": str(start * 10**9),
        "endTimeUnixNano": str(start * 10**9 + 2_500_000),
        "links": [{"traceId": "cd" * 16, "spanId": link} for link in links],
        "attributes": [{"key": k.replace("_", "."), "value": value(v)} for k, v in attrs.items()],
    }


def test_render_tolerates_base64_ids_orphans_links_and_other_traces(tmp_path: Path) -> None:
    b64 = base64.b64encode(bytes.fromhex("11" * 8)).decode()
    lines = [
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {
                            "spans": [
                                _span("ralph.run", b64, start=1),
                                _span(
                                    "ralph.step", "22" * 8, parent="99" * 8, start=3, ralph_attempt=2
                                ),  # parent not in file
                                _span(
                                    "ralph.iteration", "33" * 8, start=2, links=(b64,)
                                ),  # its own trace's root, linked
                                {**_span("custom.child", "44" * 8, parent="33" * 8, start=4), "traceId": "ef" * 16},
                            ]
                        }
                    ]
                }
            ]
        },
        "not json",
    ]
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    spans = list(spantree.read_spans(path, ["ab" * 16]))
    assert [s["span_id"] for s in spans] == ["11" * 8, "22" * 8, "33" * 8]
    assert spantree.render(spans) == [
        "ralph.run  2.5ms",
        "  ralph.iteration #None  2.5ms",
        "ralph.step None:None attempt 2  2.5ms",
    ]
    assert len(list(spantree.read_spans(path, ["ab" * 16, "ef" * 16]))) == 4
    assert list(spantree.read_spans(tmp_path / "missing.jsonl", ["ab" * 16])) == []

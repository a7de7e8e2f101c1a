from __future__ import annotations

import json

import pytest

from helpers import imported_modules, ralph, write_loop
from ralph.config import parse_duration, unknown_placeholders


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("250ms", 0.25), (45, 45), ("1.5h", 5400),
    ("2m30s", 150),
])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m", "1d", "-1s", "0s", "1h1h", True, None, [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_placeholders() -> None:
    assert unknown_placeholders("{loop} {iteration} {item} {run_id} {date}") == []
    assert unknown_placeholders("{x} {{iteration}} { y } {}") == ["x"]


def test_schema_is_json_schema_of_the_loop_file() -> None:
    result = ralph("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"name", "title", "workdir", "env", "agent", "steps", "until", "batch"} <= set(schema["properties"])
    assert schema["required"] == ["name", "agent"]
    # Loop judgement: its keys, the {feedback} placeholder and the stop reasons are documented there.
    defs = schema["$defs"]
    assert {"same_failure", "output_contains"} <= set(defs["Until"]["properties"])
    assert "same failure fingerprint" in defs["Until"]["properties"]["same_failure"]["description"]
    for reason in ("complete", "max_iterations", "max_duration", "max_cost", "max_consecutive_failures",
                   "no_progress", "same_failure", "interrupted", "error"):
        assert reason in defs["Until"]["description"]
    assert set(defs["UsageLimit"]["properties"]) == {"pattern", "wait"}
    assert "usage_limit" in defs["Agent"]["properties"]
    assert "{feedback}" in defs["Agent"]["properties"]["prompt"]["description"]


def test_init_writes_a_loop_that_validates_and_runs(tmp_path) -> None:
    result = ralph("init", "starter", "--name", "starter")
    assert result.returncode == 0, result.stderr
    assert ralph("validate", "starter/ralph.yaml").returncode == 0
    assert ralph("init", "starter").returncode == 2  # no silent overwrite
    run = ralph("run", "starter/ralph.yaml", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    # Its stand-in agent echoes the prompt, which names the promise: that claims nothing. It says
    # the promise itself in iteration 2, and is told in its prompt why iteration 1 did not finish.
    assert [e["status"] for e in events if e["event"] == "iteration.end"] == ["ok", "complete"]
    second = [e["line"] for e in events if e["event"] == "output" and e["iteration"] == 2]
    assert second[-1] == "<promise>COMPLETE</promise>"
    assert any("did not say '<promise>COMPLETE</promise>'" in line for line in second)
    assert events[-1]["event"] == "run.end" and events[-1]["stop_reason"] == "complete"


def test_version() -> None:
    from ralph import __version__

    result = ralph("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"ralph {__version__}"


def test_validate_skips_pydantic_plugin_lookup(tmp_path) -> None:
    """pydantic's plugin lookup imports importlib.metadata (and email) and scans every installed
    distribution: 25-60 ms of each start. ralph stands in for it (``config._skip_pydantic_plugin_lookup``)."""
    loop = write_loop(tmp_path, 'name: quick\nagent: {command: "true"}\n')
    imported = imported_modules("validate", str(loop))
    assert "pydantic" in imported and "ralph.config" in imported
    assert not [m for m in imported if m.startswith(("importlib.metadata", "email"))]


def test_pydantic_still_looks_up_plugins_where_ralph_stands_in() -> None:
    """The stand-in replaces ``pydantic.plugin._loader``, of which pydantic uses ``get_plugins`` only:
    if a pydantic upgrade moves the lookup, this says so (the stand-in would then be inert)."""
    import inspect

    import pydantic.plugin._schema_validator as schema_validator

    source = inspect.getsource(schema_validator)
    assert "from ._loader import get_plugins" in source
    assert source.count("_loader") == 1

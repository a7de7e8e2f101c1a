"""Lazy imports: ``--help`` pays for none of the loop machinery (that commands exporting nothing skip
OpenTelemetry is checked in test_telemetry.py; start-up time is measured in benchmarks/, not here)."""

from __future__ import annotations

import pytest

from helpers import imported_modules

HEAVY = ("opentelemetry", "pydantic", "yaml", "sqlite3", "tenacity")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"]])
def test_help_imports_none_of_the_machinery(args: list[str]) -> None:
    assert not [m for m in imported_modules(*args) if m.split(".")[0] in HEAVY]

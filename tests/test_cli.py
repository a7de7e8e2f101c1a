"""Lazy imports: ``--help`` pays for none of the loop machinery (that commands exporting nothing skip
OpenTelemetry is checked in test_telemetry.py; start-up time is measured in benchmarks/, not here),
and the quick exit without interpreter teardown loses nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers import imported_modules, python, ralph

HEAVY = ("opentelemetry", "pydantic", "yaml", "sqlite3", "tenacity", "psycopg")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"]])
def test_help_imports_none_of_the_machinery(args: list[str]) -> None:
    assert not [m for m in imported_modules(*args) if m.split(".")[0] in HEAVY]


def test_the_quick_exit_flushes_output_runs_atexit_and_keeps_the_code(tmp_path: Path) -> None:
    """``cli.main`` leaves with os._exit (no interpreter teardown): piped output must still be
    whole, atexit handlers still run, and the exit code is the command's."""
    schema = ralph("schema")
    assert schema.returncode == 0 and len(schema.stdout) > 8192  # more than one stdout buffer
    assert json.loads(schema.stdout)["title"] == "ralph loop file"
    assert ralph("validate", str(tmp_path / "missing.yaml")).returncode == 2

    mark = tmp_path / "atexit-ran"
    proc = _version_after(f"import atexit, pathlib\natexit.register(pathlib.Path({str(mark)!r}).write_text, 'yes')\n")
    assert proc.returncode == 0 and proc.stdout.startswith("ralph "), proc.stderr
    assert mark.read_text() == "yes"


def test_a_running_thread_gets_the_usual_exit_which_waits_for_it(tmp_path: Path) -> None:
    mark = tmp_path / "thread-done"
    proc = _version_after("import pathlib, threading, time\n"
                          f"def work():\n    time.sleep(0.3)\n    pathlib.Path({str(mark)!r}).write_text('done')\n"
                          "threading.Thread(target=work).start()\n")
    assert proc.returncode == 0, proc.stderr
    assert mark.read_text() == "done"


def _version_after(setup: str) -> subprocess.CompletedProcess[str]:
    """``ralph --version`` through ``cli.main`` (the console script's path) after ``setup`` ran."""
    return python(setup + "import sys\nfrom ralph.cli import main\nsys.argv = ['ralph', '--version']\nmain()\n")

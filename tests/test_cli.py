"""Lazy imports: commands that export nothing do not pay for OpenTelemetry, and ``--help`` pays for
none of the loop machinery (start-up time is measured in benchmarks/, not here)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import PY, ROOT, write_loop

HEAVY = ("opentelemetry", "pydantic", "yaml", "sqlite3", "tenacity")

# Runs the CLI in-process and prints the top-level packages it imported.
PROBE = (
    "import json, sys\n"
    "from ralph.cli import main\n"
    "sys.argv = ['ralph', *json.loads(sys.argv[1])]\n"
    "try:\n"
    "    main()\n"
    "except SystemExit:\n"
    "    pass\n"
    "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
)


def imported(*args: str, cwd: Path) -> set[str]:
    proc = subprocess.run([PY, "-c", PROBE, json.dumps(list(args))], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"]])
def test_help_imports_none_of_the_machinery(tmp_path: Path, args: list[str]) -> None:
    assert imported(*args, cwd=tmp_path).isdisjoint(HEAVY)


def test_commands_that_export_nothing_do_not_import_opentelemetry(tmp_path: Path, isolated: Path) -> None:
    loop = write_loop(tmp_path, """
        name: lazy
        agent: {command: "true"}
        """)
    for args in (["validate", str(loop)], ["schema"], ["sessions"], ["init", "--help"]):
        assert "opentelemetry" not in imported(*args, cwd=tmp_path), args

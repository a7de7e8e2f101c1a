"""Shared test helpers: run the real CLI, write loop files, children that report what they saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# A child that writes its whole env as JSON to $ENV_DUMP_DIR/<step>-<iteration>-<attempt>.json.
DUMP_ENV = [PY, "-c", (
    "import json, os, pathlib, sys; e = dict(os.environ); e['__cwd__'] = os.getcwd(); "
    "e['__stdin__'] = sys.stdin.read() if sys.stdin else ''; "
    "d = pathlib.Path(e['ENV_DUMP_DIR']); d.mkdir(parents=True, exist_ok=True); "
    "(d / f\"{e['RALPH_STEP']}-{e.get('RALPH_ITEM') or '-'}-{e['RALPH_ITERATION']}-{e['RALPH_ATTEMPT']}.json\")"
    ".write_text(json.dumps(e))"
)]


def ralph(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, input: str | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process, as a user would run it."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([PY, "-m", "ralph", *args], cwd=cwd, env=full_env, input=input, text=True,
                          capture_output=True, timeout=timeout, check=False)


def python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a child process: ralph's pieces in a fresh interpreter of their own."""
    return subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=timeout, check=False)


def imported_modules(*args: str) -> list[str]:
    """Every module ``ralph ARGS`` imports (``python -X importtime``), dependencies included."""
    proc = subprocess.run([PY, "-X", "importtime", "-m", "ralph", *args], capture_output=True, text=True,
                          check=False, timeout=60)
    names = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
    assert "ralph" in names or "ralph.cli" in names, proc.stderr[-2000:]
    return names


def write_loop(folder: Path, text: str, name: str = "loop.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def yaml_list(argv: list[str]) -> str:
    """A command list for a loop file (JSON is valid YAML flow syntax)."""
    return json.dumps(argv)


def read_dumps(folder: Path) -> dict[str, dict[str, str]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}

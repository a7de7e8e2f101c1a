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


# A history as version 2 wrote it (before git provenance, loop judgement and the shared queue), with one run.
V2_TABLES = """
    CREATE TABLE runs (id TEXT PRIMARY KEY, loop TEXT NOT NULL, loop_file TEXT, status TEXT NOT NULL,
        exit_code INTEGER, started REAL NOT NULL, ended REAL, host TEXT, pid INTEGER, pid_start TEXT,
        trace_id TEXT, span_id TEXT, batch TEXT, shard TEXT, resumed_from TEXT);
    CREATE TABLE sessions (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, loop TEXT NOT NULL, title TEXT NOT NULL,
        iteration INTEGER NOT NULL, item TEXT, status TEXT NOT NULL, started REAL NOT NULL, ended REAL,
        previous_id TEXT, trace_id TEXT, span_id TEXT, agent_session_id TEXT, tokens_in INTEGER,
        tokens_out INTEGER, cost_usd REAL, reason TEXT);
    CREATE TABLE steps (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, run_id TEXT NOT NULL,
        name TEXT NOT NULL, kind TEXT NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,
        exit_code INTEGER, pid INTEGER, started REAL NOT NULL, ended REAL, log_path TEXT, span_id TEXT,
        reason TEXT, pid_start TEXT);
    INSERT INTO runs (id, loop, status, started) VALUES ('run_old', 'demo', 'ok', 1.5);
"""


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

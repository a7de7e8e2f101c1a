"""Env for the node agent CLIs under test (Gemini CLI, Qwen Code): an isolated HOME, the scripted
API (tests/support/scripted_llm.py) as their endpoint, and the CLI on PATH."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tests.support.agent_probe import command
from tests.support.scripted_llm import Turn, shell


def _on_path(tmp_path: Path, name: str, binary: Path) -> str:
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    if not (folder / name).exists():
        (folder / name).symlink_to(binary)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def _home(tmp_path: Path, name: str, settings: dict[str, Any]) -> dict[str, str]:
    """An isolated ``tmp_path/NAME-home`` (HOME, XDG config, TMPDIR) with ``.NAME/settings.json``."""
    home = tmp_path / f"{name}-home"
    (home / f".{name}").mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    (home / f".{name}" / "settings.json").write_text(json.dumps(settings))
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "TMPDIR": str(home / "tmp")}


def gemini_env(tmp_path: Path, gemini_bin: Path, base_url: str) -> dict[str, str]:
    """Settings that pick API-key auth (else Gemini CLI 0.61.0 exits 41 "Invalid auth method") and
    ``GOOGLE_GEMINI_BASE_URL``: it then calls ``/v1beta/models/M:streamGenerateContent``."""
    return {**_home(tmp_path, "gemini", {"security": {"auth": {"selectedType": "gemini-api-key"}}}),
            "GOOGLE_GEMINI_BASE_URL": base_url, "GEMINI_API_KEY": "test-key",
            "PATH": _on_path(tmp_path, "gemini", gemini_bin)}


def qwen_env(tmp_path: Path, qwen_bin: Path, base_url: str) -> dict[str, str]:
    """The scripted API as the OpenAI endpoint (with ``--auth-type openai``). Qwen's managed memory is
    off: after a run it asks the model (with tools) to extract memories, a turn the script would have
    to guess the timing of."""
    return {**_home(tmp_path, "qwen", {"memory": {"enableManagedAutoMemory": False}}),
            "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key", "PATH": _on_path(tmp_path, "qwen", qwen_bin)}


def node() -> str:
    """The node executable (the agent process the probe looks for above its shell)."""
    found = shutil.which("node")
    assert found, "node is not on PATH"
    return os.path.realpath(found)


def node_probe(then: str = "") -> Turn:
    """A shell tool call running agent_probe.py about the node process above it (the agent), then ``then``."""
    return shell(command(node(), then))

"""``ralph init --preset NAME``: a starter loop for every preset, each one valid as written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import ralph
from ralph.config import PRESETS
from ralph.starters import PRESET_NAMES


def test_every_preset_has_a_starter() -> None:
    assert set(PRESET_NAMES) == set(PRESETS)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_init_with_a_preset_writes_a_loop_that_validates(tmp_path: Path, preset: str) -> None:
    result = ralph("init", str(tmp_path / preset), "--name", f"my-{preset}", "--preset", preset)
    assert result.returncode == 0, result.stderr
    loop = tmp_path / preset / "ralph.yaml"
    check = ralph("validate", str(loop))
    assert check.returncode == 0 and check.stderr == "", check.stderr
    data = yaml.safe_load(loop.read_text())
    assert data["name"] == f"my-{preset}" and data["agent"]["preset"] == preset
    assert data["title"] == f"my-{preset} #{{iteration}}"
    assert (tmp_path / preset / "PROMPT.md").exists()


def test_an_unknown_preset_is_a_usage_error(tmp_path: Path) -> None:
    result = ralph("init", str(tmp_path / "x"), "--preset", "gpt")
    assert result.returncode == 2
    assert "--preset 'gpt': choose one of command, opencode" in result.stderr
    assert not (tmp_path / "x").exists()

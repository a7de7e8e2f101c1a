"""Agent presets, one module each; loaded on demand so a run imports only the one it uses."""

from __future__ import annotations

import importlib

from ralph.agents.base import Preset


def get_preset(name: str) -> Preset:
    module = importlib.import_module(f"ralph.agents.{name}")
    preset: Preset = module.PRESET
    return preset

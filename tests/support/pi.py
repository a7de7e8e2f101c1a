"""Install and isolate the real pi coding agent (npm ``@mariozechner/pi-coding-agent``) in tests.

- :func:`ensure_pi` installs ``@mariozechner/pi-coding-agent@PI_VERSION`` into the test cache (see
  tests/support/npm.py) and returns ``node_modules/.bin/pi`` (a node script: node must be on PATH).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.npm import ensure_npm_binary

PI_VERSION = "0.73.1"
PACKAGE = "@mariozechner/pi-coding-agent"


def ensure_pi() -> Path:
    return ensure_npm_binary(
        PACKAGE, PI_VERSION, lambda prefix: [prefix / "node_modules" / ".bin" / "pi"], name="pi")


def pi_env(tmp_path: Path, base_url: str, provider: str = "scripted", model: str = "scripted-model",
           cost: tuple[float, float] = (3.0, 15.0)) -> dict[str, str]:
    """Env additions for a ``pi`` isolated in ``tmp_path/pi-home`` whose ``~/.pi/agent/models.json``
    declares ``provider`` as an OpenAI-compatible chat-completions API at ``base_url`` with
    ``model``, priced at ``cost`` USD per million (input, output) tokens. ``PI_OFFLINE``: no
    start-up network calls (update checks)."""
    home = Path(tmp_path) / "pi-home"
    agent_dir = home / ".pi" / "agent"
    agent_dir.mkdir(parents=True, exist_ok=True)
    models = {"providers": {provider: {
        "baseUrl": base_url, "api": "openai-completions", "apiKey": "test-key",
        "models": [{"id": model, "name": f"Scripted {model}", "reasoning": False, "input": ["text"],
                    "contextWindow": 128000, "maxTokens": 4096,
                    "cost": {"input": cost[0], "output": cost[1], "cacheRead": 0, "cacheWrite": 0}}]}}}
    (agent_dir / "models.json").write_text(json.dumps(models, indent=2))
    return {**_xdg(home), "HOME": str(home), "PI_OFFLINE": "1"}


def _xdg(home: Path) -> dict[str, str]:
    """XDG folders under ``home`` too: nothing of the developer's own may be read or written."""
    return {name: str(home / folder) for name, folder in (
        ("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache"), ("XDG_DATA_HOME", ".local/share"),
        ("XDG_STATE_HOME", ".local/state"))}

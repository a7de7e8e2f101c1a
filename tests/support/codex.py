"""Isolate the real ``codex`` CLI (npm ``@openai/codex``, installed by tests/support/npm.py) in tests:
its home in tmp_path, its model provider the scripted Responses API (tests/support/scripted_llm.py,
``wire="responses"``)."""

from __future__ import annotations

from pathlib import Path


def codex_env(tmp_path: Path, base_url: str, model: str = "scripted-model") -> dict[str, str]:
    """Env additions for a ``codex`` isolated in ``tmp_path/codex-home`` whose default model
    provider is a Responses API at ``base_url`` (``$CODEX_HOME/config.toml``)."""
    home = Path(tmp_path) / "codex-home"
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "scripted"\n'
        "[model_providers.scripted]\n"
        'name = "Scripted test API"\n'
        f'base_url = "{base_url}"\n'
        'wire_api = "responses"\n'
        'env_key = "SCRIPTED_API_KEY"\n'
        "request_max_retries = 0\nstream_max_retries = 0\n"  # an error reply ends the turn at once
        "[analytics]\nenabled = false\n"
        "[feedback]\nenabled = false\n")
    return {"HOME": str(home), "CODEX_HOME": str(codex_home), "SCRIPTED_API_KEY": "test-key"}

"""Install and isolate the real ``kilo`` CLI (npm ``@kilocode/cli``, an opencode fork) in tests.

- :func:`ensure_kilo` installs ``@kilocode/cli@KILO_VERSION`` into the test cache (see
  tests/support/npm.py) and returns its platform package's self-contained ``bin/kilo``.
- :func:`kilo_env` makes an isolated kilo home (XDG dirs + HOME) whose config points a provider
  at a scripted OpenAI-compatible server (tests/support/scripted_llm.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.npm import cpu_has_avx2, ensure_npm_binary, node_platform

# 7.8.1's platform packages are missing from the registry; 7.7.7 is complete.
KILO_VERSION = "7.7.7"
PACKAGE = "@kilocode/cli"


def _candidate_packages() -> list[str]:
    """Platform packages of @kilocode/cli, best first (opencode's naming, under @kilocode/cli-)."""
    system, arch = node_platform()
    base = f"cli-{system}-{arch}"
    if arch != "x64":
        return [base, f"{base}-musl"]
    names = [base, f"{base}-baseline"] if cpu_has_avx2() else [f"{base}-baseline", base]
    return names + [f"{n}-musl" for n in names]


def ensure_kilo() -> Path:
    return ensure_npm_binary(
        PACKAGE, KILO_VERSION,
        lambda prefix: [prefix / "node_modules" / "@kilocode" / name / "bin" / "kilo" for name in _candidate_packages()],
        name="kilo")


def kilo_env(tmp_path: Path, base_url: str, model: str = "scripted/scripted-model",
             cost: tuple[float, float] = (3.0, 15.0)) -> dict[str, str]:
    """Env additions for a ``kilo`` isolated in ``tmp_path/kilo-home`` (XDG dirs + HOME) whose
    config (``$XDG_CONFIG_HOME/kilo/kilo.json``, opencode's schema) declares provider PROVIDER (of
    ``model`` = ``PROVIDER/MODEL``) at ``base_url``, allows bash and edits, and prices the model at
    ``cost`` USD per million (input, output) tokens so that step_finish events carry a cost."""
    provider_id, _, model_id = model.partition("/")
    home = Path(tmp_path) / "kilo-home"
    dirs = {name: home / name.lower() for name in
            ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "HOME")}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "provider": {provider_id: {
            "npm": "@ai-sdk/openai-compatible", "name": "Scripted test LLM",
            "options": {"baseURL": base_url, "apiKey": "test-key"},
            "models": {model_id: {"name": f"Scripted {model_id}", "cost": {"input": cost[0], "output": cost[1]}}}}},
        "model": model, "small_model": model,
        "permission": {"bash": "allow", "edit": "allow"},
        "autoupdate": False, "share": "disabled",
    }
    (dirs["XDG_CONFIG_HOME"] / "kilo").mkdir(exist_ok=True)
    (dirs["XDG_CONFIG_HOME"] / "kilo" / "kilo.json").write_text(json.dumps(config, indent=2))
    return {**{k: str(v) for k, v in dirs.items()},
            "KILO_DISABLE_MODELS_FETCH": "1", "KILO_DISABLE_AUTOUPDATE": "1", "KILO_DISABLE_SHARE": "1"}

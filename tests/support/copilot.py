"""Install and isolate the real GitHub Copilot CLI (npm ``@github/copilot``) in tests.

- :func:`ensure_copilot` installs ``@github/copilot@COPILOT_VERSION`` into the test cache (see
  tests/support/npm.py) and returns its platform package's native ``copilot`` (no node needed).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.npm import ensure_npm_binary, node_platform

COPILOT_VERSION = "1.0.102"
PACKAGE = "@github/copilot"


def ensure_copilot() -> Path:
    system, arch = node_platform()
    names = [f"copilot-{system}-{arch}", f"copilot-{system}musl-{arch}"]
    return ensure_npm_binary(
        PACKAGE, COPILOT_VERSION,
        lambda prefix: [prefix / "node_modules" / "@github" / name / "copilot" for name in names],
        name="copilot")


def copilot_env(tmp_path: Path, base_url: str, model: str = "scripted-model") -> dict[str, str]:
    """Env additions for a ``copilot`` isolated in ``tmp_path/copilot-home`` that talks to an
    OpenAI-compatible chat-completions API at ``base_url`` and nothing else (``COPILOT_OFFLINE``:
    no GitHub sign-in, telemetry or update checks). The API key must not be a short string:
    Copilot masks it wherever it appears in its output."""
    home = Path(tmp_path) / "copilot-home"
    home.mkdir(parents=True, exist_ok=True)
    return {**_xdg(home), "HOME": str(home), "COPILOT_HOME": str(home / ".copilot"), "COPILOT_OFFLINE": "true",
            "COPILOT_PROVIDER_BASE_URL": base_url, "COPILOT_PROVIDER_API_KEY": "scripted-test-key-0123456789",
            "COPILOT_MODEL": model, "COPILOT_AUTO_UPDATE": "false"}


def _xdg(home: Path) -> dict[str, str]:
    """XDG folders under ``home`` too: nothing of the developer's own may be read or written."""
    return {name: str(home / folder) for name, folder in (
        ("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache"), ("XDG_DATA_HOME", ".local/share"),
        ("XDG_STATE_HOME", ".local/state"))}

"""Isolate the real ``claude`` CLI (npm ``@anthropic-ai/claude-code``, installed by tests/support/npm.py)
in tests: its home in tmp_path, its model API the scripted one (tests/support/scripted_llm.py,
``wire="anthropic"``)."""

from __future__ import annotations

from pathlib import Path


def claude_env(tmp_path: Path, base_url: str) -> dict[str, str]:
    """Env additions for a ``claude`` isolated in ``tmp_path/claude-home`` that talks only to
    ``base_url``: no update check, telemetry, error reports or other side traffic."""
    home = Path(tmp_path) / "claude-home"
    (home / ".config").mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(exist_ok=True)
    return {
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
        "TMPDIR": str(home / "tmp"),  # its sockets (cc-socks/) and scratch files, else left in /tmp
        "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": "sk-ant-test-key",
        "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_MAX_RETRIES": "0",
    }

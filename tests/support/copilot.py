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

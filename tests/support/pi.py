"""Install and isolate the real pi coding agent (npm ``@mariozechner/pi-coding-agent``) in tests.

- :func:`ensure_pi` installs ``@mariozechner/pi-coding-agent@PI_VERSION`` into the test cache (see
  tests/support/npm.py) and returns ``node_modules/.bin/pi`` (a node script: node must be on PATH).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.npm import ensure_npm_binary

PI_VERSION = "0.73.1"
PACKAGE = "@mariozechner/pi-coding-agent"


def ensure_pi() -> Path:
    return ensure_npm_binary(
        PACKAGE, PI_VERSION, lambda prefix: [prefix / "node_modules" / ".bin" / "pi"], name="pi")

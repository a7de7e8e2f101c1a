#!/usr/bin/env bash
# Install Arize Phoenix (a real OpenTelemetry tracing backend used by the
# end-to-end telemetry tests) into its own virtualenv, away from the project's
# environment.  Idempotent: does nothing when the pinned version is already there.
#
#   scripts/install-phoenix.sh            # -> ${RALPH_TEST_CACHE:-~/.cache/ralph-tests}/phoenix-venv
#
# Env: RALPH_TEST_CACHE (cache root), PHOENIX_PYTHON (interpreter for the venv,
# default python3; Phoenix needs Python 3.11-3.14), RALPH_PHOENIX_VERSION (override
# the pin; the tests were written against the default).
#
# Measured on the 2-core dev machine: a fresh install takes ~40 s (PyPI, no pip cache)
# and the venv is ~850 MB (147 distributions). A second run is a no-op (<0.1 s).
set -euo pipefail

PHOENIX_VERSION="${RALPH_PHOENIX_VERSION:-20.26.1}"
CACHE="${RALPH_TEST_CACHE:-$HOME/.cache/ralph-tests}"
VENV="$CACHE/phoenix-venv"
PY="${PHOENIX_PYTHON:-python3}"

installed_version() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
from importlib.metadata import version
print(version("arize-phoenix"))
PY
}

if [ -x "$VENV/bin/phoenix" ] && [ "$(installed_version || true)" = "$PHOENIX_VERSION" ]; then
    echo "install-phoenix: arize-phoenix $PHOENIX_VERSION already in $VENV"
    exit 0
fi

mkdir -p "$CACHE"
if ! "$VENV/bin/python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    # Missing, broken (its interpreter moved away) or too old (Phoenix needs 3.11-3.14).
    echo "install-phoenix: creating $VENV"
    "$PY" -m venv --clear "$VENV"
fi

echo "install-phoenix: installing arize-phoenix==$PHOENIX_VERSION into $VENV"
start=$(date +%s)
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet \
    "arize-phoenix==$PHOENIX_VERSION"

# Sanity check: the console script exists and the package imports.
test -x "$VENV/bin/phoenix"
got="$(installed_version)"
if [ "$got" != "$PHOENIX_VERSION" ]; then
    echo "install-phoenix: expected arize-phoenix $PHOENIX_VERSION, found '$got'" >&2
    exit 1
fi
echo "install-phoenix: arize-phoenix $got installed in $(( $(date +%s) - start ))s"

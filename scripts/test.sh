#!/usr/bin/env bash
# The README's test command: sets up a virtual environment (first run only) and runs the test suite.
#   bash scripts/test.sh            # default suite (fast, < 15 min on 2 CPU cores)
#   bash scripts/test.sh -m slow    # only the slow end-to-end tests
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ALTUP_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q -e ".[test]" --config-settings editable_mode=compat
export TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=""
exec "$VENV/bin/python" -m pytest "$@"

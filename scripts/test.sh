#!/usr/bin/env bash
# The README's test command: sets up a virtual environment (first run only) and runs the test suite.
#   bash scripts/test.sh            # default suite (fast, < 15 min on 2 CPU cores)
#   bash scripts/test.sh -m slow    # only the slow end-to-end tests
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh "[test]"
# Two pytest-xdist workers: the suite is compile-bound and single-threaded per test.
exec "$VENV/bin/python" -m pytest -n 2 "$@"

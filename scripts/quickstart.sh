#!/usr/bin/env bash
# The README's main command: sets up a virtual environment (first run only), then trains a tiny
# T5.1.1 baseline and a tiny AltUp K=2 model on the embedded offline corpus, evaluates both,
# decodes a few examples and prints a side-by-side table (under 10 minutes on 2 CPU cores).
#   bash scripts/quickstart.sh [--steps N] [--workdir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh ""
exec "$VENV/bin/python" -m altup_t5x.quickstart "$@"

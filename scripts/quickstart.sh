#!/usr/bin/env bash
# The README's main command: sets up a virtual environment (first run only), then trains a tiny
# T5.1.1 baseline and a tiny AltUp K=2 model on the embedded offline corpus, evaluates both,
# decodes a few examples and prints a side-by-side table (under 10 minutes on 2 CPU cores).
#   bash scripts/quickstart.sh [--steps N] [--workdir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ALTUP_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q -e . --config-settings editable_mode=compat
export TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=""
exec "$VENV/bin/python" -m altup_t5x.quickstart "$@"

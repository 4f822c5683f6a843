#!/usr/bin/env bash
# Recompiles the planner rows of every pretrain config as shipped (benchmarks/pods.csv), then
# regenerates PODS.md and configs/ (each pretrain header names the slice its config fits). Rerun
# it after a change to the model or to a config's scan/remat setting:
#   bash scripts/plan_shipped.sh                # every row (the unscanned small/base/large
#                                               # compiles take minutes each on 2 CPU cores)
#   bash scripts/plan_shipped.sh 'c4_xx?l_'     # only the config names matching this regex
#   bash scripts/plan_shipped.sh --all [REGEX]  # also every other compiled row of pods.csv (other
#                                               # device counts and scan/remat settings)
# PYTHON: a Python with T5X importable (default: ~/altup-t5x-env/bin/python, the environment
# scripts/install_t5x.sh creates). The rows to compile come from
# `python scripts/gen_configs.py --plan_commands` (sizes x variants x PLAN_DEVICES).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$HOME/altup-t5x-env/bin/python}"
ALL=()
if [[ "${1:-}" == --all ]]; then ALL=(--all); shift; fi
FILTER="${1:-.}"
[[ -x "$PY" ]] || { echo "plan_shipped.sh: no Python at $PY (set PYTHON=...)" >&2; exit 2; }
export TF_CPP_MIN_LOG_LEVEL=2 JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
mapfile -t COMMANDS < <("$PY" scripts/gen_configs.py --plan_commands "${ALL[@]}")
for cmd in "${COMMANDS[@]}"; do
  [[ "$cmd" =~ $FILTER ]] || continue
  eval "argv=(${cmd#python })"  # the commands quote their gin strings
  echo "== $cmd" >&2
  start=$SECONDS
  "$PY" "${argv[@]}" | grep -E '^(params|  XLA peak|lowering)' || true
  echo "   ($((SECONDS - start)) s)" >&2
done
"$PY" -m altup_t5x.plan --pods-md
"$PY" scripts/gen_configs.py

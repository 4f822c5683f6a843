#!/usr/bin/env bash
# What a step costs on an accelerator, in one command (about 8 minutes on one GPU): train-step and
# cached-decode time, FLOPs, memory, tokens/s and MFU of the baseline, AltUp K=2 / K=4,
# Recycled-AltUp K=2 and Sequence-AltUp stride 2 in bfloat16 at T5.1.1-small (16 x 512/114 per
# device) and -base (8 x 512/114), under the shipped settings and with T5X's one-hot lookup, scanned
# layers and the unfused predict/correct. Rows go to benchmarks/step_cost.csv (run name
# "device-<date>"); `python scripts/benchmark.py report` renders them.
#   bash scripts/device_check.sh            # on the accelerator JAX finds
#   bash scripts/device_check.sh --tiny     # a CPU smoke run of the same path (tiny size, seconds)
# Needs the package installed (scripts/test.sh or scripts/quickstart.sh set up .venv; on a GPU
# machine install jax with CUDA first, e.g. pip install "jax[cuda12]==0.10.2").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
CSV="${CSV:-benchmarks/step_cost.csv}"
RUN="device-$(date -u +%Y-%m-%d-%H%M)"
export TF_CPP_MIN_LOG_LEVEL=2
if [ "${1:-}" = "--tiny" ]; then
  shift
  exec "$PY" -m studies.step_cost --sizes tiny --variants baseline,altup_k2 \
    --options default,scanned --dtype bfloat16 --rounds 1 --steps 1 --csv "$CSV" \
    --run "tiny-$RUN" "$@"
fi
"$PY" -c 'import jax; d = jax.devices()[0]; print("device:", d.platform, getattr(d, "device_kind", ""), "x", jax.device_count())'
# small: every option; base: the shipped settings and the scan.
"$PY" -m studies.step_cost --sizes small --dtype bfloat16 --rounds 3 --steps 5 \
  --options default,unfused,one_hot,scanned --csv "$CSV" --run "$RUN" "$@"
"$PY" -m studies.step_cost --sizes base --dtype bfloat16 --rounds 3 --steps 5 \
  --options default,scanned --csv "$CSV" --run "$RUN" "$@"

"""Where a compiled step spends its time, per kind of XLA operation, from a JAX profiler trace.

XLA:CPU's runtime records one trace event per executed HLO instruction (a fusion, a dot, a copy, a
while loop), named after the instruction. `trace_ops` profiles a few calls of a jitted function
with `jax.profiler` and `op_categories` sums those events into the categories below, per call.
The sums are core-milliseconds: two cores running ops at once count twice, so a category's time
is its share of the work, not of the wall clock.

Used by `scripts/scaling_benchmark.py profile` to explain what a scanned layer stack costs on CPU
that an unrolled one does not (stacking residuals and gradients, zero-filling the stacks,
slicing per-layer parameters).
"""
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Callable, Dict, List, Sequence, Tuple

import jax

# (category, pattern on the instruction name), first match wins. Names are XLA's: a fusion is
# named after its root ops (`bitcast_dynamic-update-slice_fusion.31`), YNNPACK/XNNPACK/oneDNN
# fusions hold the matmuls on CPU.
CATEGORIES: Tuple[Tuple[str, str], ...] = (
    ('matmul', r'^(ynn_fusion|xnn_fusion|onednn|dot|convolution|custom-call)'),
    ('stack write (dynamic-update-slice)', r'dynamic-update-slice'),
    ('slice read (dynamic-slice)', r'dynamic-slice'),
    ('zero fill (broadcast)', r'^wrapped_broadcast'),
    ('copy', r'^(wrapped_)?copy(\.\d+)?$'),
    ('transpose / layout copy', r'transpose|copy'),
    ('while loop control', r'^while'),
)
OTHER = 'other ops'
ORDER = [c for c, _ in CATEGORIES] + [OTHER]

# An HLO instruction name: lower case, digits, '_' and '-', optionally '.N'. Everything else in
# the trace (Python frames '$...', 'ThunkExecutor::Execute', 'end: x', 'PjitFunction(f)') is not
# an executed instruction.
_OP_NAME = re.compile(r'^[a-z][a-z0-9_\-]*(\.\d+)?$')


def category(name: str) -> str:
  for cat, pattern in CATEGORIES:
    if re.search(pattern, name):
      return cat
  return OTHER


def op_categories(events: Sequence[dict], calls: int) -> Dict[str, Tuple[float, float]]:
  """{category: (core-ms per call, instructions executed per call)} of complete ('X') events."""
  ms, count = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get('name', '')
    if e.get('ph') != 'X' or not _OP_NAME.match(name):
      continue
    cat = category(name)
    ms[cat] += float(e.get('dur', 0.0)) / 1e3  # trace durations are microseconds
    count[cat] += 1
  return {c: (ms[c] / calls, count[c] / calls) for c in ORDER if count[c]}


def read_trace(directory: str) -> List[dict]:
  """The events of the perfetto trace `jax.profiler.trace(..., create_perfetto_trace=True)` wrote."""
  paths = glob.glob(os.path.join(directory, '**', 'perfetto_trace.json.gz'), recursive=True)
  if len(paths) != 1:
    raise RuntimeError(f'expected one perfetto_trace.json.gz under {directory}, found {paths}')
  with gzip.open(paths[0]) as f:
    trace = json.load(f)
  return trace['traceEvents'] if isinstance(trace, dict) else trace


def trace_ops(call: Callable[[], object], calls: int) -> Tuple[Dict[str, Tuple[float, float]], float]:
  """Profiles `calls` calls of `call` (already compiled and warmed up): (op_categories, wall ms
  per call while traced)."""
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      t0 = time.perf_counter()
      for _ in range(calls):
        jax.block_until_ready(call())
      wall = (time.perf_counter() - t0) / calls
    events = read_trace(d)
  return op_categories(events, calls), 1e3 * wall

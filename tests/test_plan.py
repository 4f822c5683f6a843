"""The pod planner (`python -m altup_t5x.plan`) against an independent count of bytes per device.

The planner runs in a subprocess (it must set XLA_FLAGS before JAX starts its CPU backend). The
reference counts here are written from the rules, not from the planner's code: parameter shapes
from `jax.eval_shape` of the network, each dimension named 'vocab', 'mlp', 'heads' or 'joined_kv'
divided by the model-parallel size, and the Adafactor statistics from the factoring rules of optax
(runner) or T5X (t5x backend) as their sources describe them.
"""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from altup_t5x import csv_tables
from altup_t5x import plan
from altup_t5x.planning import gin_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_T5X = importlib.util.find_spec('t5x') is not None

RUNNER_FILES = ['gin/t5_1_1/tiny.gin', 'gin/altup/k2.gin', 'gin/runner/model.gin',
                'gin/runner/pretrain.gin']
# Large enough for Adafactor to factor (two dims >= 128), small enough to be quick.
SHAPE_BINDINGS = {'EMBED_DIM': '128', 'MLP_DIM': '256', 'HEAD_DIM': '32', 'NUM_HEADS': '4',
                  'NUM_ENCODER_LAYERS': '1', 'NUM_DECODER_LAYERS': '1', 'BATCH_SIZE': '4',
                  'TASK_FEATURE_LENGTHS': "{'inputs': 16, 'targets': 8}"}
MODEL_AXES = ('vocab', 'mlp', 'heads', 'joined_kv')


def _run_plan(args, python=sys.executable):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='', JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return subprocess.run([python, '-m', 'altup_t5x.plan', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)


def _plan_json(files, bindings, devices, partitions, *extra, python=sys.executable):
  args = list(files) + [f'--gin.{k}={v}' for k, v in bindings.items()] + [
      '--devices', str(devices), '--num_partitions', str(partitions), '--json', *extra]
  proc = _run_plan(args, python)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _abstract_model(files, bindings):
  """(params, logical axis names per param, model) from the gin files, shapes only."""
  import gin  # pylint: disable=g-import-not-at-top
  from flax.linen import partitioning as nn_partitioning  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin.add_config_file_search_path(REPO)
  try:
    gin.parse_config_files_and_bindings([os.path.join(REPO, f) for f in files],
                                        [f'{k} = {v}' for k, v in bindings.items()],
                                        finalize_config=False)
    gin.parse_config('from __gin__ import dynamic_registration\n'
                     'from altup_t5x.planning import gin_config\n'
                     'gin_config.capture.model = %MODEL')
    model = gin.get_configurable(gin_config.capture)()['model']
  finally:
    gin.clear_config()
  shapes = {'encoder_input_tokens': (1, 16), 'decoder_input_tokens': (1, 8)}
  variables = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes))
  names = nn_partitioning.get_axis_names(variables['params_axes'])
  flat_p = {jax.tree_util.keystr(k): v for k, v in
            jax.tree_util.tree_flatten_with_path(variables['params'])[0]}
  flat_n = {jax.tree_util.keystr(k): tuple(v) for k, v in jax.tree_util.tree_flatten_with_path(
      names, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]}
  assert set(flat_p) == set(flat_n)
  return [(flat_p[k].shape, flat_n[k]) for k in sorted(flat_p)], model


def _shard(shape, names, m):
  return tuple(d // m if n in MODEL_AXES else d for d, n in zip(shape, names))


def _heuristic_factored(shape):
  """Both optax and T5X: factor the two largest dims if the second largest is >= 128."""
  if len(shape) < 2 or sorted(shape)[-2] < 128:
    return None
  order = np.argsort(shape)
  return (int(order[-2]),), (int(order[-1]),)


def optax_reference(params, m):
  """Bytes per device: float32 params, and optax Adafactor's v_row/v_col (optax: the two largest
  dims if the second is >= 128) or v, with (1,) placeholders for the unused ones."""
  pb = ob = 0
  for shape, names in params:
    s = _shard(shape, names, m)
    pb += math.prod(s) * 4
    f = _heuristic_factored(shape)
    if f is None:
      ob += math.prod(s) * 4 + 2 * 4
    else:
      (d1,), (d0,) = f
      for stat in (np.delete(shape, d0), np.delete(shape, d1)):
        # The runner's rule (partitioning.Partitioner.opt_state_shardings): a statistic takes the
        # parameter's sharding without the first axis whose removal gives the statistic's shape
        # (for a square kernel that is axis 0, whichever axis optax averaged away).
        i = next(i for i in range(len(shape)) if tuple(np.delete(shape, i)) == tuple(stat))
        ob += math.prod(np.delete(s, i)) * 4
      ob += 4
  return pb, ob


def t5x_reference(params, m, factor_rules):
  """T5X's Adafactor (t5x/adafactor.py): the factoring is read from the logical factor rules
  (ROW and COLUMN both present, else none), parameters of rank <= 2 without a BATCH axis use the
  largest-two-dims heuristic; v_row/v_col are replicated, v is sharded like its parameter; every
  parameter has four statistics (v_row, v_col, v, m) with (1,) placeholders for unused ones."""
  pb = ob = 0
  for shape, names in params:
    s = _shard(shape, names, m)
    pb += math.prod(s) * 4
    rule = [factor_rules[n] for n in names]
    if not ('ROW' in rule and 'COLUMN' in rule):
      rule = ['NONE' if r in ('ROW', 'COLUMN') else r for r in rule]
    if len(shape) <= 2 and 'BATCH' not in rule:
      f = _heuristic_factored(shape)
    else:
      rows = tuple(i for i, r in enumerate(rule) if r == 'ROW')
      cols = tuple(i for i, r in enumerate(rule) if r == 'COLUMN')
      f = (rows, cols) if rows or cols else None
    if f is None:
      ob += math.prod(s) * 4 + 3 * 4
    else:
      rows, cols = f
      ob += (math.prod(np.delete(shape, cols)) + math.prod(np.delete(shape, rows))) * 4 + 2 * 4
  return pb, ob


# ------------------------------- default suite ------------------------------------------------

@pytest.fixture(scope='module')
def runner_params():
  return _abstract_model(RUNNER_FILES, SHAPE_BINDINGS)


@pytest.fixture(scope='module')
def runner_analytic():
  """Planner output (analytic mode) for 2 devices at model-parallel sizes 1 and 2."""
  return {m: _plan_json(RUNNER_FILES, SHAPE_BINDINGS, 2, m, '--analytic') for m in (1, 2)}


def test_runner_bytes_equal_independent_count(runner_params, runner_analytic):
  params, model = runner_params
  abstract_opt = jax.eval_shape(model.optimizer.init, jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s, np.float32), [p for p, _ in params],
      is_leaf=lambda x: isinstance(x, tuple)))
  # optax's step counters (0-d int32) and the train state's 'step'.
  scalars = 4 * (1 + sum(1 for x in jax.tree_util.tree_leaves(abstract_opt) if x.ndim == 0))
  for m, got in runner_analytic.items():
    pb, ob = optax_reference(params, m)
    assert got['params'] == sum(math.prod(s) for s, _ in params)
    assert got['param_bytes_per_device'] == pb, m
    assert got['optimizer_bytes_per_device'] == ob + scalars, m
    assert got['mesh'] == {'data': 2 // m, 'model': m}
    assert got['mode'] == 'analytic' and got['backend'] == 'runner'


def test_sharded_bytes_halve_with_twice_the_partitions(runner_params, runner_analytic):
  params, _ = runner_params
  sharded = sum(math.prod(s) * 4 for s, n in params if set(n) & set(MODEL_AXES))
  assert sharded > 0
  one, two = runner_analytic[1], runner_analytic[2]
  # Only model-axis tensors shrink, and exactly by half.
  assert one['param_bytes_per_device'] - two['param_bytes_per_device'] == sharded // 2


def test_json_keys(runner_analytic):
  for r in runner_analytic.values():
    assert set(plan.JSON_KEYS) <= set(r)
    assert set(r['fits']) == set(plan.CHIPS)
    need = r['param_bytes_per_device'] + r['optimizer_bytes_per_device']
    for chip, f in r['fits'].items():
      assert f['margin_bytes'] == plan.CHIPS[chip] - need
      assert f['fits'] == (need <= plan.CHIPS[chip])


class _Cfg:
  num_heads, mlp_dim, vocab_size, moe_num_experts = 4, 256, 1024, 0


@pytest.mark.parametrize('devices,m,batch,match', [
    (2, 4, 8, 'more than the 2 devices'),
    (6, 4, 6, 'not divisible by num_partitions'),
    (8, 1, 4, 'BATCH_SIZE=4 is not divisible by the data axis'),
    (6, 3, 8, 'num_heads=4 is not divisible by the model axis'),
])
def test_bad_topology_is_one_clear_error(devices, m, batch, match):
  with pytest.raises(plan.PlanError, match=match):
    plan.check_topology(devices, m, batch, _Cfg())


def test_bad_topology_cli_errors_before_compiling():
  args = RUNNER_FILES + [f'--gin.{k}={v}' for k, v in SHAPE_BINDINGS.items()] + [
      '--devices', '3', '--num_partitions', '1']
  proc = _run_plan(args)
  assert proc.returncode == 2
  assert 'ERROR: BATCH_SIZE=4 is not divisible by the data axis of the mesh (3' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_pods_md_is_generated_from_the_csv():
  rows = csv_tables.read(os.path.join(REPO, 'benchmarks', 'pods.csv'))
  with open(os.path.join(REPO, 'PODS.md')) as f:
    assert f.read() == plan.render_pods_md(rows), (
        'PODS.md is stale: run `python -m altup_t5x.plan --pods-md`')
  assert {r['mode'] for r in rows} <= {'compiled', 'analytic'}


# ------------------------------- compiled / T5X ------------------------------------------------

@pytest.mark.slow
def test_runner_compiled_reports_xla_memory_and_flops(runner_params):
  params, _ = runner_params
  got = _plan_json(RUNNER_FILES, SHAPE_BINDINGS, 2, 2)
  assert got['mode'] == 'compiled'
  assert got['param_bytes_per_device'] == optax_reference(params, 2)[0]
  assert got['temp_bytes_per_device'] > 0 and got['flops_per_step'] > 0
  assert got['compile_seconds'] > 0
  # The donated train state is an argument: the peak covers at least the state.
  assert got['peak_bytes_per_device'] >= (got['param_bytes_per_device'] +
                                          got['optimizer_bytes_per_device'])


T5X_FILES = ['gin/t5_1_1/tiny.gin', 'gin/altup/k2.gin', 'gin/models/t5x_encoder_decoder.gin',
             'gin/vocab/embedded.gin', 't5x/configs/runs/pretrain.gin']


@pytest.mark.t5x
@pytest.mark.slow
@pytest.mark.skipif(not HAS_T5X, reason='T5X is not importable')
@pytest.mark.parametrize('analytic', [True, False])
def test_t5x_backend_bytes_equal_independent_count(analytic):
  import gin  # pylint: disable=g-import-not-at-top
  import t5x  # pylint: disable=g-import-not-at-top
  from t5x import adafactor  # pylint: disable=g-import-not-at-top
  from altup_t5x import partitioning as altup_partitioning  # pylint: disable=g-import-not-at-top
  gin.add_config_file_search_path(os.path.dirname(os.path.dirname(t5x.__file__)))
  bindings = dict(SHAPE_BINDINGS, DROPOUT_RATE='0.0', MODEL_DIR="'/tmp/unused'")
  params, _ = _abstract_model(T5X_FILES[:4], bindings)
  rules = {k: v.name for k, v in adafactor.standard_logical_factor_rules().items()}
  rules.update(altup_partitioning.ALTUP_FACTOR_RULES)
  rules.update(altup_partitioning.MOE_FACTOR_RULES)
  extra = ('--analytic',) if analytic else ()
  got = {m: _plan_json(T5X_FILES, bindings, 4, m, *extra, python=sys.executable) for m in (1, 2)}
  for m, r in got.items():
    pb, ob = t5x_reference(params, m, rules)
    assert r['backend'] == 't5x' and r['mesh'] == {'data': 4 // m, 'model': m}
    assert r['param_bytes_per_device'] == pb, m
    assert r['optimizer_bytes_per_device'] == ob + 4, m  # + the step
    if not analytic:
      assert r['temp_bytes_per_device'] > 0 and r['flops_per_step'] > 0

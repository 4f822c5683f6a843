r"""Pod planner: per-device memory, FLOPs and compile time of the real train step, on a CPU.

    python -m altup_t5x.plan configs/pretrain/c4_xl_altup_k2.gin --devices 32 --num_partitions 8
    python -m altup_t5x.plan gin/t5_1_1/small.gin gin/altup/k2.gin gin/runner/model.gin \
        gin/runner/pretrain.gin --devices 8 --num_partitions 1 --gin.BATCH_SIZE=64 --json
    python -m altup_t5x.plan ... --analytic        # shapes and shardings only, nothing compiled
    python -m altup_t5x.plan --pods-md             # PODS.md from benchmarks/pods.csv

Takes the gin files and `--gin.NAME=value` overrides of `t5x.train` (a file from configs/, or size +
variant + model gin + run gin) or of the standalone runner (gin/runner/model.gin + a run gin).
N devices are simulated on the host CPU (`--xla_force_host_platform_device_count`), the train step
is built exactly as the trainer builds it and compiled ahead of time from abstract shapes
(`jax.ShapeDtypeStruct`): no parameter is ever allocated.

* T5X backend (the MODEL is a `t5x.models` model): T5X's `PjitPartitioner` (with the gin's axis
  rules) on a ('data', 'model') `Mesh` built here -- on CPU T5X's default mesh puts every device
  on 'model' whatever `num_partitions` says -- T5X's `TrainStateInitializer` (train state and
  Adafactor state shapes and axes) and `t5x.trainer.train_with_lr` as the step.
* Runner backend (the MODEL is `altup_t5x.models.EncoderDecoderModel`): `partitioning.Partitioner` and
  `trainer.Trainer`'s train step (optax Adafactor).

Per device it reports parameter and optimizer-state bytes (from each array's shard shape under
its sharding), XLA's memory analysis of the compiled step (arguments, outputs, temporaries; peak =
arguments + outputs - aliased + temporaries), XLA's cost analysis (FLOPs and bytes accessed of the
per-device program; flops_per_step = per device x devices) and the lowering + compile time, and
whether that peak fits each accelerator's memory (`CHIPS`). `--analytic` stops after the shapes
and shardings: parameter and optimizer bytes only, for configurations too large to compile here;
the fit is then a lower bound (no activations).
"""
import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from typing import Any, Dict, Mapping, Sequence, Tuple

from altup_t5x import csv_tables
from altup_t5x import models

GiB = 1024 ** 3

# Memory per device (one JAX device) in bytes. Sources: Google Cloud TPU system architecture
# pages (v3: 32 GiB HBM per chip = 2 cores x 16 GiB, a JAX device is one core; v4: 32 GiB per chip;
# v5e: 16 GiB per chip; v5p: 95 GiB per chip) and NVIDIA's A100 (40 GB / 80 GB) and H100 SXM
# (80 GB) data sheets.
CHIPS: Dict[str, int] = {
    'tpu_v3': 16 * GiB,
    'tpu_v4': 32 * GiB,
    'tpu_v5e': 16 * GiB,
    'tpu_v5p': 95 * GiB,
    'a100_40gb': 40 * 10 ** 9,
    'a100_80gb': 80 * 10 ** 9,
    'h100_80gb': 80 * 10 ** 9,
}

CSV_FIELDS = ['config', 'size', 'variant', 'devices', 'mesh', 'scan_layers', 'remat_policy',
              'mode', 'backend', 'params', 'param_bytes_per_device',
              'optimizer_bytes_per_device', 'temp_bytes_per_device', 'peak_bytes_per_device',
              'flops_per_step', 'compile_seconds']

# A row of the table per (config, devices, mesh, scan, remat, mode): re-planning replaces it.
CSV_KEY = ('config', 'devices', 'mesh', 'scan_layers', 'remat_policy', 'mode')

JSON_KEYS = ('devices', 'mesh', 'params', 'param_bytes_per_device', 'optimizer_bytes_per_device',
             'temp_bytes_per_device', 'peak_bytes_per_device', 'flops_per_step',
             'compile_seconds', 'fits')


class PlanError(ValueError):
  """A bad plan request (topology, files), found before anything is compiled."""


# --------------------------------------------------------------------------------------------------
# Command line.

def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m altup_t5x.plan', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('gin_files', nargs='*', help='gin files (also --gin_file)')
  parser.add_argument('--gin_file', action='append', default=[])
  parser.add_argument('--gin_search_paths', action='append', default=[])
  parser.add_argument('--gin_bindings', action='append', default=[])
  parser.add_argument('--devices', type=int, default=8, help='simulated devices (default 8)')
  parser.add_argument('--num_partitions', type=int, default=None,
                      help="size of the 'model' mesh axis (default: the gin's)")
  parser.add_argument('--chip', default=None, help=f'one of {sorted(CHIPS)} (default: all)')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  parser.add_argument('--backend', choices=('auto', 't5x', 'runner'), default='auto')
  parser.add_argument('--analytic', action='store_true', help='no compile: shapes/shardings only')
  parser.add_argument('--csv', default=None, help='append the result as a row to this CSV')
  parser.add_argument('--label', default=None, help='config name in the CSV row')
  parser.add_argument('--pods-md', dest='pods_md', action='store_true',
                      help='write PODS.md from benchmarks/pods.csv and exit')
  parser.add_argument('--pods-sweep', dest='pods_sweep', action='store_true',
                      help='--analytic rows for every configs/pretrain/c4_* file on its slices '
                           '(SLICES) into --csv')
  parser.add_argument('--pods-csv', dest='pods_csv', default='benchmarks/pods.csv')
  parser.add_argument('--pods-out', dest='pods_out', default='PODS.md')
  args, rest = parser.parse_known_args(list(argv))
  from altup_t5x import cli  # pylint: disable=g-import-not-at-top  (imports jax; no backend yet)
  bindings = list(args.gin_bindings) + cli.gin_overrides(rest, parser, PlanError)
  args.gin_files = list(args.gin_files) + [f for x in args.gin_file for f in x.split(',') if f]
  args.gin_search_paths = [p for x in args.gin_search_paths for p in x.split(',') if p]
  args.gin_bindings = bindings
  if args.chip is not None and args.chip not in CHIPS:
    raise PlanError(f'--chip={args.chip!r} is not known; allowed: {sorted(CHIPS)}.')
  if args.pods_sweep and not args.csv:
    raise PlanError('--pods-sweep needs --csv (e.g. --csv benchmarks/pods.csv).')
  if not args.pods_md and not args.pods_sweep:
    if not args.gin_files:
      raise PlanError('no gin file given: pass a file from configs/ or size + variant + model + '
                      'run gin files.')
    if args.devices < 1:
      raise PlanError(f'--devices={args.devices} must be >= 1.')
    if args.num_partitions is not None and args.num_partitions < 1:
      raise PlanError(f'--num_partitions={args.num_partitions} must be >= 1.')
  return args


def simulate_devices(n: int) -> None:
  """Makes the CPU backend expose n devices (before the backend is first used)."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  flags.append(f'--xla_force_host_platform_device_count={n}')
  os.environ['XLA_FLAGS'] = ' '.join(flags)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax  # pylint: disable=g-import-not-at-top
  if jax.device_count() != n:
    raise PlanError(f'--devices={n}: JAX already runs on {jax.device_count()} devices (its backend '
                    'was initialised before the planner could set XLA_FLAGS); run the planner in '
                    'a fresh process.')


def check_topology(devices: int, num_partitions: int, batch_size: int, cfg) -> None:
  """One clear error for a mesh the model or batch cannot be split on."""
  m = num_partitions
  if m > devices:
    raise PlanError(f'num_partitions={m} is more than the {devices} devices.')
  if devices % m:
    raise PlanError(f'--devices={devices} is not divisible by num_partitions={m}.')
  data = devices // m
  if batch_size % data:
    raise PlanError(f'BATCH_SIZE={batch_size} is not divisible by the data axis of the mesh '
                    f'({data} = {devices} devices / {m} partitions).')
  for name in ('num_heads', 'mlp_dim', 'vocab_size'):
    value = getattr(cfg, name)
    if value % m:
      raise PlanError(f'AltUpConfig.{name}={value} is not divisible by the model axis '
                      f'(num_partitions={m}): {name} is split over it.')
  experts = getattr(cfg, 'moe_num_experts', 0)
  if experts and experts % data and data % experts:
    raise PlanError(f'AltUpConfig.moe_num_experts={experts} and the data axis ({data}) do not '
                    'divide each other (experts are split over the data axis).')


# --------------------------------------------------------------------------------------------------
# gin.

def _capture(model=None, batch_size=None, task_feature_lengths=None, partitioner=None,
             num_partitions=None):
  return dict(model=model, batch_size=batch_size, task_feature_lengths=task_feature_lengths,
              partitioner=partitioner, num_partitions=num_partitions)


def _t5x_importable() -> bool:
  return importlib.util.find_spec('t5x') is not None


def load_gin(args) -> Dict[str, Any]:
  """Parses the gin files like t5x.train / altup_t5x.train and returns the pieces the plan needs."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  search = list(args.gin_search_paths) or ['.']
  stack = contextlib.ExitStack()
  have_t5x = _t5x_importable()
  if have_t5x:
    import t5x  # pylint: disable=g-import-not-at-top
    from t5x import train as t5x_train  # pylint: disable=g-import-not-at-top
    search.append(os.path.dirname(os.path.dirname(os.path.abspath(t5x.__file__))))
    # T5X run gins bind `__main__.train`; `python -m t5x.train` is __main__ there.
    previous = sys.modules.get('__main__')
    sys.modules['__main__'] = t5x_train
    stack.callback(lambda: sys.modules.__setitem__('__main__', previous))
  for p in search:
    gin.add_config_file_search_path(p)
  files = []
  for f in args.gin_files:
    cands = [f] + [os.path.join(p, f) for p in search]
    found = next((c for c in cands if os.path.isfile(c)), None)
    if found is None:
      raise PlanError(f'gin file {f!r} not found (searched: {search}).')
    files.append(found)
  text = ' '.join(open(f).read() for f in files)
  if 'from t5x' in text and not have_t5x:
    raise PlanError('these gin files need T5X (they import t5x), which is not importable here; use '
                    'the runner gins (gin/runner/model.gin + gin/runner/pretrain.gin) instead.')
  uses_t5x_partitioner = 't5x/configs/runs/' in text or 'PjitPartitioner' in text
  capture = [
      'from __gin__ import dynamic_registration',
      'from altup_t5x import plan',
      'plan._capture.model = %MODEL',
      'plan._capture.batch_size = %BATCH_SIZE',
      'plan._capture.task_feature_lengths = %TASK_FEATURE_LENGTHS',
  ]
  if uses_t5x_partitioner:
    capture += ['from t5x import partitioning as plan_t5x_partitioning',
                'plan._capture.partitioner = @plan_t5x_partitioning.PjitPartitioner()']
  else:
    capture += ['plan._capture.num_partitions = %NUM_PARTITIONS']
  bindings = list(args.gin_bindings)
  if args.num_partitions is not None and uses_t5x_partitioner:
    bindings.append(f'partitioning.PjitPartitioner.num_partitions = {args.num_partitions}')
  with stack:
    try:
      gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
      gin.parse_config('\n'.join(capture))
      from altup_t5x import plan as importable  # pylint: disable=g-import-not-at-top
      got = gin.get_configurable(importable._capture)()  # pylint: disable=protected-access
    except (SyntaxError, ValueError, NameError, ImportError, AttributeError, TypeError,
            KeyError, IOError) as e:
      raise PlanError(f'gin configuration: {type(e).__name__}: {e}') from e
  if got['model'] is None:
    raise PlanError('the gin files define no MODEL: pass a model gin (gin/models/*.gin or '
                    'gin/runner/model.gin).')
  if got['partitioner'] is not None:
    got['num_partitions'] = got['partitioner']._num_partitions  # pylint: disable=protected-access
  if args.num_partitions is not None:
    got['num_partitions'] = args.num_partitions
  got['num_partitions'] = got['num_partitions'] or 1
  got['backend'] = 'runner' if type(got['model']).__module__.startswith('altup_t5x') else 't5x'
  if args.backend != 'auto' and args.backend != got['backend']:
    raise PlanError(f'--backend={args.backend} but the gin files build a {got["backend"]} model '
                    f'({type(got["model"]).__module__}); pass the matching gin files.')
  return got


# --------------------------------------------------------------------------------------------------
# Shapes, shardings, bytes.

def make_mesh(devices: int, num_partitions: int):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  grid = np.array(jax.devices()[:devices]).reshape(devices // num_partitions, num_partitions)
  return Mesh(grid, ('data', 'model'))


def bytes_per_device(tree, shardings) -> int:
  """Sum over leaves of the bytes of one device's shard."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_leaves(tree)
  shs = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: hasattr(x, 'shard_shape'))
  assert len(leaves) == len(shs), (len(leaves), len(shs))
  total = 0
  for x, s in zip(leaves, shs):
    total += int(np.prod(s.shard_shape(tuple(x.shape)), dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def batch_shapes(batch_size: int, lengths: Mapping[str, int]):
  """Packed encoder-decoder features, as seqio.EncDecFeatureConverter(pack=True) makes them."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  i, t = lengths['inputs'], lengths['targets']
  out = {}
  for name, n in (('encoder_input_tokens', i), ('encoder_segment_ids', i), ('encoder_positions', i),
                  ('decoder_input_tokens', t), ('decoder_target_tokens', t),
                  ('decoder_segment_ids', t), ('decoder_positions', t)):
    out[name] = jax.ShapeDtypeStruct((batch_size, n), jnp.int32)
  out['decoder_loss_weights'] = jax.ShapeDtypeStruct((batch_size, t), jnp.float32)
  return out


def _with_shardings(tree, shardings):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                tree, shardings)


def build_t5x(got, mesh):
  """(abstract state, state shardings, params, param shardings, jitted step, context)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from t5x import trainer as t5x_trainer  # pylint: disable=g-import-not-at-top
  from t5x import utils as t5x_utils  # pylint: disable=g-import-not-at-top
  model, partitioner = got['model'], got['partitioner']
  partitioner.__dict__['mesh'] = mesh  # cached_property: our (data, model) mesh, not get_cpu_mesh
  bs, lengths = got['batch_size'], got['task_feature_lengths']
  batch = batch_shapes(bs, lengths)
  input_shapes = {k: v.shape for k, v in batch.items()}
  input_types = {k: v.dtype for k, v in batch.items()}
  init = t5x_utils.TrainStateInitializer(
      optimizer_def=model.optimizer_def, init_fn=model.get_initial_variables,
      input_shapes=input_shapes, input_types=input_types, partitioner=partitioner)
  state = init.global_train_state_shape
  axes = init.train_state_axes
  to_sharding = lambda spec: NamedSharding(mesh, spec if spec is not None else PartitionSpec())
  is_spec = lambda x: x is None or isinstance(x, PartitionSpec)

  def broadcast(axes_tree, tree):  # a spec (or None) may stand for a whole subtree
    return jax.tree_util.tree_map(
        lambda spec, sub: jax.tree_util.tree_map(lambda _: to_sharding(spec), sub),
        axes_tree, tree, is_leaf=is_spec)

  state_sh = broadcast(axes, state)
  params_sh = broadcast(axes.params, state.params)

  def train_step(train_state, batch):
    lr = 1.0 / jnp.sqrt(jnp.maximum(train_state.step.astype(jnp.float32), 1e4))
    return t5x_trainer.train_with_lr(
        train_state, batch, learning_rate=lr,
        dropout_rng=jax.random.fold_in(jax.random.PRNGKey(0), train_state.step),
        model=model, num_microbatches=None,
        data_partition_spec=partitioner.data_partition_spec)

  step = partitioner.partition(
      train_step, in_axis_resources=(axes, partitioner.data_partition_spec),
      out_axis_resources=(axes, None), donate_argnums=(0,))
  abstract_state = _with_shardings(state, state_sh)
  abstract_batch = _with_shardings(batch, {k: NamedSharding(mesh, partitioner.data_partition_spec)
                                           for k in batch})
  return dict(state=abstract_state, state_sh=state_sh, params=state.params, params_sh=params_sh,
              lower=lambda: step.lower(abstract_state, abstract_batch),
              cfg=model.module.config)


def build_runner(got, mesh):
  from altup_t5x import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from altup_t5x.partitioning import Partitioner  # pylint: disable=g-import-not-at-top
  partitioner = Partitioner(got['num_partitions'], devices=list(mesh.devices.flat))
  partitioner.mesh = mesh
  model = got['model']
  trainer = trainer_lib.Trainer(model, partitioner,
                                trainer_lib.model_input_shapes(got['task_feature_lengths']))
  batch = batch_shapes(got['batch_size'], got['task_feature_lengths'])
  abstract_batch = _with_shardings(batch, {k: partitioner.batch_sharding for k in batch})
  state = trainer.abstract_state

  def lower():
    with partitioner.context():
      return trainer.jitted_train_step().lower(state, abstract_batch)

  return dict(state=state, state_sh=trainer.state_shardings, params=state['params'],
              params_sh=trainer.state_shardings['params'], lower=lower, cfg=model.module.config)


def fits_table(need: int, chips: Sequence[str]) -> Dict[str, Dict[str, Any]]:
  return {c: {'memory_bytes': CHIPS[c], 'fits': need <= CHIPS[c],
              'margin_bytes': CHIPS[c] - need} for c in chips}


def plan(args, simulate: bool = True) -> Dict[str, Any]:
  if simulate:
    simulate_devices(args.devices)
  got = load_gin(args)
  cfg = got['model'].module.config
  check_topology(args.devices, got['num_partitions'], got['batch_size'], cfg)
  mesh = make_mesh(args.devices, got['num_partitions'])
  build = build_t5x if got['backend'] == 't5x' else build_runner
  t0 = time.time()
  built = build(got, mesh)
  state_bytes = bytes_per_device(built['state'], built['state_sh'])
  param_bytes = bytes_per_device(built['params'], built['params_sh'])
  out = {
      'backend': got['backend'],
      'backend_detail': ("T5X: PjitPartitioner + TrainStateInitializer + Adafactor + "
                         "trainer.train_with_lr" if got['backend'] == 't5x' else
                         'runner: partitioning.Partitioner + trainer.Trainer (optax Adafactor)'),
      'mode': 'analytic' if args.analytic else 'compiled',
      'devices': args.devices,
      'mesh': {k: int(v) for k, v in mesh.shape.items()},
      'batch_size': got['batch_size'],
      'task_feature_lengths': dict(got['task_feature_lengths']),
      'scan_layers': bool(getattr(cfg, 'scan_layers', False)),
      'remat_policy': str(getattr(cfg, 'remat_policy', 'none')),
      'params': models.count_params(built['params']),
      'param_bytes_per_device': param_bytes,
      # Everything in the train state that is not a parameter: Adafactor statistics (+ the step).
      'optimizer_bytes_per_device': state_bytes - param_bytes,
      'temp_bytes_per_device': None, 'argument_bytes_per_device': None,
      'output_bytes_per_device': None, 'alias_bytes_per_device': None,
      'peak_bytes_per_device': None, 'flops_per_device': None, 'flops_per_step': None,
      'bytes_accessed_per_device': None, 'compile_seconds': None,
      'shapes_seconds': round(time.time() - t0, 2),
  }
  if not args.analytic:
    t0 = time.time()
    lowered = built['lower']()
    compiled = lowered.compile()
    out['compile_seconds'] = round(time.time() - t0, 2)
    mem = compiled.memory_analysis()
    if mem is not None:
      out['temp_bytes_per_device'] = int(mem.temp_size_in_bytes)
      out['argument_bytes_per_device'] = int(mem.argument_size_in_bytes)
      out['output_bytes_per_device'] = int(mem.output_size_in_bytes)
      out['alias_bytes_per_device'] = int(mem.alias_size_in_bytes)
      out['peak_bytes_per_device'] = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                         - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    cost = cost or {}
    if 'flops' in cost:
      out['flops_per_device'] = float(cost['flops'])
      out['flops_per_step'] = float(cost['flops']) * args.devices
    if 'bytes accessed' in cost:
      out['bytes_accessed_per_device'] = float(cost['bytes accessed'])
  need = out['peak_bytes_per_device']
  if need is None:  # analytic: a lower bound (state only, no activations)
    need = out['param_bytes_per_device'] + out['optimizer_bytes_per_device']
  out['fits_basis'] = 'peak' if out['peak_bytes_per_device'] is not None else 'state lower bound'
  out['fits'] = fits_table(need, [args.chip] if args.chip else sorted(CHIPS))
  return out


# --------------------------------------------------------------------------------------------------
# Output.

def _gib(x) -> str:
  return '-' if x is None else f'{x / GiB:.3f} GiB'


def format_text(r: Mapping[str, Any]) -> str:
  lines = [
      f"backend: {r['backend_detail']}",
      f"mode: {r['mode']}   devices: {r['devices']}   mesh: {r['mesh']}   batch: "
      f"{r['batch_size']} x {r['task_feature_lengths']}",
      f"scan_layers: {r['scan_layers']}   remat_policy: {r['remat_policy']}",
      f"params: {r['params']:,}",
      'per device:',
      f"  parameters        {_gib(r['param_bytes_per_device'])}",
      f"  optimizer state   {_gib(r['optimizer_bytes_per_device'])}",
      f"  XLA arguments     {_gib(r['argument_bytes_per_device'])}",
      f"  XLA temporaries   {_gib(r['temp_bytes_per_device'])}",
      f"  XLA peak          {_gib(r['peak_bytes_per_device'])}",
  ]
  if r['flops_per_device'] is not None and r['scan_layers']:
    lines.append('  (scan_layers: XLA counts the scanned loop body once, FLOPs are a lower bound)')
  if r['flops_per_device'] is not None:
    lines.append(f"  FLOPs             {r['flops_per_device']:.4g} per device, "
                 f"{r['flops_per_step']:.4g} per step")
  if r['bytes_accessed_per_device'] is not None:
    lines.append(f"  bytes accessed    {r['bytes_accessed_per_device']:.4g}")
  if r['compile_seconds'] is not None:
    lines.append(f"lowering + compile: {r['compile_seconds']:.1f} s")
  lines.append(f"fits ({r['fits_basis']}):")
  for chip, f in r['fits'].items():
    lines.append(f"  {chip:10s} {f['memory_bytes'] / GiB:7.2f} GiB  "
                 f"{'fits' if f['fits'] else 'DOES NOT FIT':12s} margin {f['margin_bytes'] / GiB:+.2f} GiB")
  return '\n'.join(lines)


def csv_row(r: Mapping[str, Any], label: str, size: str = '', variant: str = '') -> Dict[str, Any]:
  row = {k: r.get(k) for k in CSV_FIELDS}
  row.update(config=label, size=size, variant=variant,
             mesh=f"{r['mesh']['data']}x{r['mesh']['model']}")
  return {k: ('' if v is None else v) for k, v in row.items()}


def append_csv(path: str, row: Mapping[str, Any]) -> None:
  """Adds the row, replacing an earlier one for the same config/mesh/scan/remat/mode."""
  csv_tables.update(path, [row], CSV_FIELDS, key=CSV_KEY, lineterminator='\n')


# --------------------------------------------------------------------------------------------------
# PODS.md.

SIZE_ORDER = ['small', 'base', 'large', 'xl', 'xxl']
VARIANT_ORDER = ['baseline', 'altup_k2', 'altup_k4', 'recycled_k2']

PODS_HEADER = """# Pod planning: what fits where

Generated by `python -m altup_t5x.plan --pods-md` from `benchmarks/pods.csv`; do not edit by hand
(a test checks this file equals the generator's output). Each row of the CSV is one
`python -m altup_t5x.plan CONFIG --devices N --num_partitions M [--analytic] --csv benchmarks/pods.csv`
run on a 2-core CPU with N simulated devices (see `altup_t5x/plan.py`).

- **compiled**: the real train step (T5X's `PjitPartitioner`, train state and Adafactor, or the
  standalone runner's) lowered and compiled ahead of time; XLA's memory analysis gives the
  temporaries and the peak (arguments + outputs - donated + temporaries) of one device.
  These are XLA:CPU's numbers for the same SPMD-partitioned program: the TPU/GPU compilers
  schedule and fuse differently (and keep bfloat16 where the CPU may widen it), so read the
  temporaries as an estimate of the activation footprint, not a guarantee for the accelerator.
  FLOPs come from XLA's cost analysis, which counts a while loop's body once: with
  `scan_layers` the layer stack is such a loop, so scanned rows' FLOPs leave out all but one
  layer group (compare the unscanned row of the same config). Compile seconds were measured on
  2 CPU cores shared with other jobs: compare them within a config only.
- **analytic**: shapes and shardings only (nothing compiled, for rows too large to compile on the
  planning machine): parameter and optimizer-state bytes per device are exact, activations are not
  included, so the peak is a lower bound (marked `>=`) and the row claims no fit.
- Memory per device: {chips}.
  A TPU v3 JAX device is one core (16 GiB of the chip's 32 GiB).
- Model-parallel size (`num_partitions`, the 'model' mesh axis) as T5X's configs use it:
  small/base 1, large 2, XL 8, XXL 16; the rest of the devices is the data axis. With T5X's
  standard rules parameters are split over 'model' only, so parameter bytes per device do not
  change with the data axis; T5X keeps Adafactor's factored statistics replicated.
- Rows with a scan/remat setting other than the config's were compiled with
  `--gin.SCAN_LAYERS=... --gin.REMAT_POLICY=...`.
- Batch 256 x {{'inputs': 512, 'targets': 114}} (the paper's pretraining), float32 parameters,
  bfloat16 activations, T5X's Adafactor (factored second moments, no momentum).
"""


def _fmt_gib(v: str) -> str:
  return '' if v in ('', None) else f'{int(float(v)) / GiB:.3f}'


def render_pods_md(rows: Sequence[Mapping[str, str]]) -> str:
  chips = ', '.join(f'{c} {CHIPS[c] / GiB:.1f} GiB' for c in sorted(CHIPS))
  out = [PODS_HEADER.replace('{chips}', chips).replace('{{', '{').replace('}}', '}')]
  rank = lambda r: (SIZE_ORDER.index(r['size']) if r['size'] in SIZE_ORDER else 99,
                    VARIANT_ORDER.index(r['variant']) if r['variant'] in VARIANT_ORDER else 99,
                    int(r['devices']), r['mesh'], r['scan_layers'], r['remat_policy'], r['mode'])
  rows = sorted(rows, key=rank)
  chip_names = sorted(CHIPS)
  out.append('| config | devices | mesh (data x model) | scan | remat | mode | params | '
             'params GiB/dev | optimizer GiB/dev | temp GiB/dev | peak GiB/dev | '
             'TFLOPs/step | compile s | fits on |')
  out.append('|' + '---|' * 14)
  for r in rows:
    peak = r['peak_bytes_per_device']
    if peak not in ('', None):
      need, prefix = int(float(peak)), ''
    else:
      need = int(float(r['param_bytes_per_device'])) + int(float(r['optimizer_bytes_per_device']))
      prefix = '>='
    # An analytic row knows a lower bound only: it names no chip it fits.
    fits = ('not known (not compiled)' if prefix else
            ', '.join(c for c in chip_names if need <= CHIPS[c]) or 'none')
    flops = r['flops_per_step']
    out.append('| ' + ' | '.join([
        r['config'], str(r['devices']), r['mesh'], r['scan_layers'], r['remat_policy'], r['mode'],
        f"{int(r['params']) / 1e6:.0f}M", _fmt_gib(r['param_bytes_per_device']),
        _fmt_gib(r['optimizer_bytes_per_device']), _fmt_gib(r['temp_bytes_per_device']),
        (prefix + _fmt_gib(str(need))) if prefix else _fmt_gib(peak),
        '' if flops in ('', None) else f'{float(flops) / 1e12:.1f}',
        '' if r['compile_seconds'] in ('', None) else f"{float(r['compile_seconds']):.0f}",
        fits]) + ' |')
  return '\n'.join(out) + '\n'


read_csv = csv_tables.read  # the planner's table, also read by scripts/gen_configs.py


# --------------------------------------------------------------------------------------------------

def _label(files: Sequence[str]) -> Tuple[str, str, str]:
  """(label, size, variant) from a configs/pretrain/c4_<size>_<variant>.gin file name."""
  base = os.path.splitext(os.path.basename(files[0]))[0] if len(files) == 1 else '+'.join(
      os.path.splitext(os.path.basename(f))[0] for f in files)
  if base.startswith('c4_'):
    size, _, variant = base[3:].partition('_')
    return base, size, variant
  return base, '', ''


# Slices per size: (devices, num_partitions). Model-parallel sizes as T5X's T5.1.1 configs and
# docs use them: 1 for small/base, 1-2 for large, 8 for XL, 16 for XXL.
SLICES = {
    'small': [(8, 1), (32, 1), (128, 1)],
    'base': [(8, 1), (32, 1), (128, 1)],
    'large': [(8, 2), (32, 2), (128, 2)],
    'xl': [(32, 8), (128, 8)],
    'xxl': [(64, 16), (128, 16)],
}


def sweep(args) -> None:
  """Every configs/pretrain/c4_<size>_<variant>.gin on its SLICES, in one process (analytic)."""
  import glob  # pylint: disable=g-import-not-at-top
  if not args.analytic:
    raise PlanError('--pods-sweep runs in --analytic mode only (compile rows one by one).')
  simulate_devices(max(d for v in SLICES.values() for d, _ in v))
  for path in list(args.gin_files) or sorted(glob.glob('configs/pretrain/c4_*.gin')):
    label, size, variant = _label([path])
    if variant not in VARIANT_ORDER or size not in SLICES:
      continue
    for devices, m in SLICES[size]:
      one = argparse.Namespace(**vars(args))
      one.gin_files, one.devices, one.num_partitions = [path], devices, m
      r = plan(one, simulate=False)
      append_csv(args.csv, csv_row(r, label, size, variant))
      print(f"{label} {devices}/{m}: params {r['params']:,} param "
            f"{_gib(r['param_bytes_per_device'])} opt {_gib(r['optimizer_bytes_per_device'])}",
            flush=True)


def main(argv: Sequence[str]) -> Dict[str, Any]:
  args = parse_args(argv)
  if args.pods_sweep:
    sweep(args)
    return {}
  if args.pods_md:
    text = render_pods_md(read_csv(args.pods_csv))
    with open(args.pods_out, 'w') as f:
      f.write(text)
    print(f'wrote {args.pods_out} ({len(text.splitlines())} lines) from {args.pods_csv}')
    return {}
  result = plan(args)
  if args.csv:
    label, size, variant = _label(args.gin_files)
    append_csv(args.csv, csv_row(result, args.label or label, size, variant))
  if args.json:
    print(json.dumps(result, sort_keys=True))
  else:
    print(format_text(result))
  return result


def console_main():
  try:
    main(sys.argv[1:])
  except PlanError as e:
    print(f'ERROR: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  except Exception as e:  # pylint: disable=broad-except
    name = type(e).__name__
    if name in ('ConfigError', 'RunnerError'):
      print(f'ERROR: {e}', file=sys.stderr, flush=True)
      sys.exit(2)
    raise


if __name__ == '__main__':
  console_main()

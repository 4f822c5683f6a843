"""A plan: the train step's bytes per device from its shardings, then XLA's analyses of it.

Per device: parameter and optimizer-state bytes (from each array's shard shape under its
sharding); XLA's memory analysis of the compiled step (arguments, outputs, temporaries; peak =
arguments + outputs - aliased + temporaries); XLA's cost analysis (FLOPs and bytes accessed of the
per-device program; flops_per_step = per device x devices); the lowering + compile time; and
whether the peak fits each accelerator (`chips.CHIPS`). `analytic` stops after the shapes and
shardings, for configurations too large to compile: the fit is then a lower bound (no
activations).
"""
import time
from typing import Any, Dict, Optional, Sequence

from altup_t5x import models
from altup_t5x.planning import backend as backend_lib
from altup_t5x.planning import chips
from altup_t5x.planning import gin_config
from altup_t5x.planning import topology


def get_backend(name: str) -> backend_lib.Backend:
  if name == 't5x':
    from altup_t5x.planning import t5x_backend  # pylint: disable=g-import-not-at-top
    return t5x_backend.T5XBackend()
  from altup_t5x.planning import runner_backend  # pylint: disable=g-import-not-at-top
  return runner_backend.RunnerBackend()


def bytes_per_device(tree, shardings) -> int:
  """Sum over leaves of the bytes of one device's shard."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_leaves(tree)
  shs = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: hasattr(x, 'shard_shape'))
  assert len(leaves) == len(shs), (len(leaves), len(shs))
  total = 0
  for x, s in zip(leaves, shs):
    shard = s.shard_shape(tuple(x.shape))
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def compiled_analysis(compiled, devices: int) -> Dict[str, Any]:
  """XLA's memory and cost analyses of one device's program, in the plan's keys."""
  out = {}
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
    out['flops_per_step'] = float(cost['flops']) * devices
  if 'bytes accessed' in cost:
    out['bytes_accessed_per_device'] = float(cost['bytes accessed'])
  return out


def plan(gin_files: Sequence[str], devices: int, num_partitions: Optional[int] = None,
         gin_search_paths: Sequence[str] = (), gin_bindings: Sequence[str] = (),
         backend: str = 'auto', analytic: bool = False, chip: Optional[str] = None,
         simulate: bool = True) -> Dict[str, Any]:
  """The plan of the train step the gin files configure, on `devices` simulated CPU devices."""
  if simulate:
    topology.simulate_devices(devices)
  request = gin_config.load_gin(gin_files, gin_search_paths, gin_bindings, num_partitions,
                                backend)
  cfg = request.model.module.config
  topology.check_topology(devices, request.num_partitions, request.batch_size, cfg)
  builder = get_backend(request.backend)
  t0 = time.time()
  built = builder.build(request, topology.make_mesh(devices, request.num_partitions))
  state_bytes = bytes_per_device(built.state, built.state_shardings)
  param_bytes = bytes_per_device(built.params, built.params_shardings)
  out = {
      'backend': builder.name,
      'backend_detail': builder.description,
      'mode': 'analytic' if analytic else 'compiled',
      'devices': devices,
      'mesh': {k: int(v) for k, v in built.mesh.shape.items()},
      'batch_size': request.batch_size,
      'task_feature_lengths': dict(request.task_feature_lengths),
      'scan_layers': bool(getattr(cfg, 'scan_layers', False)),
      'remat_policy': str(getattr(cfg, 'remat_policy', 'none')),
      'params': models.count_params(built.params),
      'param_bytes_per_device': param_bytes,
      # Everything in the train state that is not a parameter: Adafactor statistics (+ the step).
      'optimizer_bytes_per_device': state_bytes - param_bytes,
      'temp_bytes_per_device': None, 'argument_bytes_per_device': None,
      'output_bytes_per_device': None, 'alias_bytes_per_device': None,
      'peak_bytes_per_device': None, 'flops_per_device': None, 'flops_per_step': None,
      'bytes_accessed_per_device': None, 'compile_seconds': None,
      'shapes_seconds': round(time.time() - t0, 2),
  }
  if not analytic:
    t0 = time.time()
    compiled = built.lower().compile()
    out['compile_seconds'] = round(time.time() - t0, 2)
    out.update(compiled_analysis(compiled, devices))
  need = out['peak_bytes_per_device']
  if need is None:  # analytic: a lower bound (state only, no activations)
    need = out['param_bytes_per_device'] + out['optimizer_bytes_per_device']
  out['fits_basis'] = 'peak' if out['peak_bytes_per_device'] is not None else 'state lower bound'
  out['fits'] = chips.fits_table(need, [chip] if chip else sorted(chips.CHIPS))
  return out

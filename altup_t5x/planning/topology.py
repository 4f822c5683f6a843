"""Simulated devices and the ('data', 'model') mesh of a plan, checked before anything is built."""
import os

from altup_t5x.planning import PlanError


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


def make_mesh(devices: int, num_partitions: int):
  """The first `devices` devices as a (devices / num_partitions) x num_partitions mesh."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  grid = np.array(jax.devices()[:devices]).reshape(devices // num_partitions, num_partitions)
  return Mesh(grid, ('data', 'model'))

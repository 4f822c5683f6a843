"""Logical axis names of altup-t5x, how they are partitioned, and how Adafactor factors them.

Every parameter and main activation carries logical axis names. The T5.1.1 part uses T5X's names
(batch, length, embed, mlp, heads, kv, joined_kv, vocab, relpos_buckets). AltUp adds:

| name             | on                                                  | mesh axis | Adafactor |
|------------------|-----------------------------------------------------|-----------|-----------|
| altup_blocks     | K axis of `predict` [K, K], `correct` [K],          | none      | BATCH     |
|                  | `altup_reduce` [K, d, d], activations [b, l, K, d]  | (replic.) |           |
| altup_blocks_in  | second K axis of `predict` (the block read from)    | none      | NONE      |
| altup_embed_out  | output axis of `altup_reduce` [K, d, d]             | none      | COLUMN    |
| altup_router     | router output of dynamic coefficients (size K)      | none      | NONE      |

Scanned stacks (AltUpConfig.scan_layers) stack parameters on T5X's own 'layers' axis: replicated
(`standard_logical_axis_rules` below, as T5X's) and factored as BATCH by T5X's standard Adafactor
rules, so every stacked AltUp parameter keeps a valid spec (BATCH mixes with ROW/COLUMN or NONE).

The K axis is tiny (2-4) and every block of a token is needed by every layer, so it is replicated;
the coefficients are K^2 + K scalars, too small to factor (with no ROW/COLUMN axis T5X keeps them
unfactored). 'altup_blocks' is BATCH, as T5X marks 'layers': the [K, d, d] projection is then
factored as K separate d x d kernels ('embed' is ROW in T5X's rules); T5X rejects a spec that mixes
NONE with ROW and COLUMN.

T5X's Adafactor raises KeyError for an axis name without a factor rule, so the model gin must extend
`adafactor.Adafactor.logical_factor_rules` with `t5x_factor_rules()` (see
gin/models/t5x_encoder_decoder.gin) and `partitioning.standard_logical_axis_rules.additional_rules`
with ALTUP_AXIS_RULES.
"""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from altup_t5x.config import RunnerError

PyTree = Any
AxisRules = Sequence[Tuple[str, Optional[str]]]

# Partitioning: logical name -> mesh axis (None = replicated).
ALTUP_AXIS_RULES: List[Tuple[str, Optional[str]]] = [
    ('altup_blocks', None),
    ('altup_blocks_in', None),
    ('altup_embed_out', None),
    ('altup_router', None),
]

# Adafactor factoring, by FactorDim member name (T5X's `t5x.adafactor.FactorDim`).
ALTUP_FACTOR_RULES: Dict[str, str] = {
    'altup_blocks': 'BATCH',
    'altup_blocks_in': 'NONE',
    'altup_embed_out': 'COLUMN',
    'altup_router': 'NONE',
}

# Mixture of experts (altup_t5x.moe): experts are split over the data axis (expert parallelism),
# as T5X's MoE does; the router's expert axis and the Sequence-AltUp scalars are 'unmodeled'
# (replicated, not factored).
MOE_AXIS_RULES: List[Tuple[str, Optional[str]]] = [
    ('expert', 'data'),
    ('unmodeled', None),
]
MOE_FACTOR_RULES: Dict[str, str] = {
    'expert': 'BATCH',
    'unmodeled': 'NONE',
}


def standard_logical_axis_rules(model_axis: str = 'model', data_axis: str = 'data',
                                additional_rules: AxisRules = ()) -> List[Tuple[str, Optional[str]]]:
  """T5X's default 1-D model parallel + data parallel rules, plus the AltUp names.

  Same mapping as T5X's `partitioning.standard_logical_axis_rules()` with its defaults
  (activation and parameter partitioning dims 1): batch -> data; vocab, mlp, heads, joined_kv ->
  model; the rest replicated.
  """
  rules = [
      ('batch', data_axis),
      ('vocab', model_axis),
      ('embed', None),
      ('mlp', model_axis),
      ('heads', model_axis),
      ('kv', None),
      ('joined_kv', model_axis),
      ('relpos_buckets', None),
      ('abspos_buckets', None),
      ('length', None),
      ('layers', None),
      ('stack', None),
      ('mlp_activations', None),
      ('expert', data_axis),
      ('unmodeled', None),
  ]
  rules.extend(ALTUP_AXIS_RULES)
  rules.extend(additional_rules)
  return _dedupe(rules)


def _dedupe(rules):
  """Later rules win, as an override list would in gin."""
  seen = {}
  for name, axis in rules:
    seen[name] = axis
  return list(seen.items())


def t5x_factor_rules():
  """ALTUP_FACTOR_RULES + MOE_FACTOR_RULES as T5X `adafactor.FactorDim` values (needs T5X)."""
  from t5x import adafactor  # pylint: disable=g-import-not-at-top  (T5X is optional)
  rules = {**ALTUP_FACTOR_RULES, **MOE_FACTOR_RULES}
  return {name: getattr(adafactor.FactorDim, dim) for name, dim in rules.items()}


def t5x_axis_rules() -> List[Tuple[str, Optional[str]]]:
  """The rules to add to T5X's `partitioning.standard_logical_axis_rules.additional_rules`."""
  return ALTUP_AXIS_RULES + MOE_AXIS_RULES


# --------------------------------------------------------------------------------------------------
# The device mesh and shardings of the standalone runner (T5X keeps its partitioner here too).


class Partitioner:
  """A ('data', 'model') device mesh plus logical axis rules.

  num_partitions is the size of the 'model' axis (1 = pure data parallelism); every other device
  count goes to 'data'. The same code runs on one CPU (a 1x1 mesh) and on many hosts.
  """

  def __init__(self, num_partitions: int = 1, logical_axis_rules=None,
               devices: Optional[Sequence[jax.Device]] = None):
    devices = list(devices if devices is not None else jax.devices())
    if num_partitions < 1 or len(devices) % num_partitions:
      raise RunnerError(f'num_partitions={num_partitions} must divide the device count '
                        f'({len(devices)}).')
    shape = (len(devices) // num_partitions, num_partitions)
    try:
      from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
      grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # pylint: disable=broad-except  (CPU / odd topologies)
      grid = np.array(devices).reshape(shape)
    self.mesh = Mesh(grid, ('data', 'model'))
    self.rules = list(logical_axis_rules or standard_logical_axis_rules())

  @property
  def data_size(self) -> int:
    return self.mesh.shape['data']

  def context(self):
    """Mesh + logical rules for tracing (activation sharding constraints in the network)."""
    import contextlib  # pylint: disable=g-import-not-at-top
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn_partitioning.axis_rules(self.rules))
    return stack

  def sharding(self, logical_axes: Sequence[Optional[str]]) -> NamedSharding:
    return NamedSharding(self.mesh, nn.logical_to_mesh_axes(tuple(logical_axes), self.rules))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec('data'))

  def params_shardings(self, params_axes: PyTree, params: PyTree) -> PyTree:
    """NamedSharding per parameter from the `params_axes` collection."""
    names = nn_partitioning.get_axis_names(params_axes)
    names = jax.tree_util.tree_map(lambda s: s, flax_unfreeze(names),
                                   is_leaf=lambda x: isinstance(x, PartitionSpec))
    missing = []

    def one(path, _):
      keys = tuple(p.key for p in path)
      node = names
      for k in keys:
        if not isinstance(node, Mapping) or k not in node:
          missing.append('/'.join(keys))
          return self.replicated
        node = node[k]
      return self.sharding(tuple(node))

    out = jax.tree_util.tree_map_with_path(one, params)
    if missing:
      raise RunnerError(f'Missing axis names for parameters: {missing[:5]}')
    return out

  def opt_state_shardings(self, abstract_opt_state: PyTree, params: PyTree,
                          param_shardings: PyTree) -> PyTree:
    """Shardings for optimizer state: per-parameter statistics follow their parameter.

    A statistic with the parameter's shape gets its sharding; a factored one (one axis averaged
    away) gets the parameter's spec without that axis; anything else is replicated.
    """
    by_path = {}
    for path, (p, s) in _flatten_with_keys(params, param_shardings):
      by_path[path] = (p.shape, s.spec)

    def one(path, leaf):
      keys = tuple(getattr(k, 'key', getattr(k, 'name', None)) for k in path)
      shape = tuple(getattr(leaf, 'shape', ()))
      for n in range(len(keys), 0, -1):
        if keys[-n:] in by_path:
          pshape, spec = by_path[keys[-n:]]
          spec = tuple(spec) + (None,) * (len(pshape) - len(spec))
          if shape == tuple(pshape):
            return NamedSharding(self.mesh, PartitionSpec(*spec))
          for i in range(len(pshape)):
            if shape == tuple(pshape[:i]) + tuple(pshape[i + 1:]):
              return NamedSharding(self.mesh, PartitionSpec(*(spec[:i] + spec[i + 1:])))
          break
      return self.replicated

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)

  def shard_batch(self, host_batch: Mapping[str, np.ndarray]) -> Dict[str, jax.Array]:
    """Host-local numpy batch -> global jax.Arrays split over 'data' (multi-host aware)."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in host_batch.items()}


def flax_unfreeze(x):
  import flax  # pylint: disable=g-import-not-at-top
  return flax.core.unfreeze(x)


def _flatten_with_keys(a: PyTree, b: PyTree):
  flat_a, _ = jax.tree_util.tree_flatten_with_path(a)
  flat_b = jax.tree_util.tree_leaves(b, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, x), y in zip(flat_a, flat_b):
    yield tuple(getattr(k, 'key', getattr(k, 'name', None)) for k in path), (x, y)

"""The interface of the planner's two backends, and the shape helpers they share.

A backend builds the real train step of its trainer from a `GinPlan` on a mesh, without
allocating anything: the train state as `jax.ShapeDtypeStruct`s with their shardings, and a
function that lowers the jitted step on them. `analysis.plan` measures whatever it returns.
"""
import abc
import dataclasses
from typing import Any, Callable, Mapping

from altup_t5x.planning.gin_config import GinPlan


@dataclasses.dataclass(frozen=True)
class Built:
  """One backend's train step, shapes only."""
  state: Any  # the abstract train state (parameters, optimizer state, step)
  state_shardings: Any  # a sharding per leaf of `state`
  params: Any  # the parameters' part of `state`
  params_shardings: Any
  lower: Callable[[], Any]  # () -> the jitted train step lowered on the abstract state and batch
  config: Any  # the network's config (scan_layers, remat_policy, sizes)
  mesh: Any  # the jax.sharding.Mesh the step is partitioned over


class Backend(abc.ABC):
  """Builds one trainer's train step for the planner."""

  name: str  # 't5x' or 'runner', as GinPlan.backend
  description: str  # one line for the report: which partitioner, state and step

  @abc.abstractmethod
  def build(self, request: GinPlan, mesh) -> Built:
    """The train step of `request`'s model on `mesh` (devices / num_partitions x num_partitions)."""


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


def with_shardings(tree, shardings):
  """`tree`'s leaves as ShapeDtypeStructs carrying the matching sharding of `shardings`."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                tree, shardings)

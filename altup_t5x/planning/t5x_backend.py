"""T5X's train step: `PjitPartitioner`, `TrainStateInitializer` and `trainer.train_with_lr`.

Imported only where T5X is installed (the T5X model gins need it anyway).
"""
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
from t5x import partitioning as t5x_partitioning
from t5x import trainer as t5x_trainer
from t5x import utils as t5x_utils

from altup_t5x.planning import backend


class PlannedPjitPartitioner(t5x_partitioning.PjitPartitioner):
  """T5X's PjitPartitioner on the planner's ('data', 'model') mesh.

  `BasePartitioner.mesh` is the property T5X's partitioners define for themselves. On CPU,
  T5X's default mesh puts every device of the process on 'model' whatever num_partitions says
  (`partitioning.get_cpu_mesh`), so the planner supplies the mesh that the accelerator slice
  would have; everything else (axis rules, partitioning of the step) is T5X's.
  """

  def __init__(self, mesh, **kwargs):
    super().__init__(**kwargs)
    self._planned_mesh = mesh

  @property
  def mesh(self):
    return self._planned_mesh


class T5XBackend(backend.Backend):
  """The step `t5x.train` runs for the gin's `t5x.models` model."""

  name = 't5x'
  description = ('T5X: PjitPartitioner + TrainStateInitializer + Adafactor + '
                 'trainer.train_with_lr')

  def build(self, request, mesh) -> backend.Built:
    kwargs = {k: v for k, v in request.partitioner_kwargs.items()
              if k not in ('num_partitions', 'model_parallel_submesh')}
    partitioner = PlannedPjitPartitioner(mesh, num_partitions=request.num_partitions, **kwargs)
    model = request.model
    batch = backend.batch_shapes(request.batch_size, request.task_feature_lengths)
    init = t5x_utils.TrainStateInitializer(
        optimizer_def=model.optimizer_def, init_fn=model.get_initial_variables,
        input_shapes={k: v.shape for k, v in batch.items()},
        input_types={k: v.dtype for k, v in batch.items()}, partitioner=partitioner)
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
    abstract_state = backend.with_shardings(state, state_sh)
    data_sharding = NamedSharding(mesh, partitioner.data_partition_spec)
    abstract_batch = backend.with_shardings(batch, {k: data_sharding for k in batch})
    return backend.Built(state=abstract_state, state_shardings=state_sh, params=state.params,
                         params_shardings=params_sh,
                         lower=lambda: step.lower(abstract_state, abstract_batch),
                         config=model.module.config, mesh=mesh)

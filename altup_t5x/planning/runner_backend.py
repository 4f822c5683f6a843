"""The standalone runner's train step: `partitioning.Partitioner` and `trainer.Trainer`."""
from altup_t5x.planning import backend


class RunnerBackend(backend.Backend):
  """The step `altup_t5x.train` runs (optax Adafactor), on the planner's devices."""

  name = 'runner'
  description = 'runner: partitioning.Partitioner + trainer.Trainer (optax Adafactor)'

  def build(self, request, mesh) -> backend.Built:
    from altup_t5x import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
    from altup_t5x.partitioning import Partitioner  # pylint: disable=g-import-not-at-top
    partitioner = Partitioner(request.num_partitions, devices=list(mesh.devices.flat))
    model = request.model
    trainer = trainer_lib.Trainer(model, partitioner,
                                  trainer_lib.model_input_shapes(request.task_feature_lengths))
    batch = backend.batch_shapes(request.batch_size, request.task_feature_lengths)
    abstract_batch = backend.with_shardings(batch, {k: partitioner.batch_sharding for k in batch})
    state = trainer.abstract_state

    def lower():
      with partitioner.context():
        return trainer.jitted_train_step().lower(state, abstract_batch)

    return backend.Built(state=state, state_shardings=trainer.state_shardings,
                         params=state['params'], params_shardings=trainer.state_shardings['params'],
                         lower=lower, config=model.module.config, mesh=partitioner.mesh)

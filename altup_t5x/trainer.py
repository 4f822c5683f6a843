"""The sharded train state and the jitted train / eval / predict / score steps.

The train state is a plain dict {'step', 'params', 'opt_state'}. Its shardings come from the
network's `params_axes` (logical axis names) mapped through the partitioner's rules; optimizer
statistics follow their parameter (see `partitioning.Partitioner.opt_state_shardings`). Dropout
keys are `fold_in(seed, step)`, so a resumed run draws the same dropout masks as an uninterrupted one.
"""
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from altup_t5x import models as models_lib
from altup_t5x import partitioning
from altup_t5x.config import RunnerError

PyTree = Any


def abstract_with_shardings(tree: PyTree, shardings: PyTree) -> PyTree:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Trainer:
  """Builds and runs the compiled steps of one model on one partitioner."""

  def __init__(self, model: models_lib.EncoderDecoderModel, partitioner: partitioning.Partitioner,
               input_shapes: Mapping[str, Tuple[int, ...]], seed: int = 0,
               learning_rate_fn: Optional[Callable[[Any], Any]] = None):
    if model.optimizer is None:
      raise RunnerError('the model has no optimizer: bind EncoderDecoderModel.optimizer in '
                              'the model gin (gin/runner/model.gin does).')
    self.model = model
    self.partitioner = partitioner
    self.tx: optax.GradientTransformation = model.optimizer
    self.input_shapes = dict(input_shapes)
    self.seed = seed
    self.learning_rate_fn = learning_rate_fn
    # Shapes only: nothing is allocated or compiled here.
    abstract_vars = jax.eval_shape(self._init_variables, jax.random.PRNGKey(seed))
    self.params_axes = abstract_vars.get('params_axes')
    if self.params_axes is None:
      raise RunnerError('the network produced no params_axes collection: every parameter '
                              'needs logical axis names (param_with_axes).')
    abstract_params = abstract_vars['params']
    param_sh = partitioner.params_shardings(self.params_axes, abstract_params)
    abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
    opt_sh = partitioner.opt_state_shardings(abstract_opt, abstract_params, param_sh)
    self.state_shardings = {'step': partitioner.replicated, 'params': param_sh,
                            'opt_state': opt_sh}
    abstract_state = {'step': jax.ShapeDtypeStruct((), jnp.int32), 'params': abstract_params,
                      'opt_state': abstract_opt}
    self.abstract_state = abstract_with_shardings(abstract_state, self.state_shardings)
    self._train_step = None
    self._eval_step = None
    self._predict_fns = {}
    self._score_step = None

  # ----------------------------------------------------------------------------------------------
  def _init_variables(self, rng):
    return self.model.get_initial_variables(rng, self.input_shapes)

  @property
  def abstract_params(self) -> PyTree:
    return self.abstract_state['params']

  def init_state(self) -> PyTree:
    """Fresh parameters and optimizer state, created directly with their shardings."""
    def init(rng):
      params = self._init_variables(rng)['params']
      return {'step': jnp.zeros((), jnp.int32), 'params': params,
              'opt_state': self.tx.init(params)}
    with self.partitioner.context():
      return jax.jit(init, out_shardings=self.state_shardings)(jax.random.PRNGKey(self.seed))

  def state_from_params(self, params: PyTree) -> PyTree:
    """A step-0 state around given parameters (INITIAL_CHECKPOINT_PATH)."""
    def make(params):
      return {'step': jnp.zeros((), jnp.int32), 'params': params,
              'opt_state': self.tx.init(params)}
    with self.partitioner.context():
      return jax.jit(make, out_shardings=self.state_shardings)(params)

  # ----------------------------------------------------------------------------------------------
  def train_step(self, state: PyTree, batch: Mapping[str, jax.Array]) -> Tuple[PyTree, Dict]:
    with self.partitioner.context():
      return self.jitted_train_step()(state, batch)

  def jitted_train_step(self):
    """The jitted (not yet compiled) train step; lower it inside `partitioner.context()`."""
    if self._train_step is None:
      model, tx, base_rng = self.model, self.tx, jax.random.PRNGKey(self.seed + 1)
      lr_fn = self.learning_rate_fn

      def step_fn(state, batch):
        rng = jax.random.fold_in(base_rng, state['step'])
        grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
        (_, metrics), grads = grad_fn(state['params'], batch, rng)
        updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
        params = optax.apply_updates(state['params'], updates)
        metrics = dict(metrics)
        metrics['grad_norm'] = optax.global_norm(grads)
        if lr_fn is not None:
          metrics['learning_rate'] = jnp.asarray(lr_fn(state['step']), jnp.float32)
        return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics

      self._train_step = jax.jit(
          step_fn, in_shardings=(self.state_shardings, self.partitioner.batch_sharding),
          out_shardings=(self.state_shardings, self.partitioner.replicated), donate_argnums=(0,))
    return self._train_step

  def eval_step(self, params: PyTree, batch: Mapping[str, jax.Array]) -> Dict:
    if self._eval_step is None:
      self._eval_step = jax.jit(
          lambda p, b: self.model.eval_fn(p, b)[1],
          in_shardings=(self.state_shardings['params'], self.partitioner.batch_sharding),
          out_shardings=self.partitioner.replicated)
    with self.partitioner.context():
      return self._eval_step(params, batch)

  def predict_step(self, params: PyTree, batch: Mapping[str, jax.Array], num_decodes: int = 1,
                   decoder_params: Optional[Mapping[str, Any]] = None,
                   return_all_decodes: bool = False):
    key = (num_decodes, tuple(sorted((decoder_params or {}).items())), return_all_decodes)
    if key not in self._predict_fns:
      def fn(p, b):
        return self.model.predict_batch_with_aux(
            p, b, num_decodes=num_decodes, decoder_params=decoder_params,
            return_all_decodes=return_all_decodes)
      self._predict_fns[key] = jax.jit(
          fn, in_shardings=(self.state_shardings['params'], self.partitioner.batch_sharding),
          out_shardings=self.partitioner.replicated)
    with self.partitioner.context():
      return self._predict_fns[key](params, batch)

  def score_step(self, params: PyTree, batch: Mapping[str, jax.Array]):
    if self._score_step is None:
      self._score_step = jax.jit(
          self.model.score_batch,
          in_shardings=(self.state_shardings['params'], self.partitioner.batch_sharding),
          out_shardings=self.partitioner.replicated)
    with self.partitioner.context():
      return self._score_step(params, batch)


def model_input_shapes(task_feature_lengths: Mapping[str, int], batch_size: int = 1):
  return {'encoder_input_tokens': (batch_size, task_feature_lengths['inputs']),
          'decoder_input_tokens': (batch_size, task_feature_lengths['targets'])}


def pad_batch(batch: Mapping[str, np.ndarray], batch_size: int) -> Tuple[Dict[str, np.ndarray], int]:
  """Pads a final partial batch with all-zero rows; returns (batch, number of real rows)."""
  n = len(next(iter(batch.values())))
  if n == batch_size:
    return dict(batch), n
  return {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}, n

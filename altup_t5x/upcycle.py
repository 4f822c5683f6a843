"""Dense T5.1.1 parameters -> AltUp parameters whose outputs at step 0 equal the dense model's.

Every dense parameter is kept (same names and shapes: the AltUp tree is the dense tree plus the
AltUp coefficients); the coefficients start at identity (p = I, g = 1; dynamic coefficients with
zero coefficient weights), the 'projection' reduction at the mean, Sequence-AltUp scalars at 1, and
a wide K*d embedding is the dense table repeated K times. With identical blocks and identity
coefficients every block receives the same residual update, so the K blocks stay equal to the dense
activation and the reduced output is the dense output: the upcycled model computes the dense
function exactly (up to float rounding) and then trains on.

Command line: `python scripts/upcycle.py --help`.
"""
from typing import Any, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from altup_t5x.config import AltUpConfig
from altup_t5x.network import Transformer


class UpcycleError(ValueError):
  pass


def dense_config_of(cfg: AltUpConfig) -> AltUpConfig:
  """The K=1 dense T5.1.1 config an AltUp config grows from."""
  return cfg.replace(altup_k=1, sequence_altup_stride=1)


def param_shapes(cfg: AltUpConfig, seed: int = 0):
  tokens = jnp.ones((1, 4), jnp.int32)
  variables = jax.eval_shape(lambda: Transformer(cfg).init(
      jax.random.PRNGKey(seed), tokens, tokens, tokens, enable_dropout=False))
  return flax.core.unfreeze(variables['params'])


def upcycle_params(dense_params: Mapping[str, Any], cfg: AltUpConfig, seed: int = 0):
  """Returns AltUp params (float32 numpy) for `cfg` from a dense K=1 parameter tree."""
  if cfg.altup_coef_init != 'identity':
    raise UpcycleError("upcycling keeps the dense function only with altup_coef_init='identity'; "
                       f'got {cfg.altup_coef_init!r}.')
  dense = flax.traverse_util.flatten_dict(flax.core.unfreeze(dict(dense_params)))
  target_shapes = flax.traverse_util.flatten_dict(param_shapes(cfg, seed))
  # Fresh initial values for the parameters the dense model lacks (router weights etc.).
  tokens = jnp.ones((1, 4), jnp.int32)
  fresh = flax.traverse_util.flatten_dict(flax.core.unfreeze(Transformer(cfg).init(
      jax.random.PRNGKey(seed), tokens, tokens, tokens, enable_dropout=False)['params']))
  out = {}
  for path, shape in target_shapes.items():
    name = '/'.join(path)
    if path in dense:
      value = np.asarray(dense[path], np.float32)
      if path == ('token_embedder', 'embedding') and value.shape != shape.shape:
        if value.shape[1] * cfg.altup_k != shape.shape[1]:
          raise UpcycleError(f'{name}: dense shape {value.shape} cannot be widened to {shape.shape}.')
        value = np.tile(value, (1, cfg.altup_k))  # K identical blocks
      if value.shape != shape.shape:
        raise UpcycleError(f'{name}: dense checkpoint has shape {value.shape}, the AltUp config '
                           f'needs {shape.shape}; the configs differ in more than AltUp settings.')
      out[path] = value
    elif any(p.startswith(('altup_', 'sequence_altup_')) for p in path):
      out[path] = np.asarray(fresh[path], np.float32)  # identity-initialised by construction
    else:
      raise UpcycleError(f'{name} is missing from the dense checkpoint; is it a T5.1.1 checkpoint '
                         'with the same sizes?')
  unused = sorted('/'.join(p) for p in dense if p not in target_shapes)
  if unused:
    raise UpcycleError(f'dense parameters with no place in the AltUp model: {unused[:5]}')
  return flax.traverse_util.unflatten_dict(out)

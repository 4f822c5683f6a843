"""Dense T5.1.1 parameters -> AltUp parameters whose outputs at step 0 equal the dense model's.

Every dense parameter is kept (same names and shapes: the AltUp tree is the dense tree plus the
AltUp coefficients); the coefficients start at identity (p = I, g = 1; dynamic coefficients with
zero coefficient weights), the 'projection' reduction at the mean, and a wide K*d embedding is the
dense table repeated K times. With identical blocks and identity coefficients every block receives
the same residual update, so the K blocks stay equal to the dense activation and the mean of the
blocks is the dense output: the upcycled model computes the dense function exactly (up to float
rounding) and then trains on.

Variants that cannot start as the dense function are refused (`check_upcycle`), with the reason.

Parameters are produced one at a time (`upcycle_tensors`), reading each dense tensor only when it
is needed, so converting an XL checkpoint holds at most one dense tensor (and its widened copy)
besides what the caller keeps. Command line: `python -m altup_t5x.convert upcycle --help`.
"""
from typing import Any, Callable, Dict, Iterator, Mapping, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from altup_t5x.config import AltUpConfig
from altup_t5x.network import AltUpCoefficients, DynamicAltUpCoefficients, Transformer

Path = Tuple[str, ...]


class UpcycleError(ValueError):
  pass


def dense_config_of(cfg: AltUpConfig) -> AltUpConfig:
  """The K=1 dense T5.1.1 config an AltUp config grows from."""
  return cfg.replace(altup_k=1, sequence_altup_stride=1)


def check_upcycle(cfg: AltUpConfig) -> None:
  """Raises UpcycleError naming the setting when `cfg` cannot start as the dense function."""
  if cfg.altup_k == 1:
    raise UpcycleError('AltUpConfig.altup_k=1 is the dense model itself: nothing to upcycle (use '
                       '`convert runner-to-t5x` / `t5x-to-runner` to change the format only).')
  if cfg.altup_coef_init != 'identity':
    raise UpcycleError(f"AltUpConfig.altup_coef_init={cfg.altup_coef_init!r} starts the "
                       "coefficients away from identity, so the model no longer computes the dense "
                       "function; upcycling needs altup_coef_init='identity'.")
  if cfg.altup_reduction == 'sum':
    raise UpcycleError("AltUpConfig.altup_reduction='sum' gives K times the dense activation to the "
                       "final RMS norm, which differs from the dense output through the norm's "
                       "epsilon; use 'mean' (or 'projection', which starts at the mean).")
  if cfg.sequence_altup_stride > 1:
    raise UpcycleError(f'AltUpConfig.sequence_altup_stride={cfg.sequence_altup_stride}: '
                       'Sequence-AltUp runs each encoder layer on a subset of positions, which '
                       'changes the function; upcycle with sequence_altup_stride=1.')
  if cfg.moe_num_experts:
    raise UpcycleError(f'AltUpConfig.moe_num_experts={cfg.moe_num_experts}: a routed mixture with '
                       'capacity limits does not compute the dense MLP (tokens can be dropped and '
                       'router weights scale the outputs); upcycle with moe_num_experts=0.')


def param_shapes(cfg: AltUpConfig) -> Dict[Path, jax.ShapeDtypeStruct]:
  """{path: ShapeDtypeStruct} of the network's parameters, without allocating them."""
  tokens = jnp.ones((1, 4), jnp.int32)
  variables = jax.eval_shape(lambda: Transformer(cfg).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False))
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(variables['params']))


def _coefficient_values(cfg: AltUpConfig, seed: int) -> Dict[Path, np.ndarray]:
  """One layer's identity-initialised coefficient parameters, as the network initialises them."""
  module = (DynamicAltUpCoefficients if cfg.altup_coefficients == 'dynamic'
            else AltUpCoefficients)(cfg)
  params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1, cfg.emb_dim), jnp.float32))
  return {k: np.asarray(v, np.float32) for k, v in
          flax.traverse_util.flatten_dict(flax.core.unfreeze(params['params'])).items()}


def upcycle_tensors(cfg: AltUpConfig, dense_shapes: Mapping[Path, Tuple[int, ...]],
                    read: Callable[[Path], np.ndarray], seed: int = 0
                    ) -> Iterator[Tuple[Path, np.ndarray]]:
  """Yields (path, float32 value) for every AltUp parameter of `cfg`, one at a time.

  Args:
    cfg: the AltUp target (checked with `check_upcycle`).
    dense_shapes: {path: shape} of the dense checkpoint's parameters (no values).
    read: returns one dense parameter's value; called once per dense parameter, when needed.
    seed: seed of the (function-irrelevant) router weights of dynamic coefficients.
  """
  check_upcycle(cfg)
  target = param_shapes(cfg)
  dense_shapes = {tuple(k): tuple(v) for k, v in dense_shapes.items()}
  # Everything is checked before the first tensor is read.
  missing = sorted('/'.join(p) for p in target if p not in dense_shapes and not _is_altup(p))
  if missing:
    raise UpcycleError(f'{missing[:5]} missing from the dense checkpoint; is it a T5.1.1 checkpoint '
                       'of the same size (see the gin files / --gin bindings)?')
  unused = sorted('/'.join(p) for p in dense_shapes if p not in target)
  if unused:
    raise UpcycleError(f'dense parameters with no place in the AltUp model: {unused[:5]}; the '
                       'dense checkpoint is not a plain T5.1.1 model of this size.')
  for path, want in target.items():
    if path not in dense_shapes:
      continue
    have = dense_shapes[path]
    ok = have == want.shape or (_is_embedding(path) and cfg.altup_embedding == 'wide' and
                                have[:-1] == want.shape[:-1] and
                                have[-1] * cfg.altup_k == want.shape[-1])
    if not ok:
      raise UpcycleError(f'{"/".join(path)}: the dense checkpoint has shape {have}, the AltUp '
                         f'config needs {want.shape}; the configs differ in more than AltUp '
                         'settings (check the size gin file and NUM_EMBEDDINGS).')
  coefficients = _coefficient_values(cfg, seed)
  k, d = cfg.altup_k, cfg.emb_dim
  for path, want in target.items():
    if path in dense_shapes:
      value = np.asarray(read(path), np.float32)
      if value.shape != want.shape:  # wide embedding: K identical blocks of the dense table
        value = np.tile(value, (1, k))
    elif path[-1] == 'altup_reduce':  # 'projection' reduction, starting at the mean
      value = np.broadcast_to(np.eye(d, dtype=np.float32) / k, (k, d, d)).copy()
    elif path[-1] in ('altup_embed_projection', 'altup_unembed_projection'):
      # Gemma 3n's stream maps at the identity: K equal blocks in, their mean out.
      value = np.broadcast_to(np.eye(d, dtype=np.float32), (k - 1, d, d)).copy()
    else:  # ('encoder'|'decoder', 'altup_<i>', ...)
      value = coefficients[path[2:]]
    if value.shape != want.shape:
      raise UpcycleError(f'internal: {"/".join(path)} built with shape {value.shape}, expected '
                         f'{want.shape}.')
    yield path, value


def upcycle_params(dense_params: Mapping[str, Any], cfg: AltUpConfig, seed: int = 0):
  """Returns AltUp params (float32 numpy, nested dict) for `cfg` from a dense parameter tree."""
  dense = flax.traverse_util.flatten_dict(flax.core.unfreeze(dict(dense_params)))
  out = dict(upcycle_tensors(cfg, {p: np.shape(v) for p, v in dense.items()},
                             lambda p: dense[p], seed))
  return flax.traverse_util.unflatten_dict(out)


def _is_altup(path: Path) -> bool:
  return any(p.startswith('altup_') for p in path)


def _is_embedding(path: Path) -> bool:
  return path == ('token_embedder', 'embedding')

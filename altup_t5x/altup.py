"""The Alternating Updates math as pure functions over a stacked block axis.

Notation follows arXiv 2301.13310 (Algorithm 1): a token is kept as K blocks x^1..x^K of width d,
stacked on the second-to-last axis, shape [..., k, d] (typically [b, l, k, d]). A layer L runs on one
block j* only:

  predict:  xhat^i = sum_j p[i, j] x^j                       (K*K scalars p)
  compute:  xtilde = L(x^{j*})                               (or L(xhat^{j*}), Gemma 3n's variant)
  correct:  y^i    = xhat^i + g[i] (xtilde - xhat^{j*})      (K scalars g)

Coefficients may carry leading batch axes (input-dependent coefficients): p [..., k, k], g [..., k].
The arithmetic is done in float32 whatever the activation dtype, then cast back.
"""
import jax.numpy as jnp


def predict(x, p):
  """Predictor: xhat^i = sum_j p[i, j] x^j.

  Args:
    x: blocks [..., k, d].
    p: predictor coefficients [k, k], or per-token [..., k, k] broadcastable against x's leading axes.
  Returns:
    xhat [..., k, d], float32.
  """
  x = x.astype(jnp.float32)
  p = p.astype(jnp.float32)
  if p.ndim == 2:
    return jnp.einsum('...jd,ij->...id', x, p)
  return jnp.einsum('...jd,...ij->...id', x, p)


def correct(xhat, layer_output, g, block: int):
  """Corrector: y^i = xhat^i + g[i] (xtilde - xhat^{j*}).

  Args:
    xhat: predicted blocks [..., k, d].
    layer_output: xtilde, the layer's output on the active block [..., d].
    g: corrector coefficients [k] or per-token [..., k].
    block: the active block index j* (a Python int: selection is static per layer).
  Returns:
    y [..., k, d], float32.
  """
  xhat = xhat.astype(jnp.float32)
  innovation = layer_output.astype(jnp.float32) - xhat[..., block, :]  # [..., d]
  return xhat + g.astype(jnp.float32)[..., :, None] * innovation[..., None, :]


def select_block(x, block: int):
  """x^{j*}: [..., k, d] -> [..., d]."""
  return x[..., block, :]


def replicate(x, k: int):
  """Recycled-AltUp's input: K copies of a d-wide embedding, [..., d] -> [..., k, d]."""
  return jnp.broadcast_to(x[..., None, :], x.shape[:-1] + (k, x.shape[-1]))


def split_blocks(x, k: int):
  """A K*d-wide embedding as K blocks, [..., k*d] -> [..., k, d]."""
  return x.reshape(x.shape[:-1] + (k, x.shape[-1] // k))


def reduce_blocks(x, reduction: str, projection=None):
  """K blocks back to one before the final norm, [..., k, d] -> [..., d].

  reduction: 'mean', 'sum', or 'projection' (a learned map `projection` [k, d, d_out]).
  """
  if reduction == 'mean':
    return jnp.mean(x, axis=-2)
  if reduction == 'sum':
    return jnp.sum(x, axis=-2)
  if reduction == 'projection':
    return jnp.einsum('...kd,kde->...e', x, projection.astype(x.dtype))
  raise ValueError(f'unknown reduction {reduction!r}; allowed: mean, sum, projection.')


def altup_step(x, p, g, block: int, layer_fn, layer_input: str = 'input'):
  """One full predict-compute-correct step; `layer_fn` maps [..., d] -> [..., d]."""
  xhat = predict(x, p)
  source = xhat if layer_input == 'predicted' else x
  out = layer_fn(select_block(source, block).astype(x.dtype))
  return correct(xhat, out, g, block).astype(x.dtype)

"""The Alternating Updates math as pure functions over a stacked block axis.

Notation follows arXiv 2301.13310 (Algorithm 1): a token is kept as K blocks x^1..x^K of width d,
stacked on the second-to-last axis, shape [..., k, d] (typically [b, l, k, d]). A layer L runs on one
block j* only:

  predict:  xhat^i = sum_j p[i, j] x^j                       (K*K scalars p)
  compute:  xtilde = L(x^{j*})                               (or L(xhat^{j*}), Gemma 3n's variant)
  correct:  y^i    = xhat^i + g[i] (xtilde - xhat^{j*})      (K scalars g)

Coefficients may carry leading batch axes (input-dependent coefficients): p [..., k, k], g [..., k].
The arithmetic is done in float32 whatever the activation dtype, then cast back.

Fused updates (deferred correction). Both steps are linear in the stream, so the correct of layer i
and the predict of layer i+1 compose into one map. Carry the stream as (z, g, delta) with the
correction not yet applied, y = z + g (x) delta (z [..., k, d], g [..., k], delta [..., d]); then

  predict:  xhat = P y = P z + (P g) (x) delta                (one pass over the stream)
  compute:  xtilde = L(xhat^{j*})  or  L(y^{j*}),  y^{j*} = z^{j*} + g[j*] delta   (d wide)
  correct:  (z, g, delta) <- (xhat, g', xtilde - xhat^{j*})   (nothing written over the stream)

Every layer then reads and writes the [..., k, d] stream once instead of twice; the correction of
the last layer is applied once at the end (`apply_correction`). The start of a stack is
(z, g, delta) = (x, 0, 0).
"""
import functools

import jax
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


def corrected_block(z, g, delta, block: int):
  """y^{j} of a stream with its correction deferred: z^{j} + g[j] delta, [..., d] (float32).

  z: the stacked stream [..., k, d], or its K blocks as a tuple of [..., d] arrays.
  """
  zj = z[block] if isinstance(z, tuple) else z[..., block, :]
  return zj.astype(jnp.float32) + g.astype(jnp.float32)[..., block, None] * delta


def predict_deferred(z, g, delta, p):
  """The predictor on y = z + g (x) delta without forming y: P z + (P g) (x) delta.

  Args:
    z: the stream [..., k, d] (activation dtype).
    g: the pending corrector coefficients [k] or [..., k].
    delta: the pending innovation [..., d] (float32).
    p: predictor coefficients [k, k] or [..., k, k].
  Returns:
    xhat [..., k, d], float32.
  """
  g = g.astype(jnp.float32)
  p = p.astype(jnp.float32)
  pg = jnp.sum(p * g[..., None, :], axis=-1)  # [.., k]
  # P z as a dot: written as a broadcast multiply-add, XLA:CPU builds the [..., k, k, d] product in
  # the backward pass (K=4, fwd + bwd of 4 layers' updates at 8 x 512 x 512: 630 ms vs 371 ms).
  return predict(z, p) + pg[..., :, None] * delta.astype(jnp.float32)[..., None, :]


def predict_deferred_blocks(zs, g, delta, p):
  """`predict_deferred` with the stream held as K separate blocks: a tuple of K [..., d] (float32).

  Each predicted block is a sum of K scaled blocks, which XLA fuses into one elementwise loop; with
  no stacked axis there is no K x K dot, and taking the active block is Python indexing, so the
  backward pass has no zero-filled gradient of a slice. Same function as `predict_deferred`.
  """
  g = g.astype(jnp.float32)
  p = p.astype(jnp.float32)
  pg = jnp.sum(p * g[..., None, :], axis=-1)  # [.., k]
  zs = [z.astype(jnp.float32) for z in zs]
  delta = delta.astype(jnp.float32)
  k = len(zs)
  return tuple(sum(p[..., i, j, None] * zs[j] for j in range(k)) + pg[..., i, None] * delta
               for i in range(k))


def _mix(m, z):
  """out[..., i, :] = sum_j m[i, j] z[..., j, :] for m [k_out, k], z [..., k, d] (float32).

  Written as K broadcast multiply-adds of z's blocks, not as a dot over the block axis: XLA then
  makes it one elementwise loop over the stream (each output element reads the K inputs of its
  token, which sit next to each other), where a dot first transposes the stream to put the block
  axis last and runs a matmul kernel with a contraction of K.
  """
  return sum(m[:, j][:, None] * z[..., j:j + 1, :] for j in range(m.shape[1]))


def _token_sum(a, b, spec):
  """sum over the leading (token) axes of einsum(spec) of a and b: K x K or K reductions.

  Per-token products first, then one reduction over the tokens (XLA lowers this as a batched
  matmul and a sum; a single einsum contracting the tokens and d is a dot over non-adjacent axes,
  which transposes both operands first).
  """
  out = jnp.einsum(spec, a, b)
  return jnp.sum(out, axis=tuple(range(out.ndim - len(spec.split('->')[1].lstrip('.')))))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def stacked_deferred_step(z, g, delta, p, block: int):
  """One layer's stream arithmetic, deferred correction, stacked stream, static coefficients.

  The same function as `corrected_block`, `predict_deferred` and taking the active block of its
  result, with a hand-written backward pass that reads and writes the stream once:

    y_active    = z^{j*} + g[j*] delta              (the corrected active block: the layer's input)
    xhat        = P z + (P g) (x) delta             (the predicted stream)
    xhat_active = xhat^{j*}

  Args:
    z: the stream [..., k, d] (activation dtype); g: the pending corrector coefficients [k];
    delta: the pending innovation [..., d] (float32); p: predictor coefficients [k, k];
    block: the active block j* (a Python int).
  Returns:
    (y_active [..., d], xhat [..., k, d], xhat_active [..., d]), float32.

  Autodiff of the plain formulas would take the gradient of each slice z^{j*}, xhat^{j*} as a
  zero-filled stream with one block written, and of P z as a dot over the block axis (transposes
  of the stream around a K-contraction matmul); on XLA:CPU those are most of the stream's cost.
  """
  return _stacked_forward(z, g, delta, p, block)


def _stacked_forward(z, g, delta, p, block):
  zf = z.astype(jnp.float32)
  g, p, delta = g.astype(jnp.float32), p.astype(jnp.float32), delta.astype(jnp.float32)
  pg = p @ g
  xhat = _mix(p, zf) + pg[:, None] * delta[..., None, :]
  return corrected_block(zf, g, delta, block), xhat, xhat[..., block, :]


def _stacked_fwd(z, g, delta, p, block):
  return _stacked_forward(z, g, delta, p, block), (z, g, delta, p)


def _stacked_bwd(block, residuals, cotangents):
  z, g0, delta0, p0 = residuals
  dy, dxhat, dxa = (c.astype(jnp.float32) for c in cotangents)
  zf = z.astype(jnp.float32)
  g, p, delta = g0.astype(jnp.float32), p0.astype(jnp.float32), delta0.astype(jnp.float32)
  k = p.shape[0]
  pg = p @ g
  onehot = (jnp.arange(k) == block).astype(jnp.float32)
  # xhat_active is row j* of xhat: its cotangent adds to dxhat^{j*} (written into the formulas
  # below instead of into a stream-sized array).
  dz = (_mix(p.T, dxhat) + p[block][:, None] * dxa[..., None, :] +
        onehot[:, None] * dy[..., None, :])
  ddelta = _mix(pg[None, :], dxhat)[..., 0, :] + pg[block] * dxa + g[block] * dy
  dpg = _token_sum(dxhat, delta, '...ie,...e->...i') + onehot * jnp.sum(dxa * delta)
  dp = (_token_sum(dxhat, zf, '...ie,...je->...ij') +
        onehot[:, None] * _token_sum(dxa, zf, '...e,...je->...j')[None, :] +
        dpg[:, None] * g[None, :])
  dg = p.T @ dpg + onehot * jnp.sum(dy * delta)
  return (dz.astype(z.dtype), dg.astype(g0.dtype), ddelta.astype(delta0.dtype),
          dp.astype(p0.dtype))


stacked_deferred_step.defvjp(_stacked_fwd, _stacked_bwd)


def apply_correction(z, g, delta):
  """y = z + g (x) delta: the deferred correction written into the stream, float32."""
  return z.astype(jnp.float32) + (g.astype(jnp.float32)[..., :, None] *
                                  delta.astype(jnp.float32)[..., None, :])


def rms_magnitude(x):
  """sqrt(mean(x^2)) over the last axis, keepdims, float32."""
  x = x.astype(jnp.float32)
  return jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True))


def match_magnitude(x, target, eps: float = 1e-12):
  """x rescaled to the RMS magnitude `target` [..., 1]: x * target / max(rms(x), eps)."""
  return x.astype(jnp.float32) * (target / jnp.maximum(rms_magnitude(x), eps))


def project_streams(e, projections):
  """Gemma 3n's stream initialisation, [..., d] -> [..., k, d] (float32).

  Block 0 is the embedding e; block i >= 1 is e @ W_i rescaled to e's RMS magnitude.
  projections: W [k-1, d, d].
  """
  e = e.astype(jnp.float32)
  projected = jnp.einsum('...d,kde->...ke', e, projections.astype(jnp.float32))
  projected = match_magnitude(projected, rms_magnitude(e)[..., None, :])
  return jnp.concatenate([e[..., None, :], projected], axis=-2)


def unproject_streams(x, projections):
  """Gemma 3n's reduction, [..., k, d] -> [..., d] (float32).

  Block i >= 1 goes through U_i and is rescaled to block 0's RMS magnitude; then the mean of all K.
  projections: U [k-1, d, d].
  """
  x = x.astype(jnp.float32)
  first = x[..., 0, :]
  rest = jnp.einsum('...kd,kde->...ke', x[..., 1:, :], projections.astype(jnp.float32))
  rest = match_magnitude(rest, rms_magnitude(first)[..., None, :])
  return jnp.mean(jnp.concatenate([first[..., None, :], rest], axis=-2), axis=-2)

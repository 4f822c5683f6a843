"""The AltUp math (altup_t5x.altup) against a loop-based NumPy re-implementation."""
import numpy as np
import pytest
import jax.numpy as jnp

from altup_t5x import altup


def np_predict(x, p):
  k = x.shape[-2]
  out = np.zeros_like(x)
  for i in range(k):
    for j in range(k):
      out[..., i, :] += p[..., i, j, None] * x[..., j, :] if p.ndim > 2 else p[i, j] * x[..., j, :]
  return out


def np_correct(xhat, layer_out, g, block):
  k = xhat.shape[-2]
  out = np.zeros_like(xhat)
  for i in range(k):
    gi = g[..., i, None] if g.ndim > 1 else g[i]
    out[..., i, :] = xhat[..., i, :] + gi * (layer_out - xhat[..., block, :])
  return out


def active_block(selection, layer, k):
  return layer % k if selection == 'alternating' else 0


@pytest.mark.parametrize('k', [1, 2, 3, 4])
@pytest.mark.parametrize('selection', ['alternating', 'same'])
@pytest.mark.parametrize('layer_input', ['input', 'predicted'])
def test_step_matches_numpy(k, selection, layer_input):
  rng = np.random.RandomState(k)
  b, l, d = 2, 3, 5
  x = rng.randn(b, l, k, d).astype(np.float32)
  w = rng.randn(d, d).astype(np.float32) / np.sqrt(d)
  layer = lambda h: np.tanh(h @ w) + h  # any nonlinear d -> d map
  for layer_index in range(3):  # several layers: the active block moves with 'alternating'
    p = rng.randn(k, k).astype(np.float32)
    g = rng.randn(k).astype(np.float32)
    j = active_block(selection, layer_index, k)
    xhat = np_predict(x.astype(np.float64), p)
    src = xhat if layer_input == 'predicted' else x
    expected = np_correct(xhat, layer(src[..., j, :].astype(np.float64)), g, j)

    got = altup.altup_step(jnp.asarray(x), jnp.asarray(p), jnp.asarray(g), j,
                           lambda h: jnp.tanh(h @ w) + h, layer_input)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-5, atol=2e-5)
    # The individual functions too.
    np.testing.assert_allclose(np.asarray(altup.predict(x, p)), xhat, rtol=1e-5, atol=1e-5)
    x = expected.astype(np.float32)


@pytest.mark.parametrize('k', [1, 2, 3, 4])
def test_per_token_coefficients(k):
  rng = np.random.RandomState(10 + k)
  x = rng.randn(2, 3, k, 4).astype(np.float32)
  p = rng.randn(2, 3, k, k).astype(np.float32)
  g = rng.randn(2, 3, k).astype(np.float32)
  out = rng.randn(2, 3, 4).astype(np.float32)
  xhat = np_predict(x, p)
  np.testing.assert_allclose(np.asarray(altup.predict(x, p)), xhat, rtol=1e-5, atol=1e-5)
  for j in range(k):
    np.testing.assert_allclose(np.asarray(altup.correct(xhat, out, g, j)),
                               np_correct(xhat, out, g, j), rtol=1e-5, atol=1e-5)


def test_identity_coefficients_give_the_same_update_to_every_block():
  rng = np.random.RandomState(0)
  x = rng.randn(2, 3, 3, 4).astype(np.float32)
  delta = rng.randn(2, 3, 4).astype(np.float32)
  y = altup.altup_step(x, jnp.eye(3), jnp.ones(3), 1, lambda h: h + delta)
  np.testing.assert_allclose(np.asarray(y), x + delta[..., None, :], rtol=1e-6, atol=1e-6)


def test_bfloat16_activations_keep_float32_arithmetic():
  x = jnp.ones((1, 2, 2, 4), jnp.bfloat16)
  y = altup.altup_step(x, jnp.eye(2), jnp.ones(2), 0, lambda h: h * 2)
  assert y.dtype == jnp.bfloat16
  assert altup.predict(x, jnp.eye(2)).dtype == jnp.float32


def test_blocks_in_and_out():
  rng = np.random.RandomState(1)
  e = rng.randn(2, 3, 8).astype(np.float32)
  blocks = np.asarray(altup.split_blocks(e, 4))
  assert blocks.shape == (2, 3, 4, 2)
  np.testing.assert_array_equal(blocks[:, :, 2], e[..., 4:6])
  rep = np.asarray(altup.replicate(e, 3))
  assert rep.shape == (2, 3, 3, 8)
  for i in range(3):
    np.testing.assert_array_equal(rep[:, :, i], e)
  x = rng.randn(2, 3, 4, 5).astype(np.float32)
  np.testing.assert_allclose(np.asarray(altup.reduce_blocks(x, 'mean')), x.mean(2), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(altup.reduce_blocks(x, 'sum')), x.sum(2), rtol=1e-5)
  w = rng.randn(4, 5, 6).astype(np.float32)
  ref = sum(x[:, :, i] @ w[i] for i in range(4))
  np.testing.assert_allclose(np.asarray(altup.reduce_blocks(x, 'projection', w)), ref,
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='reduction'):
    altup.reduce_blocks(x, 'max')

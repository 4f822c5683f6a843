"""Sequence-AltUp's route for unpacked rows (anchors as a strided slice, outputs spread back by a
repeat) computes exactly what the general route (gathered anchor slots) computes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altup_t5x import sequence

B, L, D = 3, 11, 5


def _layer(w, length):
  """A layer that mixes the valid anchors and depends on their row positions, as attention with a
  relative-position bias does: out_a = tanh(h_a w) + mean over valid anchors b of h_b * pos_a."""
  def fn(h, slot_positions, slot_valid):
    if isinstance(slot_positions, slice):
      slot_positions = jnp.broadcast_to(jnp.arange(length)[slot_positions], slot_valid.shape)
    weights = slot_valid.astype(h.dtype)
    pooled = jnp.sum(h * weights[..., None], 1, keepdims=True) / jnp.maximum(
        jnp.sum(weights, 1, keepdims=True)[..., None], 1.0)
    return jnp.tanh(h @ w) + pooled * (1.0 + slot_positions[..., None])
  return fn


@pytest.mark.parametrize('stride', [2, 3, 4])
@pytest.mark.parametrize('mode,causal', [('predict_correct', False), ('skip', False),
                                         ('predict_correct', True)])
def test_grid_route_equals_general_route(stride, mode, causal):
  rng = np.random.RandomState(stride)
  x = jnp.asarray(rng.normal(0, 1, (B, L, D)), jnp.float32)
  w = jnp.asarray(rng.normal(0, 0.5, (D, D)), jnp.float32)
  lengths = np.array([L, 7, 2])  # a full row, a padded one, one shorter than some offsets
  segment_ids = jnp.asarray((np.arange(L)[None] < lengths[:, None]).astype(np.int32))
  positions = jnp.broadcast_to(jnp.arange(L), (B, L))
  for offset in range(stride):
    args = (_layer(w, L), stride, offset, 0.7, 1.3, mode, causal)
    general = sequence.sequence_altup_step(x, *args, segment_ids=segment_ids, positions=positions)
    grid = sequence.sequence_altup_step(x, *args, segment_ids=segment_ids, grid=True)
    np.testing.assert_allclose(np.asarray(grid), np.asarray(general), rtol=1e-6, atol=1e-6,
                               err_msg=f'offset {offset}')
    # And their gradients.
    loss = lambda x, **kw: jnp.sum(jnp.sin(sequence.sequence_altup_step(x, *args, **kw)))
    g_general = jax.grad(loss)(x, segment_ids=segment_ids, positions=positions)
    g_grid = jax.grad(loss)(x, segment_ids=segment_ids, grid=True)
    np.testing.assert_allclose(np.asarray(g_grid), np.asarray(g_general), rtol=1e-5, atol=1e-6)

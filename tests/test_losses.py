"""The runner's losses against NumPy references (T5X's definitions)."""
import numpy as np
import pytest
import jax.numpy as jnp

from altup_t5x import losses


def np_cross_entropy(logits, targets, label_smoothing, z_loss):
  logits = logits.astype(np.float64)
  v = logits.shape[-1]
  lse = np.log(np.exp(logits).sum(-1))
  logp = logits - lse[..., None]
  on, off = 1 - label_smoothing, label_smoothing / (v - 1)
  q = np.full(logits.shape, off)
  np.put_along_axis(q, targets[..., None], on, axis=-1)
  entropy = -(on * np.log(on) + (v - 1) * off * np.log(off + 1e-20)) if label_smoothing else 0.0
  loss = -(q * logp).sum(-1) - entropy
  z = z_loss * lse ** 2
  return loss + z, z


@pytest.mark.parametrize('label_smoothing,z_loss', [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-4),
                                                    (0.2, 1e-2)])
def test_cross_entropy_matches_numpy(label_smoothing, z_loss):
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 5, 7).astype(np.float32) * 3
  targets = rng.randint(0, 7, (2, 5))
  got_loss, got_z = losses.cross_entropy_with_logits(jnp.asarray(logits), jnp.asarray(targets),
                                                     label_smoothing=label_smoothing, z_loss=z_loss)
  want_loss, want_z = np_cross_entropy(logits, targets, label_smoothing, z_loss)
  np.testing.assert_allclose(np.asarray(got_loss), want_loss, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got_z), want_z, rtol=1e-5, atol=1e-7)
  if label_smoothing:  # a model that predicts the smoothed target exactly scores 0 (KL)
    v, on = 7, 1 - label_smoothing
    q = np.full((1, 1, v), label_smoothing / (v - 1))
    q[0, 0, 3] = on
    perfect, _ = losses.cross_entropy_with_logits(jnp.asarray(np.log(q), jnp.float32),
                                                  jnp.asarray([[3]]), label_smoothing=label_smoothing)
    assert abs(float(perfect[0, 0])) < 1e-5


def test_weighted_loss_and_normalizing_factors():
  rng = np.random.RandomState(1)
  logits = rng.randn(2, 4, 6).astype(np.float32)
  targets = np.array([[3, 1, 2, 0], [5, 4, 0, 0]])
  weights = (targets > 0).astype(np.float64)
  token, _ = np_cross_entropy(logits, targets, 0.0, 1e-4)
  total = (token * weights).sum()
  for factor, expected in [(None, total), (losses.NUM_REAL_TARGET_TOKENS, total / 5),
                           (losses.NUM_TOTAL_TARGET_TOKENS, total / 8), (2.5, total / 2.5),
                           (losses.AVERAGE_PER_SEQUENCE,
                            (token[0] * weights[0]).sum() / 3 + (token[1] * weights[1]).sum() / 2)]:
    loss, metrics = losses.weighted_loss_and_metrics(
        jnp.asarray(logits), jnp.asarray(targets), None, z_loss=1e-4,
        loss_normalizing_factor=factor)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  correct = (logits.argmax(-1) == targets) * weights
  assert float(metrics['accuracy_sum']) == correct.sum()
  assert float(metrics['weight_sum']) == 5 and float(metrics['num_sequences']) == 2


def test_average_per_sequence_with_packing():
  weights = jnp.asarray([[1., 1., 1., 1., 1., 0.]])
  segments = jnp.asarray([[1, 1, 2, 2, 2, 0]])
  np.testing.assert_allclose(np.asarray(losses.sequence_weights(weights, segments)),
                             [[1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3, 0]], rtol=1e-6)


def test_bad_normalizing_factor_is_named():
  with pytest.raises(ValueError, match="loss_normalizing_factor='per_token'"):
    losses.check_loss_normalizing_factor('per_token')

"""Token-level losses and metrics for the encoder-decoder, with T5X's semantics.

The cross-entropy follows T5X's `EncoderDecoderModel.loss_fn`: optional label smoothing (with the
entropy of the smoothed target subtracted, so a perfect model scores 0), an auxiliary z-loss
`z_loss * logsumexp(logits)^2` that keeps the softmax normaliser near 1, per-token loss weights and
a loss normalizing factor (None = plain sum over tokens, as in T5X).
"""
from typing import Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

# Special values of `loss_normalizing_factor`, named as in T5X.
NUM_REAL_TARGET_TOKENS = 'NUM_REAL_TARGET_TOKENS'    # sum of loss weights in the batch
NUM_TOTAL_TARGET_TOKENS = 'NUM_TOTAL_TARGET_TOKENS'  # batch * target length
AVERAGE_PER_SEQUENCE = 'AVERAGE_PER_SEQUENCE'        # each sequence's mean token loss, summed
NORMALIZING_FACTORS = (NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE)

LossNormalizingFactor = Optional[Union[float, int, str]]


def check_loss_normalizing_factor(factor: LossNormalizingFactor) -> None:
  if factor is None or (isinstance(factor, (int, float)) and not isinstance(factor, bool)
                        and factor > 0):
    return
  if isinstance(factor, str) and factor in NORMALIZING_FACTORS:
    return
  raise ValueError(f'loss_normalizing_factor={factor!r} is not supported; allowed: None (sum over '
                   f'tokens), a positive number, or one of {NORMALIZING_FACTORS}.')


def cross_entropy_with_logits(logits: jnp.ndarray, targets: jnp.ndarray, *,
                              label_smoothing: float = 0.0,
                              z_loss: float = 0.0) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Per-token cross-entropy (plus z-loss) of integer targets.

  Args:
    logits: [b, l, v] unnormalised scores (any float dtype; computed in float32).
    targets: [b, l] int token ids.
    label_smoothing: mass moved uniformly from the target to the other v-1 ids.
    z_loss: coefficient of `logsumexp(logits)^2`.

  Returns:
    (loss, z) each [b, l]: loss includes z.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  lse = jax.nn.logsumexp(logits, axis=-1)                 # [b, l, v] -> [b, l]
  log_probs = logits - lse[..., None]
  target_logp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    on = 1.0 - label_smoothing
    off = label_smoothing / (vocab - 1)
    # Soft target: `on` at the target id, `off` elsewhere.  -sum(q log p), written without a
    # one-hot [b, l, v] tensor: off * sum(log p) + (on - off) * log p[target].
    loss = -(off * jnp.sum(log_probs, axis=-1) + (on - off) * target_logp)
    # The entropy of the soft target, so that loss = KL(q || p) >= 0.
    entropy = -(on * np.log(on) + (vocab - 1) * off * np.log(off + 1e-20))
    loss = loss - entropy
  else:
    loss = -target_logp
  z = z_loss * jnp.square(lse)
  return loss + z, z


def normalize(total: jnp.ndarray, weights: jnp.ndarray,
              factor: LossNormalizingFactor) -> jnp.ndarray:
  """Divides a summed loss by the loss normalizing factor."""
  if factor is None:
    return total
  if factor == NUM_REAL_TARGET_TOKENS:
    return total / jnp.maximum(jnp.sum(weights), 1e-8)
  if factor == NUM_TOTAL_TARGET_TOKENS:
    return total / weights.size
  if factor == AVERAGE_PER_SEQUENCE:
    raise ValueError('AVERAGE_PER_SEQUENCE is applied to the weights; see sequence_weights().')
  return total / factor


def sequence_weights(weights: jnp.ndarray, segment_ids: Optional[jnp.ndarray]) -> jnp.ndarray:
  """Per-token weights 1/len(sequence) (T5X's AVERAGE_PER_SEQUENCE), packing-aware. [b, l]."""
  if segment_ids is None:
    n = jnp.sum(weights, axis=-1, keepdims=True)
    return weights / jnp.maximum(n, 1e-8)
  same = segment_ids[:, :, None] == segment_ids[:, None, :]       # [b, l, l]
  n = jnp.einsum('bqt,bt->bq', same.astype(weights.dtype), weights)
  return weights / jnp.maximum(n, 1e-8)


def weighted_loss_and_metrics(
    logits: jnp.ndarray, targets: jnp.ndarray, weights: Optional[jnp.ndarray], *,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    loss_normalizing_factor: LossNormalizingFactor = None,
    segment_ids: Optional[jnp.ndarray] = None) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """The training loss and its metrics for one batch.

  Metrics are returned as sums (plus the counts to divide them by) so that batches, hosts and
  devices aggregate exactly: see `summarize_metrics`.

  Returns:
    loss: scalar, normalised by `loss_normalizing_factor`.
    metrics: dict of scalars: loss, z_loss, cross_ent_loss_sum, accuracy_sum, weight_sum,
      num_tokens, num_sequences.
  """
  if weights is None:
    weights = (targets > 0).astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  token_loss, token_z = cross_entropy_with_logits(
      logits, targets, label_smoothing=label_smoothing, z_loss=z_loss)
  if loss_normalizing_factor == AVERAGE_PER_SEQUENCE:
    loss_weights = sequence_weights(weights, segment_ids)
    loss = jnp.sum(token_loss * loss_weights)
  else:
    loss = normalize(jnp.sum(token_loss * weights), weights, loss_normalizing_factor)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  if segment_ids is not None:
    num_sequences = jnp.sum(jnp.max(segment_ids, axis=-1))
  else:
    num_sequences = jnp.sum(jnp.any(weights > 0, axis=-1))
  metrics = {
      'loss': loss,
      'z_loss_sum': jnp.sum(token_z * weights),
      'cross_ent_loss_sum': jnp.sum((token_loss - token_z) * weights),
      'accuracy_sum': jnp.sum(correct * weights),
      'weight_sum': jnp.sum(weights),
      'num_tokens': jnp.asarray(targets.size, jnp.float32),
      'num_sequences': num_sequences.astype(jnp.float32),
  }
  return loss, metrics


def summarize_metrics(metric_list) -> Dict[str, float]:
  """Aggregates per-batch metric dicts from `weighted_loss_and_metrics` into readable numbers.

  loss is averaged over batches; cross_ent_loss / z_loss / accuracy are per real target token
  (exact over the whole set, not an average of batch averages).
  """
  metric_list = [jax.tree_util.tree_map(float, jax.device_get(m)) for m in metric_list]
  if not metric_list:
    return {}
  total = {k: sum(m[k] for m in metric_list) for k in metric_list[0]}
  w = max(total['weight_sum'], 1e-8)
  return {
      'loss': total['loss'] / len(metric_list),
      'cross_ent_loss': total['cross_ent_loss_sum'] / w,
      'z_loss': total['z_loss_sum'] / w,
      'accuracy': total['accuracy_sum'] / w,
      'nonpadding_fraction': total['weight_sum'] / max(total['num_tokens'], 1e-8),
      'num_target_tokens': total['weight_sum'],
      'num_sequences': total['num_sequences'],
      **({'moe_aux_loss': total['moe_aux_loss'] / len(metric_list)}
         if 'moe_aux_loss' in total else {}),
  }

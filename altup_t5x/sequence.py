"""Sequence-AltUp: the AltUp idea applied along the sequence axis (arXiv 2301.13310, section 5).

A layer L is computed only on the anchor positions a = o, o+s, o+2s, ... (stride s, offset o that
alternates with the layer index). Every other token t is predicted from itself and corrected with the
innovation of its anchor a(t):

  anchors:  y_a = L(x_anchors)_a
  skipped:  y_t = alpha * x_t + beta * (L(x_anchors)_{a(t)} - alpha * x_{a(t)})

with learned scalars alpha, beta (initialised to 1, so a skipped token at first receives its
anchor's residual update). The exact formula of the paper is not public; this is the documented
choice of this project. 'skip' mode ("stride-and-skip", the naive comparison) leaves skipped tokens
unchanged: y_t = x_t.

a(t): the anchor of t's stride window, [a, a+s). Bidirectional stacks give the positions before the
first anchor (t < o) to the first anchor; a causal stack may only use anchors at or before t, so
those positions are left unchanged there. Sequence-AltUp is used in the encoder only: in a cached
decoder each layer's KV cache would hold only that layer's anchors and a skipped token's output
would depend on a future anchor's computation in half the windows, so decoding one token at a time
cannot reproduce the teacher-forced pass.

Shapes: x [b, l, d]; the layer sees [b, l_anchor, d] with l_anchor = ceil((l - o) / s).
"""
import numpy as np
import jax.numpy as jnp


def anchor_positions(length: int, stride: int, offset: int) -> np.ndarray:
  """The computed positions (static)."""
  if not 0 <= offset < stride:
    raise ValueError(f'offset {offset} must be in [0, stride={stride}).')
  return np.arange(offset, length, stride)


def anchor_index(length: int, stride: int, offset: int, causal: bool):
  """For each position t, the index (into anchor_positions) of its anchor, and whether it has one."""
  t = np.arange(length)
  index = np.floor_divide(t - offset, stride)  # negative before the first anchor
  num_anchors = len(anchor_positions(length, stride, offset))
  has_anchor = index >= 0 if causal else np.ones(length, bool)
  return np.clip(index, 0, num_anchors - 1), has_anchor


def _expand(anchor_values, length: int, stride: int, offset: int):
  """Per-anchor values [b, n, ...] -> per-position values [b, length, ...]: position t gets its
  window's anchor (t < offset: the first). Repeats and slices, so the gradient is sums, not the
  scatter-adds a gather would need."""
  parts = [jnp.repeat(anchor_values, stride, axis=1)]
  if offset:
    parts.insert(0, jnp.repeat(anchor_values[:, :1], offset, axis=1))
  return jnp.concatenate(parts, axis=1)[:, :length]


def sequence_altup_step(x, layer_fn, stride: int, offset: int, alpha=1.0, beta=1.0,
                        mode: str = 'predict_correct', causal: bool = False):
  """One layer under Sequence-AltUp.

  Args:
    x: [b, l, d] inputs.
    layer_fn: maps anchor inputs [b, l_anchor, d] and the anchors' static index (a slice
      `offset::stride`, usable on masks and biases) to the layer outputs [b, l_anchor, d].
    stride, offset: the anchors are positions offset, offset+stride, ...
    alpha, beta: the learned scalars (predict, correct).
    mode: 'predict_correct' or 'skip' (stride-and-skip).
    causal: only anchors at or before a token may be used.
  Returns: [b, l, d].
  """
  length = x.shape[1]
  positions = anchor_positions(length, stride, offset)
  if len(positions) == 0:
    return x
  anchors = slice(offset, None, stride)
  x_anchors = x[:, anchors]  # [b, l, d] -> [b, l_anchor, d]
  out = layer_fn(x_anchors, anchors)
  _, has_anchor = anchor_index(length, stride, offset, causal)
  is_anchor = np.zeros(length, bool)
  is_anchor[positions] = True
  on_anchor = _expand(out, length, stride, offset)  # every token's anchor output, [b, l, d]
  if mode == 'skip':
    skipped = x
  else:
    innovation = on_anchor - alpha * _expand(x_anchors, length, stride, offset)
    skipped = alpha * x + beta * innovation
    skipped = jnp.where(has_anchor[None, :, None], skipped, x)
  return jnp.where(is_anchor[None, :, None], on_anchor, skipped).astype(x.dtype)

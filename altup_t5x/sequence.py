"""Sequence-AltUp: the AltUp idea applied along the sequence axis (arXiv 2301.13310, section 5).

A layer L is computed only on the anchor positions of each segment (example) of a row: the tokens
whose position inside their segment is p = o, o+s, o+2s, ... (stride s, offset o that alternates
with the layer index). Every other token t is predicted from itself and corrected with the
innovation of its anchor a(t):

  anchors:  y_a = L(x_anchors)_a
  skipped:  y_t = alpha * x_t + beta * (L(x_anchors)_{a(t)} - alpha * x_{a(t)})

with learned scalars alpha, beta (initialised to 1, so a skipped token at first receives its
anchor's residual update). The exact formula of the paper is not public; this is the documented
choice of this project. 'skip' mode ("stride-and-skip", the naive comparison) leaves skipped tokens
unchanged: y_t = x_t.

a(t): the anchor of t's stride window inside its own segment. Bidirectional stacks give the
positions before the segment's first anchor (p < o) to that first anchor; a causal stack may only
use anchors at or before t, so those positions are left unchanged there. A segment with no anchor
(length <= o) and padding (segment id 0) are left unchanged by the layer. Sequence-AltUp is used in
the encoder only: in a cached decoder each layer's KV cache would hold only that layer's anchors and
a skipped token's output would depend on a future anchor's computation in half the windows, so
decoding one token at a time cannot reproduce the teacher-forced pass.

Packed rows (T5X's feature converter packs several examples into one row, with segment ids and
positions that restart at 0 in each segment): the stride grid follows each segment's positions, an
anchor is never taken from another segment, and the attention among anchors is masked to the
segment, so a packed row computes exactly what each example computes alone.

Design (static shapes, ~1/s of the positions): per row, the anchors are gathered into `c` slots
(in row order) with a static capacity

  c = min(l, floor((l + k * (s - 1 - o)) / s)),   k = the most segments a row may hold,

which bounds sum_i ceil((L_i - o) / s) over any k segments of total length <= l. An unpacked row
(k = 1) gets c = ceil((l - o) / s), exactly the anchors of the strided grid; a packed row pays at
most k * (s - 1 - o) / s extra slots (k = `AltUpConfig.sequence_altup_max_segments`). The layer runs
on [b, c, d] with the anchors' attention mask and relative-position bias gathered from the row's
(the bias uses the tokens' row positions, as the dense layer does). Unused slots are masked out and
never read back. Should a row hold more anchors than c (more than k short segments), the anchors
beyond slot c are dropped like tokens over an MoE expert's capacity: the tokens of their windows are
left unchanged by that layer; no information crosses segments either way.

Unpacked rows (`grid=True`: every row is one example starting at position 0, padding at the end)
take a cheaper route to the same function: the anchors are the strided slice x[:, o::s], their
mask and bias the same slice of the row's, and each token reads its anchor's output through a
repeat along the length (no gather, no scatter in the backward pass).

Shapes: x [b, l, d]; the layer sees [b, c, d].
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def segment_positions(segment_ids):
  """[b, l] segment ids -> [b, l] each token's position inside its run of equal ids (0, 1, ...),
  as T5X's feature converter makes `encoder_positions`."""
  length = segment_ids.shape[1]
  t = jnp.arange(length)[None, :]
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  return t - jax.lax.cummax(jnp.where(starts, t, 0), axis=1)


def anchor_capacity(length: int, stride: int, offset: int, max_segments: int = 1) -> int:
  """The static number of anchor slots of a row (see the module docstring)."""
  if not 0 <= offset < stride:
    raise ValueError(f'offset {offset} must be in [0, stride={stride}).')
  return max(0, min(length, (length + max_segments * (stride - 1 - offset)) // stride))


class AnchorPlan(NamedTuple):
  slot_positions: jnp.ndarray  # [b, c] row position of each slot's anchor (0 for unused slots)
  slot_valid: jnp.ndarray  # [b, c] bool: the slot holds an anchor
  token_slot: jnp.ndarray  # [b, l] the slot of each token's anchor (meaningful where has_anchor)
  is_anchor: jnp.ndarray  # [b, l] bool
  has_anchor: jnp.ndarray  # [b, l] bool: the token has an anchor in its own segment


def plan_anchors(segment_ids, positions, stride: int, offset: int, capacity: int,
                 causal: bool = False) -> AnchorPlan:
  """The anchors of each row: segment_ids [b, l] (0 = padding), positions [b, l] (inside the
  segment)."""
  length = segment_ids.shape[1]
  t = jnp.arange(length)[None, :]
  valid = segment_ids != 0
  on_grid = (positions >= offset) & ((positions - offset) % stride == 0)
  is_anchor = valid & on_grid
  rank = jnp.cumsum(is_anchor, axis=1) - 1  # slot of each anchor, in row order
  is_anchor = is_anchor & (rank < capacity)
  # Row position of each token's anchor: the start of its window, or for p < o the first anchor.
  anchor = jnp.where(positions >= offset, t - (positions - offset) % stride,
                     t - positions + offset)
  inside = anchor < length
  anchor = jnp.clip(anchor, 0, length - 1)
  take = lambda a: jnp.take_along_axis(a, anchor, axis=1)
  has_anchor = valid & inside & (take(segment_ids) == segment_ids) & take(is_anchor)
  if causal:
    has_anchor = has_anchor & (positions >= offset)
  token_slot = jnp.clip(take(rank), 0, max(capacity - 1, 0))
  rows = jnp.arange(segment_ids.shape[0])[:, None]
  slot_positions = jnp.zeros((segment_ids.shape[0], capacity), jnp.int32).at[
      rows, jnp.where(is_anchor, rank, capacity)].set(
          jnp.broadcast_to(t, segment_ids.shape).astype(jnp.int32), mode='drop')
  slot_valid = jnp.arange(capacity)[None, :] < jnp.sum(is_anchor, axis=1, keepdims=True)
  return AnchorPlan(slot_positions, slot_valid, token_slot, is_anchor, has_anchor)


def sequence_altup_step(x, layer_fn, stride: int, offset: int, alpha=1.0, beta=1.0,
                        mode: str = 'predict_correct', causal: bool = False, segment_ids=None,
                        positions=None, max_segments: int = 1, grid: bool = False):
  """One layer under Sequence-AltUp.

  Args:
    x: [b, l, d] inputs.
    layer_fn: maps anchor inputs [b, c, d], the anchors' row positions [b, c] (int, to gather masks
      and biases) and the slots' validity [b, c] (bool) to the layer outputs [b, c, d]. Invalid
      slots must not influence valid ones (mask them as keys).
    stride, offset: the anchors are the tokens at segment positions offset, offset+stride, ...
    alpha, beta: the learned scalars (predict, correct).
    mode: 'predict_correct' or 'skip' (stride-and-skip).
    causal: only anchors at or before a token may be used.
    segment_ids: [b, l] int, 0 = padding; None: every row is one segment.
    positions: [b, l] positions inside the segments; None: derived from segment_ids (or 0..l-1).
    max_segments: the most segments a row holds (sets the static anchor capacity).
    grid: the rows are unpacked (positions 0..l-1; `positions` and `max_segments` unused): the
      anchors are the slice x[:, offset::stride] and layer_fn receives that `slice` in place of
      the slots' row positions.
  Returns: [b, l, d].
  """
  b, length = x.shape[:2]
  if grid:
    return _grid_step(x, layer_fn, stride, offset, alpha, beta, mode, causal, segment_ids)
  if segment_ids is None:
    segment_ids = jnp.ones((b, length), jnp.int32)
  if positions is None:
    positions = segment_positions(segment_ids)
  capacity = anchor_capacity(length, stride, offset, max_segments)
  if capacity == 0:
    return x
  plan = plan_anchors(segment_ids, positions, stride, offset, capacity, causal)
  x_anchors = jnp.take_along_axis(x, plan.slot_positions[..., None], axis=1)  # [b, c, d]
  out = layer_fn(x_anchors, plan.slot_positions, plan.slot_valid)
  token_slot = plan.token_slot[..., None]
  on_anchor = jnp.take_along_axis(out, token_slot, axis=1)  # every token's anchor output, [b, l, d]
  if mode == 'skip':
    skipped = x
  else:
    innovation = on_anchor - alpha * jnp.take_along_axis(x_anchors, token_slot, axis=1)
    skipped = jnp.where(plan.has_anchor[..., None], alpha * x + beta * innovation, x)
  return jnp.where(plan.is_anchor[..., None], on_anchor, skipped).astype(x.dtype)


def _spread(a, length: int, stride: int, offset: int):
  """[b, c, ...] values of the anchors o, o+s, ... -> [b, l, ...] each token's anchor's value
  (tokens before the first anchor take the first one's), by a repeat: no gather."""
  rep = jnp.repeat(a, stride, axis=1)[:, :length - offset]
  head = jnp.broadcast_to(a[:, :1], (a.shape[0], offset) + a.shape[2:])
  return jnp.concatenate([head, rep], axis=1)


def _grid_step(x, layer_fn, stride, offset, alpha, beta, mode, causal, segment_ids):
  """sequence_altup_step for unpacked rows: the same function by slices and repeats."""
  b, length = x.shape[:2]
  if offset >= length:
    return x
  valid = (jnp.ones((b, length), bool) if segment_ids is None else segment_ids != 0)
  anchors = slice(offset, None, stride)
  x_anchors = x[:, anchors]  # [b, c, d]
  slot_valid = valid[:, anchors]
  out = layer_fn(x_anchors, anchors, slot_valid)
  t = np.arange(length)
  is_anchor = valid & jnp.asarray((t >= offset) & ((t - offset) % stride == 0))[None]
  on_anchor = _spread(out, length, stride, offset)
  if mode == 'skip':
    skipped = x
  else:
    has_anchor = valid & _spread(slot_valid, length, stride, offset)
    if causal:
      has_anchor = has_anchor & jnp.asarray(t >= offset)[None]
    innovation = on_anchor - alpha * _spread(x_anchors, length, stride, offset)
    skipped = jnp.where(has_anchor[..., None], alpha * x + beta * innovation, x)
  return jnp.where(is_anchor[..., None], on_anchor, skipped).astype(x.dtype)

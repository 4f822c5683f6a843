"""Autoregressive decoding with a key/value cache: greedy search and beam search.

Both take a `tokens_to_logits(token_ids [n, 1], cache, step) -> (logits [n, v], cache)` function
(the model wraps `Transformer.decode(..., decode=True)`), so they do not depend on the network.
Cache leaves are batch-first (`n = batch * beams`) except those named `cache_index`, as T5X
requires of a network's cache; beam search reorders the batch axis when beams are re-ranked.

Conventions (shared with `EncoderDecoderModel.predict_batch_with_aux`):
  * decoding starts from `bos_id` (0, T5's pad id, the first decoder input);
  * a sequence ends at `eos_id` (kept in the output) or at `max_decode_len`; positions after
    the end are 0;
  * a score is the sum of the token log-probabilities, up to and including EOS, divided by the
    GNMT length penalty `((5 + length) / 6) ** alpha` (alpha=0: plain log-likelihood);
  * beam search returns the `beam_size` best finished sequences, best first. A sequence that
    reaches `max_decode_len` without EOS counts as finished.
"""
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
from jax import lax

PyTree = Any
TokensToLogits = Callable[[jnp.ndarray, PyTree, jnp.ndarray], Tuple[jnp.ndarray, PyTree]]

# Below any real log-probability sum, far above -inf so arithmetic stays finite.
_DEAD = -1.0e9
_EMPTY = -1.0e10


def length_penalty(length, alpha: float):
  """GNMT length penalty ((5 + length) / 6) ** alpha."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def expand_beams(x: jnp.ndarray, beam_size: int) -> jnp.ndarray:
  """[b, ...] -> [b * beam_size, ...], each row repeated beam_size times (batch-major)."""
  return jnp.repeat(x, beam_size, axis=0)


def _is_cache_index(path) -> bool:
  last = path[-1]
  name = getattr(last, 'key', getattr(last, 'name', None))
  return name == 'cache_index'


def gather_cache_beams(cache: PyTree, beam_indices: jnp.ndarray, cache_offset: int = 0) -> PyTree:
  """Reorders the batch axis of every cache leaf (except `cache_index`) by beam.

  Args:
    cache: leaves [b * k, ...], or [layers, b * k, ...] with cache_offset=1 (scanned layers, as
      T5X's `cache_offset`).
    beam_indices: [b, k] int, the source beam in 0..k-1 of each new beam.
    cache_offset: the position of the batch axis.
  """
  b, k = beam_indices.shape

  def gather(path, x):
    if _is_cache_index(path) or x.ndim <= cache_offset:
      return x
    lead = x.shape[:cache_offset]
    x = x.reshape(lead + (b, k) + x.shape[cache_offset + 1:])
    idx = beam_indices.reshape((1,) * cache_offset + (b, k) + (1,) * (x.ndim - 2 - cache_offset))
    x = jnp.take_along_axis(x, idx, axis=cache_offset + 1)
    return x.reshape(lead + (b * k,) + x.shape[cache_offset + 2:])

  return jax.tree_util.tree_map_with_path(gather, cache)


def _gather_rows(x: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
  """x [b, m, ...], idx [b, j] -> [b, j, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def greedy_search(cache: PyTree, tokens_to_logits: TokensToLogits, *, batch_size: int,
                  max_decode_len: int, eos_id: int, bos_id: int = 0
                  ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy decoding.

  Returns:
    sequences [b, max_decode_len] int32 and their log-likelihoods [b] float32.
  """
  b, length = batch_size, max_decode_len

  def cond(state):
    i, _, _, done, _, _ = state
    return (i < length) & ~jnp.all(done)

  def body(state):
    i, seqs, last, done, score, cache = state
    logits, cache = tokens_to_logits(last[:, None], cache, i)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)     # [b, v]
    token = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    token_logp = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
    token = jnp.where(done, 0, token)
    score = score + jnp.where(done, 0.0, token_logp)
    seqs = lax.dynamic_update_slice(seqs, token[:, None], (0, i))
    done = done | (token == eos_id)
    return i + 1, seqs, token, done, score, cache

  state = (jnp.array(0, jnp.int32), jnp.zeros((b, length), jnp.int32),
           jnp.full((b,), bos_id, jnp.int32), jnp.zeros((b,), bool), jnp.zeros((b,), jnp.float32),
           cache)
  _, seqs, _, _, score, _ = lax.while_loop(cond, body, state)
  return seqs, score


def beam_search(cache: PyTree, tokens_to_logits: TokensToLogits, *, batch_size: int,
                beam_size: int, max_decode_len: int, eos_id: int, alpha: float = 0.6,
                bos_id: int = 0, cache_offset: int = 0) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Beam search.

  Args:
    cache: the decoder cache for `batch_size * beam_size` rows (batch-major, see expand_beams).
    tokens_to_logits: see module docstring.
    batch_size, beam_size, max_decode_len: sizes b, k, L.
    eos_id: end-of-sequence id.
    alpha: length penalty exponent.
    bos_id: the first decoder input.
    cache_offset: position of the cache's batch axis (1 with scanned layers).

  Returns:
    sequences [b, k, L] int32 and scores [b, k] float32, best first.
  """
  b, k, length = batch_size, beam_size, max_decode_len

  def cond(state):
    i, _, alive_logp, _, fin_scores, _ = state
    # The best an alive beam can still reach (log-probs only fall; the penalty is largest at L)
    # against the worst kept finished sequence.
    best_alive = jnp.max(alive_logp, axis=-1) / length_penalty(length, alpha)
    worst_finished = jnp.min(fin_scores, axis=-1)
    return (i < length) & ~jnp.all(best_alive < worst_finished)

  def body(state):
    i, alive_seqs, alive_logp, fin_seqs, fin_scores, cache = state
    last = jnp.where(i == 0, bos_id,
                     lax.dynamic_index_in_dim(alive_seqs, jnp.maximum(i - 1, 0), axis=2,
                                              keepdims=False))        # [b, k]
    logits, cache = tokens_to_logits(last.reshape(b * k, 1), cache, i)
    vocab = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
    candidates = (alive_logp[:, :, None] + logp).reshape(b, k * vocab)
    # 2k candidates always leave k that do not end here.
    top_logp, top_idx = lax.top_k(candidates, min(2 * k, k * vocab))   # [b, 2k]
    source_beam = top_idx // vocab
    token = (top_idx % vocab).astype(jnp.int32)
    top_seqs = _gather_rows(alive_seqs, source_beam)                    # [b, 2k, L]
    top_seqs = jnp.where(jnp.arange(length) == i, token[:, :, None], top_seqs)
    ends = (token == eos_id) | (i == length - 1)

    alive_logp, keep = lax.top_k(jnp.where(ends, _DEAD, top_logp), k)  # [b, k]
    alive_seqs = _gather_rows(top_seqs, keep)
    cache = gather_cache_beams(cache, _gather_rows(source_beam, keep), cache_offset)

    new_scores = jnp.where(ends, top_logp / length_penalty(i + 1, alpha), _EMPTY)
    fin_scores, keep = lax.top_k(jnp.concatenate([fin_scores, new_scores], axis=1), k)
    fin_seqs = _gather_rows(jnp.concatenate([fin_seqs, top_seqs], axis=1), keep)
    return i + 1, alive_seqs, alive_logp, fin_seqs, fin_scores, cache

  # Only beam 0 starts alive, so the first step does not pick k copies of one token.
  alive_logp = jnp.tile(jnp.array([0.0] + [_DEAD] * (k - 1), jnp.float32), (b, 1))
  state = (jnp.array(0, jnp.int32), jnp.zeros((b, k, length), jnp.int32), alive_logp,
           jnp.zeros((b, k, length), jnp.int32), jnp.full((b, k), _EMPTY, jnp.float32), cache)
  _, _, _, fin_seqs, fin_scores, _ = lax.while_loop(cond, body, state)
  return fin_seqs, fin_scores

"""T5.1.1 building blocks with T5X's parameter names and logical axis names.

Parameter names, shapes and initialisers follow T5X's `t5x/examples/t5/layers.py` (so checkpoints of
the two are interchangeable and gin/partitioning rules carry over): 2-D attention kernels with axes
('embed', 'joined_kv'), MLP kernels ('embed', 'mlp') / ('mlp', 'embed'), RMS norm 'scale' ('embed',),
embedding ('vocab', 'embed'), relative position bias ('heads', 'relpos_buckets'). Parameters are
float32; computation runs in the configured activation dtype.

Shape comments use: b batch, l/q/k lengths, h heads, d model width, n head dim, m mlp width.
"""
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

NEG_INF = -1e10
default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def _canonicalize_tuple(x):
  return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def _activation(name: str) -> Callable[[Array], Array]:
  if name == 'linear':
    return lambda x: x
  if name == 'gelu':
    return functools.partial(jax.nn.gelu, approximate=True)
  if name in ('silu', 'swish'):
    return jax.nn.silu
  return getattr(jax.nn, name)


def dot_product_attention(query: Array, key: Array, value: Array, bias: Optional[Array] = None,
                          dropout_fn: Optional[Callable[[Array], Array]] = None,
                          dtype: DType = jnp.float32, float32_logits: bool = False) -> Array:
  """Unscaled T5 attention (the 1/sqrt(n) factor lives in the query initialiser).

  query [b, q, h, n], key/value [b, k, h, n], bias broadcastable to [b, h, q, k] -> [b, q, h, n].
  """
  assert query.ndim == key.ndim == value.ndim == 4, (query.shape, key.shape, value.shape)
  assert query.shape[-1] == key.shape[-1] and key.shape[1] == value.shape[1]
  if float32_logits:
    query, key = query.astype(jnp.float32), key.astype(jnp.float32)
  logits = jnp.einsum('bqhn,bkhn->bhqk', query, key)  # [b, h, q, k]
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  weights = jax.nn.softmax(logits).astype(dtype)
  if dropout_fn is not None:
    weights = dropout_fn(weights)
  return jnp.einsum('bhqk,bkhn->bqhn', weights, value)  # [b, q, h, n]


class DenseGeneral(nn.Module):
  """Dense layer over one or more input axes with a 2-D float32 kernel, as T5X stores it."""
  features: Any
  axis: Any = -1
  kernel_axes: Tuple[str, ...] = ()
  kernel_init: Initializer = default_kernel_init
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = _canonicalize_tuple(self.features)
    axis = tuple(a % inputs.ndim for a in _canonicalize_tuple(self.axis))
    in_shape = tuple(inputs.shape[a] for a in axis)
    kernel = param_with_axes('kernel', self.kernel_init,
                             (int(np.prod(in_shape)), int(np.prod(features))), jnp.float32,
                             axes=self.kernel_axes)
    kernel = jnp.reshape(kernel.astype(self.dtype), in_shape + features)
    contract = (axis, tuple(range(len(axis))))
    return lax.dot_general(inputs.astype(self.dtype), kernel, (contract, ((), ())))


class RMSNorm(nn.Module):
  """T5's layer norm: no mean subtraction, no bias (T5X calls it LayerNorm)."""
  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    scale = param_with_axes('scale', nn.initializers.ones, (x.shape[-1],), jnp.float32,
                            axes=('embed',))
    y = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale).astype(self.dtype)


class Embed(nn.Module):
  """Token embedding table [vocab, features]; `attend` gives tied logits.

  one_hot: look tokens up as a one-hot [.., vocab] x [vocab, features] matmul, as T5X does on TPU
  (it partitions along a vocab-sharded table); otherwise a gather. The two are equal (one nonzero
  term per output).
  """
  num_embeddings: int
  features: int
  dtype: DType = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)
  one_hot: bool = False

  def setup(self):
    self.embedding = param_with_axes('embedding', self.embedding_init,
                                     (self.num_embeddings, self.features), jnp.float32,
                                     axes=('vocab', 'embed'))

  def __call__(self, tokens: Array) -> Array:
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f'token ids must be integers, got dtype {tokens.dtype}.')
    table = self.embedding.astype(self.dtype)
    if self.one_hot:
      one_hot = (tokens[..., None] == lax.iota(jnp.int32, self.num_embeddings)).astype(self.dtype)
      return jnp.dot(one_hot, table, precision=lax.Precision.HIGHEST)  # [b, l, vocab] -> [b, l, d]
    return jnp.take(table, tokens, axis=0)  # [b, l] -> [b, l, d]

  def attend(self, query: Array) -> Array:
    return jnp.einsum('...d,vd->...v', query.astype(self.dtype), self.embedding.astype(self.dtype))


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """T5's bucketing of (key position - query position) (Raffel et al. 2020, section 2.1).

  Half the buckets hold exact small distances, the rest logarithmically larger ones up to
  `max_distance`; bidirectional stacks spend half the buckets on each direction.
  """
  n = -np.asarray(relative_position)
  bucket = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(n.dtype) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide='ignore'):
    large = max_exact + (np.log(np.maximum(n, 1) / max_exact) / np.log(max_distance / max_exact) *
                         (num_buckets - max_exact)).astype(n.dtype)
  large = np.minimum(large, num_buckets - 1)
  return bucket + np.where(is_small, n, large)


class RelativePositionBiases(nn.Module):
  """Learned per-head scalar bias for each relative-position bucket."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: DType = jnp.float32
  embedding_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool = True) -> Array:
    """-> [1, h, qlen, klen]; positions are 0..qlen-1 and 0..klen-1 (static)."""
    relative = np.arange(klen, dtype=np.int32)[None, :] - np.arange(qlen, dtype=np.int32)[:, None]
    buckets = relative_position_bucket(relative, bidirectional, self.num_buckets, self.max_distance)
    table = param_with_axes('rel_embedding', self.embedding_init, (self.num_heads, self.num_buckets),
                            jnp.float32, axes=('heads', 'relpos_buckets'))
    return jnp.take(table, jnp.asarray(buckets), axis=1)[None].astype(self.dtype)  # [1, h, q, k]


class MultiHeadDotProductAttention(nn.Module):
  """T5 multi-head attention with an autoregressive cache for decoding.

  The cache holds 'cached_key'/'cached_value' [b, L, h, n] (batch first, so beam search can reorder
  it) and the scalar 'cache_index'. It is created by a call with decode=True on full-length inputs
  and then advanced one token per call.
  """
  num_heads: int
  head_dim: int
  dtype: DType = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
  float32_logits: bool = False

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Optional[Array] = None,
               bias: Optional[Array] = None, *, decode: bool = False,
               deterministic: bool = False) -> Array:
    dense = functools.partial(DenseGeneral, axis=-1, features=(self.num_heads, self.head_dim),
                              kernel_axes=('embed', 'joined_kv'), dtype=self.dtype)
    # T5 does not scale attention logits; the equivalent 1/sqrt(n) is folded into the query init.
    query_init = lambda *args: self.kernel_init(*args) / np.sqrt(self.head_dim).astype(np.float32)
    query = dense(kernel_init=query_init, name='query')(inputs_q)  # [b, q, h, n]
    key = dense(kernel_init=self.kernel_init, name='key')(inputs_kv)  # [b, k, h, n]
    value = dense(kernel_init=self.kernel_init, name='value')(inputs_kv)
    axes = ('batch', 'length', 'heads', 'kv')
    query, key, value = (with_sharding_constraint(t, axes) for t in (query, key, value))

    if decode:
      initialized = self.has_variable('cache', 'cached_key')
      cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
      cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, dtype=jnp.int32))
      if initialized:
        batch, max_length, heads, head_dim = cached_key.value.shape
        if query.shape[1] != 1:
          raise ValueError(f'cached decoding takes one token per call, got length {query.shape[1]}.')
        idx = cache_index.value
        zero = jnp.zeros((), jnp.int32)
        cached_key.value = lax.dynamic_update_slice(cached_key.value, key, (zero, idx, zero, zero))
        cached_value.value = lax.dynamic_update_slice(cached_value.value, value,
                                                      (zero, idx, zero, zero))
        cache_index.value = idx + 1
        key, value = cached_key.value, cached_value.value
        # Only positions already written may be attended to.
        step_mask = (jnp.arange(max_length) <= idx)[None, None, None, :]  # [1, 1, 1, L]
        mask = step_mask if mask is None else jnp.logical_and(mask, step_mask)
        if bias is not None:  # The full [.., L, L] bias: keep the row of the current position.
          if bias.shape[-1] != max_length:
            raise ValueError(f'cached decoding needs the relative bias over the whole cache '
                             f'({max_length} positions) but got {bias.shape[-1]}: pass '
                             f'max_decode_length={max_length} to decode().')
          bias = lax.dynamic_slice_in_dim(bias, idx, 1, axis=-2)

    attention_bias = None
    if mask is not None:
      attention_bias = jnp.where(mask > 0, 0.0, NEG_INF).astype(self.dtype)
    if bias is not None:
      attention_bias = bias if attention_bias is None else attention_bias + bias

    dropout_fn = None
    if not deterministic and self.dropout_rate > 0:
      dropout_fn = lambda w: nn.Dropout(rate=self.dropout_rate)(w, deterministic=False)
    x = dot_product_attention(query, key, value, attention_bias, dropout_fn, self.dtype,
                              self.float32_logits)
    return DenseGeneral(features=inputs_q.shape[-1], axis=(-2, -1),
                        kernel_axes=('joined_kv', 'embed'), kernel_init=self.kernel_init,
                        dtype=self.dtype, name='out')(x)  # [b, q, h, n] -> [b, q, d]


class MlpBlock(nn.Module):
  """Gated MLP: wo(prod_i act_i(wi_i x)); T5.1.1 uses ('gelu', 'linear')."""
  intermediate_dim: int
  activations: Sequence[str] = ('gelu', 'linear')
  kernel_init: Initializer = default_kernel_init
  intermediate_dropout_rate: float = 0.1
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = False) -> Array:
    hidden = None
    for i, act in enumerate(self.activations):
      name = 'wi' if len(self.activations) == 1 else f'wi_{i}'
      h = DenseGeneral(self.intermediate_dim, kernel_axes=('embed', 'mlp'),
                       kernel_init=self.kernel_init, dtype=self.dtype, name=name)(inputs)
      h = _activation(act)(h)
      hidden = h if hidden is None else hidden * h  # [b, l, m]
    hidden = nn.Dropout(rate=self.intermediate_dropout_rate, broadcast_dims=(-2,))(
        hidden, deterministic=deterministic)
    hidden = with_sharding_constraint(hidden, ('batch', 'length', 'mlp'))
    return DenseGeneral(inputs.shape[-1], kernel_axes=('mlp', 'embed'), kernel_init=self.kernel_init,
                        dtype=self.dtype, name='wo')(hidden)  # [b, l, m] -> [b, l, d]


# Masks, [b, 1, q, k] with 1 = may attend.
def make_attention_mask(query_input: Array, key_input: Array, pairwise_fn=jnp.multiply,
                        dtype: DType = jnp.float32) -> Array:
  mask = pairwise_fn(query_input[:, :, None], key_input[:, None, :])
  return mask[:, None].astype(dtype)


def make_causal_mask(x: Array, dtype: DType = jnp.float32) -> Array:
  positions = jnp.broadcast_to(jnp.arange(x.shape[-1]), x.shape)
  return make_attention_mask(positions, positions, jnp.greater_equal, dtype)


def combine_masks(*masks: Optional[Array], dtype: DType = jnp.float32) -> Optional[Array]:
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0].astype(bool)
  for m in masks[1:]:
    out = jnp.logical_and(out, m.astype(bool))
  return out.astype(dtype)


def make_decoder_mask(decoder_target_tokens: Array, dtype: DType,
                      decoder_segment_ids: Optional[Array] = None) -> Array:
  """Causal + non-padding (+ same packed segment) mask for decoder self-attention."""
  masks = [make_causal_mask(decoder_target_tokens, dtype),
           make_attention_mask(decoder_target_tokens > 0, decoder_target_tokens > 0, dtype=dtype)]
  if decoder_segment_ids is not None:
    masks.append(make_attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal, dtype))
  return combine_masks(*masks, dtype=dtype)

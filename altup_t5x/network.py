"""The AltUp T5.1.1 encoder-decoder, with the network interface T5X's EncoderDecoderModel calls.

Composition only: the T5.1.1 layers are the plain ones from `layers.py`; AltUp wraps each of them
from the outside (predict -> run the layer on one block -> correct, `altup.altup_step`). The
parameter tree of an AltUp model is the baseline tree plus, per layer, `altup_{i}/predict` [K, K]
and `altup_{i}/correct` [K] (and a K*d-wide embedding for the wide variant).

Activations: [b, l, d] inside a layer; [b, l, k, d] between AltUp layers.
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from altup_t5x import altup
from altup_t5x import layers
from altup_t5x import moe
from altup_t5x import sequence
from altup_t5x.config import AltUpConfig

param_with_axes = layers.param_with_axes
with_sharding_constraint = layers.with_sharding_constraint

BLOCK_AXES = ('batch', 'length', 'altup_blocks', 'embed')
EMBED_AXES = ('batch', 'length', 'embed')


def _mlp(cfg: AltUpConfig, sparse: bool, decoder: bool = False):
  if sparse:
    return moe.MoeMlp(num_experts=cfg.moe_num_experts, intermediate_dim=cfg.mlp_dim,
                      routing=cfg.decoder_moe_routing if decoder else cfg.moe_routing,
                      top_k=cfg.moe_top_k, capacity_factor=cfg.moe_capacity_factor,
                      activations=cfg.mlp_activations, intermediate_dropout_rate=cfg.dropout_rate,
                      dtype=cfg.dtype, causal=decoder, name='mlp')
  return layers.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                         intermediate_dropout_rate=cfg.dropout_rate, dtype=cfg.dtype, name='mlp')


def _dropout(cfg: AltUpConfig):
  # T5X shares the dropout mask along the length axis.
  return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))


class AltUpCoefficients(nn.Module):
  """The K*K predictor and K corrector scalars of one layer (float32, whatever the dtype)."""
  config: AltUpConfig

  @nn.compact
  def __call__(self, x_active=None):
    """Returns (p [k, k], g [k]); `x_active` is unused (input-independent coefficients)."""
    cfg = self.config
    k = cfg.altup_k
    scale = cfg.altup_coef_init_scale if cfg.altup_coef_init == 'normal' else 0.0

    def p_init(rng, shape, dtype):
      return jnp.eye(k, dtype=dtype) + scale * nn.initializers.normal(1.0)(rng, shape, dtype)

    def g_init(rng, shape, dtype):
      return jnp.ones(shape, dtype) + scale * nn.initializers.normal(1.0)(rng, shape, dtype)

    p = param_with_axes('predict', p_init, (k, k), jnp.float32,
                        axes=('altup_blocks', 'altup_blocks_in'))
    g = param_with_axes('correct', g_init, (k,), jnp.float32, axes=('altup_blocks',))
    return p, g


class DynamicAltUpCoefficients(nn.Module):
  """Per-token coefficients in the style of Gemma 3n (ALTUP.md section 3).

    r = tanh(W_r rmsnorm(x_active) / d)    [..., k]
    P = I + clip(W_p) r                    [..., k, k]
    g = 1 + clip(W_g) r                    [..., k]

  The clip to +-altup_coef_clip is applied to the coefficient weights in the forward pass (weights
  are never modified), so an entry outside the range gets zero gradient. With the default identity
  initialisation W_p = W_g = 0 and the layer starts with P = I, g = 1.
  """
  config: AltUpConfig

  @nn.compact
  def __call__(self, x_active):
    cfg = self.config
    k, d, clip = cfg.altup_k, cfg.emb_dim, cfg.altup_coef_clip
    scale = cfg.altup_coef_init_scale if cfg.altup_coef_init == 'normal' else 0.0
    r = layers.RMSNorm(dtype=jnp.float32, name='router_norm')(x_active) / d
    w_r = param_with_axes('router', nn.initializers.normal(1e-2), (d, k), jnp.float32,
                          axes=('embed', 'altup_router'))
    r = jnp.tanh(r @ w_r)  # [b, l, d] -> [b, l, k]
    w_p = param_with_axes('predict', nn.initializers.normal(scale), (k, k, k), jnp.float32,
                          axes=('altup_router', 'altup_blocks', 'altup_blocks_in'))
    w_g = param_with_axes('correct', nn.initializers.normal(scale), (k, k), jnp.float32,
                          axes=('altup_router', 'altup_blocks'))
    p = jnp.eye(k) + jnp.einsum('...r,rij->...ij', r, jnp.clip(w_p, -clip, clip))
    g = 1.0 + jnp.einsum('...r,ri->...i', r, jnp.clip(w_g, -clip, clip))
    return p, g


class SequenceAltUpScalars(nn.Module):
  """alpha (predict) and beta (correct) of one Sequence-AltUp layer, both initialised to 1."""

  @nn.compact
  def __call__(self):
    alpha = param_with_axes('predict', nn.initializers.ones, (1,), jnp.float32, axes=('unmodeled',))
    beta = param_with_axes('correct', nn.initializers.ones, (1,), jnp.float32, axes=('unmodeled',))
    return alpha[0], beta[0]


class EncoderLayer(nn.Module):
  """One T5.1.1 encoder layer on a d-wide block: [b, l, d] -> [b, l, d]."""
  config: AltUpConfig
  sparse: bool = False  # mixture-of-experts MLP

  @nn.compact
  def __call__(self, inputs, encoder_mask=None, encoder_bias=None, deterministic=False):
    cfg = self.config
    x = layers.RMSNorm(dtype=cfg.dtype, name='pre_attention_layer_norm')(inputs)
    x = layers.MultiHeadDotProductAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=cfg.dtype,
        dropout_rate=cfg.dropout_rate, float32_logits=cfg.float32_attention_logits,
        name='attention')(x, x, encoder_mask, encoder_bias, deterministic=deterministic)
    x = _dropout(cfg)(x, deterministic=deterministic) + inputs
    y = layers.RMSNorm(dtype=cfg.dtype, name='pre_mlp_layer_norm')(x)
    y = _mlp(cfg, self.sparse)(y, deterministic=deterministic)
    y = _dropout(cfg)(y, deterministic=deterministic) + x
    return with_sharding_constraint(y, EMBED_AXES)


class DecoderLayer(nn.Module):
  """One T5.1.1 decoder layer on a d-wide block: [b, l, d] -> [b, l, d]."""
  config: AltUpConfig
  sparse: bool = False  # mixture-of-experts MLP

  @nn.compact
  def __call__(self, inputs, encoded, decoder_mask=None, encoder_decoder_mask=None,
               decoder_bias=None, deterministic=False, decode=False, decode_length=None):
    cfg = self.config
    attention = lambda name: layers.MultiHeadDotProductAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=cfg.dtype,
        dropout_rate=cfg.dropout_rate, float32_logits=cfg.float32_attention_logits, name=name)
    x = layers.RMSNorm(dtype=cfg.dtype, name='pre_self_attention_layer_norm')(inputs)
    x = attention('self_attention')(x, x, decoder_mask, decoder_bias, decode=decode,
                                    deterministic=deterministic)
    x = _dropout(cfg)(x, deterministic=deterministic) + inputs
    y = layers.RMSNorm(dtype=cfg.dtype, name='pre_cross_attention_layer_norm')(x)
    y = attention('encoder_decoder_attention')(y, encoded, encoder_decoder_mask,
                                               deterministic=deterministic)
    y = _dropout(cfg)(y, deterministic=deterministic) + x
    z = layers.RMSNorm(dtype=cfg.dtype, name='pre_mlp_layer_norm')(y)
    if self.sparse:  # causal routing; decoding continues the slot assignment from the cache
      z = _mlp(cfg, True, decoder=True)(z, deterministic=deterministic, decode=decode,
                                        decode_length=decode_length)
    else:
      z = _mlp(cfg, False)(z, deterministic=deterministic)
    z = _dropout(cfg)(z, deterministic=deterministic) + y
    return with_sharding_constraint(z, EMBED_AXES)


class AltUpStack(nn.Module):
  """Embeds tokens into K blocks, runs AltUp-wrapped layers, reduces to d, final norm + dropout.

  With altup_k == 1 it is exactly the plain T5.1.1 stack (no AltUp parameters, no wrapping).
  Subclasses name the layers and supply `make_layer`.
  """
  config: AltUpConfig
  shared_embedding: nn.Module
  num_layers: int = 0
  norm_name: str = 'encoder_norm'

  def embed(self, tokens, deterministic):
    """[b, l] -> [b, l, k, d] (or [b, l, d] when K == 1)."""
    cfg = self.config
    x = self.shared_embedding(tokens.astype('int32'))  # [b, l, embedding_dim]
    x = _dropout(cfg)(x, deterministic=deterministic).astype(cfg.dtype)
    if not cfg.use_altup:
      return with_sharding_constraint(x, EMBED_AXES)
    if cfg.altup_embedding == 'wide':
      x = altup.split_blocks(x, cfg.altup_k)  # [b, l, k*d] -> [b, l, k, d]
    else:
      x = altup.replicate(x, cfg.altup_k)  # [b, l, d] -> [b, l, k, d]
    return with_sharding_constraint(x, BLOCK_AXES)

  def run_layers(self, x, layer_call):
    """Applies layer_call(i, h) for each layer, through AltUp when K > 1."""
    cfg = self.config
    for i in range(self.num_layers):
      fn = lambda h, i=i: layer_call(i, h)
      if cfg.use_altup:
        coefficients = (DynamicAltUpCoefficients if cfg.altup_coefficients == 'dynamic'
                        else AltUpCoefficients)(cfg, name=f'altup_{i}')
        p, g = coefficients(altup.select_block(x, cfg.active_block(i)))
        x = altup.altup_step(x, p, g, cfg.active_block(i), fn, cfg.altup_layer_input)
        x = with_sharding_constraint(x, BLOCK_AXES)
      else:
        x = fn(x)
    return x

  def finish(self, x, deterministic):
    """[b, l, k, d] -> reduce -> final RMS norm -> dropout -> [b, l, d]."""
    cfg = self.config
    if cfg.use_altup:
      projection = None
      if cfg.altup_reduction == 'projection':
        k, d = cfg.altup_k, cfg.emb_dim
        init = lambda rng, shape, dtype: jnp.broadcast_to(jnp.eye(d, dtype=dtype) / k, shape)
        projection = param_with_axes('altup_reduce', init, (k, d, d), jnp.float32,
                                     axes=('altup_blocks', 'embed', 'altup_embed_out'))
      x = altup.reduce_blocks(x, cfg.altup_reduction, projection).astype(cfg.dtype)
    x = layers.RMSNorm(dtype=cfg.dtype, name=self.norm_name)(x)
    x = _dropout(cfg)(x, deterministic=deterministic)
    return with_sharding_constraint(x, EMBED_AXES)


class Encoder(AltUpStack):
  norm_name: str = 'encoder_norm'

  @nn.compact
  def __call__(self, encoder_input_tokens, encoder_mask=None, deterministic=False,
               encoder_segment_ids=None, encoder_positions=None):
    cfg = self.config
    assert encoder_input_tokens.ndim == 2, f'[batch, length] expected, got {encoder_input_tokens.shape}'
    length = encoder_input_tokens.shape[-1]
    bias = layers.RelativePositionBiases(
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance, num_heads=cfg.num_heads,
        dtype=cfg.dtype, name='relpos_bias')(length, length, True)
    x = self.embed(encoder_input_tokens, deterministic)
    layer_modules = [EncoderLayer(cfg, cfg.is_sparse_layer(i), name=f'layers_{i}')
                     for i in range(self.num_layers)]
    stride = cfg.sequence_altup_stride
    scalars = [SequenceAltUpScalars(name=f'sequence_altup_{i}')
               if stride > 1 and cfg.sequence_altup_mode == 'predict_correct' else None
               for i in range(self.num_layers)]
    # Sequence-AltUp follows each segment's own positions (packed rows); unpacked: one segment.
    if encoder_segment_ids is None:
      segment_ids, max_segments = (encoder_input_tokens > 0).astype(jnp.int32), 1
      positions = jnp.broadcast_to(jnp.arange(length), encoder_input_tokens.shape)
    else:
      segment_ids, max_segments = encoder_segment_ids, cfg.sequence_altup_max_segments
      positions = (sequence.segment_positions(segment_ids) if encoder_positions is None
                   else encoder_positions)

    def layer_call(i, h):
      if stride == 1:
        return layer_modules[i](h, encoder_mask, bias, deterministic)

      def on_anchors(h_anchors, slot_positions, slot_valid):  # the anchors, their mask and bias
        sub_mask = slot_valid[:, None, :, None] & slot_valid[:, None, None, :]
        if encoder_mask is not None:
          rows = jnp.take_along_axis(encoder_mask, slot_positions[:, None, :, None], axis=2)
          sub_mask = sub_mask & (jnp.take_along_axis(rows, slot_positions[:, None, None, :],
                                                     axis=3) > 0)
        sub_bias = jnp.moveaxis(
            bias[0][:, slot_positions[:, :, None], slot_positions[:, None, :]], 0, 1)
        return layer_modules[i](h_anchors, sub_mask.astype(cfg.dtype), sub_bias, deterministic)

      alpha, beta = scalars[i]() if scalars[i] is not None else (1.0, 1.0)
      return sequence.sequence_altup_step(
          h, on_anchors, stride, cfg.sequence_offset(i), alpha, beta, cfg.sequence_altup_mode,
          segment_ids=segment_ids, positions=positions, max_segments=max_segments)

    x = self.run_layers(x, layer_call)
    return self.finish(x, deterministic)


class Decoder(AltUpStack):
  norm_name: str = 'decoder_norm'

  @nn.compact
  def __call__(self, encoded, decoder_input_tokens, decoder_positions=None, decoder_mask=None,
               encoder_decoder_mask=None, deterministic=False, decode=False,
               max_decode_length=None):
    cfg = self.config
    assert decoder_input_tokens.ndim == 2, f'[batch, length] expected, got {decoder_input_tokens.shape}'
    length = max_decode_length if (decode and max_decode_length) else decoder_input_tokens.shape[-1]
    bias = layers.RelativePositionBiases(
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance, num_heads=cfg.num_heads,
        dtype=cfg.dtype, name='relpos_bias')(length, length, False)
    y = self.embed(decoder_input_tokens, deterministic)
    layer_modules = [DecoderLayer(cfg, cfg.is_sparse_layer(i), name=f'layers_{i}')
                     for i in range(self.num_layers)]
    y = self.run_layers(y, lambda i, h: layer_modules[i](
        h, encoded, decoder_mask, encoder_decoder_mask, bias, deterministic, decode, length))
    y = self.finish(y, deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1]).astype(cfg.dtype)
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, dtype=jnp.float32, kernel_axes=('embed', 'vocab'),
                                   name='logits_dense')(y)
    return with_sharding_constraint(logits, ('batch', 'length', 'vocab'))


class Transformer(nn.Module):
  """AltUp T5.1.1 encoder-decoder; drop-in for T5X's `t5x.examples.t5.network.Transformer`."""
  config: AltUpConfig

  def setup(self):
    cfg = self.config
    if not isinstance(cfg, AltUpConfig):
      raise TypeError(f'Transformer.config must be an altup_t5x AltUpConfig, got {type(cfg)!r}.')
    self.shared_embedding = layers.Embed(num_embeddings=cfg.vocab_size, features=cfg.embedding_dim,
                                         dtype=cfg.dtype, name='token_embedder')
    self.encoder = Encoder(cfg, self.shared_embedding, cfg.num_encoder_layers,
                           norm_name='encoder_norm')
    self.decoder = Decoder(cfg, self.shared_embedding, cfg.num_decoder_layers,
                           norm_name='decoder_norm')

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, enable_dropout=True,
             encoder_positions=None):
    """[b, l] tokens -> [b, l, d] encoder output (reduced to d and normed). Packed rows: segment
    ids (0 = padding) and optionally positions (derived from the segment ids when absent)."""
    cfg = self.config
    mask = layers.make_attention_mask(encoder_input_tokens > 0, encoder_input_tokens > 0,
                                      dtype=cfg.dtype)
    if encoder_segment_ids is not None:
      mask = layers.combine_masks(mask, layers.make_attention_mask(
          encoder_segment_ids, encoder_segment_ids, jnp.equal, dtype=cfg.dtype), dtype=cfg.dtype)
    return self.encoder(encoder_input_tokens, mask, deterministic=not enable_dropout,
                        encoder_segment_ids=encoder_segment_ids,
                        encoder_positions=encoder_positions)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
             enable_dropout=True, decode=False, max_decode_length=None):
    """Decoder logits [b, l, vocab]; with decode=True one token per call from the cache."""
    cfg = self.config
    if decode:
      # Causality comes from the cache index inside attention.
      decoder_mask = None
      encoder_decoder_mask = layers.make_attention_mask(
          jnp.ones_like(decoder_target_tokens), encoder_input_tokens > 0, dtype=cfg.dtype)
    else:
      decoder_mask = layers.make_decoder_mask(decoder_target_tokens, cfg.dtype,
                                              decoder_segment_ids=decoder_segment_ids)
      encoder_decoder_mask = layers.make_attention_mask(
          decoder_target_tokens > 0, encoder_input_tokens > 0, dtype=cfg.dtype)
    if encoder_segment_ids is not None:
      if decode:
        raise ValueError('decoding with packed (segmented) encoder inputs is not supported.')
      encoder_decoder_mask = layers.combine_masks(encoder_decoder_mask, layers.make_attention_mask(
          decoder_segment_ids, encoder_segment_ids, jnp.equal, dtype=cfg.dtype), dtype=cfg.dtype)
    return self.decoder(encoded, decoder_input_tokens, decoder_positions, decoder_mask,
                        encoder_decoder_mask, deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
               encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None, *, enable_dropout: bool = True, decode: bool = False,
               max_decode_length: Optional[int] = None):
    """Teacher-forced logits [b, l_dec, vocab]."""
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout,
                          encoder_positions)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       encoder_segment_ids, decoder_segment_ids, decoder_positions,
                       enable_dropout=enable_dropout, decode=decode,
                       max_decode_length=max_decode_length)

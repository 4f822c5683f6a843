"""The AltUp T5.1.1 encoder-decoder, with the network interface T5X's EncoderDecoderModel calls.

Composition only: the T5.1.1 layers are the plain ones from `layers.py`; AltUp wraps each of them
from the outside (predict -> run the layer on one block -> correct, `run_layers`). The parameter
tree of an AltUp model is the baseline tree plus, per layer, `altup_{i}/predict` [K, K] and
`altup_{i}/correct` [K] (and a K*d-wide embedding for the wide variant; the K-1 d x d maps
`altup_embed_projection` / `altup_unembed_projection` for Gemma 3n's stream initialisation and
reduction).

Activations: [b, l, d] inside a layer; [b, l, k, d] between AltUp layers. With
`altup_fused_updates` (the default) the layers carry the stream with its last correction
deferred, (z, g, delta): each layer reads and writes the [b, l, k, d] stream once, the correct of
one layer and the predict of the next being one pass (`altup` module docstring); the scan carry of
a scanned stack is that triple too. For K <= BLOCKS_LAYOUT_MAX_K, z is a tuple of the K blocks
[b, l, d] rather than one stacked array (`begin_stream`).

Scaling options, as T5X's `t5x/examples/scalable_t5` (AltUpConfig.scan_layers, param_scan_axis,
remat_policy, one_hot_embedding):

- scan_layers: each stack runs as one `scan_with_axes` over groups of P = `cfg.layer_period()`
  consecutive layers (P = lcm of K under alternating selection, moe_every when MoE is on, and the
  Sequence-AltUp stride in the encoder; P = 1 for the plain T5.1.1 network). Layer i and layer i+P
  are built alike, so the scanned body is exactly P unrolled layers with local indices 0..P-1: the
  same code path as the unrolled stack (`encoder_layers` / `decoder_layers`), with every static
  per-layer choice (active block, MoE or dense MLP, Sequence-AltUp offset and anchor shapes) still a
  Python constant. The alternative, the block index as a scan input selected dynamically, would
  need dynamic slices and one-hot corrections in the AltUp step, cannot express MoE-every-n (the
  two layer kinds have different parameters) nor Sequence-AltUp (anchor counts change with the
  offset), and would make the scanned network differ from the unrolled one. The cost is a body of
  P layers (2 for the paper's K=2), still a constant compile size independent of depth.
  Parameters: `<stack>/layers/{layers_j, altup_j, sequence_altup_j}` with the 'layers' axis (size
  num_layers / P) inserted at `param_scan_axis`; unrolled layer i is group member j = i mod P at
  scan index i // P (`altup_t5x.scan_convert` restacks checkpoints both ways). Decoding caches and
  sown MoE metrics are stacked at axis 0 (T5X's models read `Transformer.scan_layers` and then
  expect the cache's batch axis at 1). The relative position bias stays one table per stack,
  computed outside the scan and broadcast into it.
- remat_policy: `flax.linen.partitioning.remat` with prevent_cse = not scan_layers, as scalable_t5.
  Scanned, it wraps the scan body: the group of `layer_period` layers with AltUp's coefficients,
  predict and correct, so the backward pass keeps one [b, l, K, d] carry per group and recomputes
  the rest. Wrapping only the T5.1.1 layers (the first version) left each layer's predict/correct
  residuals ([b, l, K, d] each) saved: `python -m altup_t5x.plan` of `c4_xl_altup_k2` on 4x8 with
  'full' (2026-11-30) gave 38.9 GiB per device that way and 20.4 GiB this way (baseline: 15.3 GiB;
  PODS.md). Under 'minimal' the saved matmul outputs dominate and both ways need 56.6 GiB.
  Unrolled, each T5.1.1 layer is wrapped (parameter names stay those of the unrolled stack). Measured
  (scripts/scaling_benchmark.py sweep; T5.1.1-small, batch 8 x 512/114, float32, 1 CPU device):
  XLA temporaries of the train step with 'full' are 0.28x of 'none' when scanned but 0.96x
  unrolled, the same gap as scalable_t5 (0.23x vs 0.95x at large). Why: JAX lowers a differentiated
  checkpoint with prevent_cse=True as an optimization barrier on the recomputation's *inputs* only.
  Those inputs (each layer's input) exist from the forward pass on, so in an unrolled program
  XLA's scheduler is free to run every layer's recomputation long before the backward pass reaches
  that layer, and the recomputed activations then live as long as saved ones would have. Under scan
  the recomputation sits inside the body of the backward while loop and runs only in its own
  iteration. So: use remat together with scan_layers=True (the XXL configs do); unrolled remat is
  kept for equivalence checks and debugging, not for memory.
- one_hot_embedding: `layers.Embed(one_hot=True)`.
"""
from typing import Optional

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
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
  """Per-token coefficients from a router, as Gemma 3n's AltUp computes them.

    r(h) = tanh(W_r rmsnorm(h) / d)        [..., k]
    P    = I + clip(W_p) r(x_active)       [..., k, k]
    g    = 1 + clip(W_g) r(h_g)            [..., k]

  h_g is the layer's output xtilde when AltUpConfig.altup_correct_router == 'output' (Gemma 3n's
  corrector: the same router weights and norm applied again to the layer output), else the same
  active block as the predictor's. Called on one activation it returns (P, g) of that
  activation; the caller takes P from the call on the layer input and g from the call on h_g (the
  module is called twice with shared parameters; XLA drops the unused half). The clip to
  +-altup_coef_clip is applied to the weights in the forward pass (the weights are never
  modified), so an entry outside the range gets zero gradient. Identity initialisation: W_p = W_g
  = 0, so the layer starts with P = I, g = 1; 'gemma3n': W_p ~ N(0, 1e-4), W_g ~ N(0, 1e-2).
  Reference equations: google-deepmind/gemma, gemma/gm/nn/gemma3n/_modules.py, class AltUp
  (`predict`, `correct`, `compute_router_modalities`).
  """
  config: AltUpConfig

  @nn.compact
  def __call__(self, h):
    cfg = self.config
    k, d, clip = cfg.altup_k, cfg.emb_dim, cfg.altup_coef_clip
    if cfg.altup_coef_init == 'gemma3n':
      p_std, g_std = 1e-4, 1e-2
    else:
      p_std = g_std = cfg.altup_coef_init_scale if cfg.altup_coef_init == 'normal' else 0.0
    r = layers.RMSNorm(dtype=jnp.float32, name='router_norm')(h) / d
    w_r = param_with_axes('router', nn.initializers.normal(1e-2), (d, k), jnp.float32,
                          axes=('embed', 'altup_router'))
    r = jnp.tanh(r @ w_r)  # [b, l, d] -> [b, l, k]
    w_p = param_with_axes('predict', nn.initializers.normal(p_std), (k, k, k), jnp.float32,
                          axes=('altup_router', 'altup_blocks', 'altup_blocks_in'))
    w_g = param_with_axes('correct', nn.initializers.normal(g_std), (k, k), jnp.float32,
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


def _remat(cfg: AltUpConfig, layer_cls, static_argnums):
  """The layer class under cfg.remat_policy (flax's lifted jax.checkpoint, as scalable_t5)."""
  if cfg.remat_policy == 'none':
    return layer_cls
  policy = (jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
            if cfg.remat_policy == 'minimal' else None)
  return nn_partitioning.remat(layer_cls, prevent_cse=not cfg.scan_layers, policy=policy,
                               static_argnums=static_argnums)


def _coefficients(cfg: AltUpConfig, name: str) -> nn.Module:
  return (DynamicAltUpCoefficients if cfg.altup_coefficients == 'dynamic'
          else AltUpCoefficients)(cfg, name=name)


def _corrector(cfg: AltUpConfig, coefficients: nn.Module, g, layer_output):
  """g of the corrector: from the predictor's call, or the router on the layer output."""
  if cfg.altup_coefficients == 'dynamic' and cfg.altup_correct_router == 'output':
    return coefficients(layer_output)[1]
  return g


# Fused AltUp with K up to this carries its K blocks as K separate [b, l, d] arrays, not stacked:
# same function, less memory traffic where it was measured (`python -m studies.update_layout`, the
# updates of 4 layers alone, fwd + bwd at 8 x 512 x 512 on CPU around a T5-shaped stand-in layer:
# K=2 separate blocks 0.64x the stacked fused time, the stacked stream's hand-written backward
# pass, `altup.stacked_deferred_step`, 0.84x; at K=4 the two within 3% of each other, 0.70x and
# 0.72x, so K=4 keeps the stacked stream and its single [b, l, k, d] sharding constraint).
BLOCKS_LAYOUT_MAX_K = 2


def begin_stream(cfg: AltUpConfig, x):
  """What the layers of a stack carry from one to the next.

  K == 1: the activation [b, l, d]. Unfused AltUp: the blocks [b, l, k, d]. Fused AltUp: the
  stream with its correction deferred, (z, g [k] or [b, l, k], delta [b, l, d]), starting at
  (x, 0, 0) (`altup` module docstring); z is [b, l, k, d], or for K <= BLOCKS_LAYOUT_MAX_K a tuple
  of the K blocks [b, l, d].
  """
  if not cfg.use_altup or not cfg.altup_fused_updates:
    return x
  g_shape = x.shape[:-1] if cfg.altup_coefficients == 'dynamic' else (cfg.altup_k,)
  z = x
  if cfg.altup_k <= BLOCKS_LAYOUT_MAX_K:
    z = tuple(with_sharding_constraint(x[..., j, :], EMBED_AXES) for j in range(cfg.altup_k))
  return (z, jnp.zeros(g_shape, jnp.float32), jnp.zeros(x.shape[:-2] + x.shape[-1:], jnp.float32))


def end_stream(cfg: AltUpConfig, state):
  """The carried state as blocks [b, l, k, d] (the deferred correction applied), or [b, l, d]."""
  if not cfg.use_altup or not cfg.altup_fused_updates:
    return state
  z, g, delta = state
  if isinstance(z, tuple):
    z = jnp.stack(z, axis=-2)
  return with_sharding_constraint(altup.apply_correction(z, g, delta).astype(z.dtype), BLOCK_AXES)


def run_layers(cfg: AltUpConfig, state, num_layers: int, layer_call):
  """Applies layer_call(i, h) for layers i = 0..num_layers-1, through AltUp when K > 1.

  `state` is what `begin_stream` makes (and what this returns). Creates `altup_{i}` coefficient
  modules in the calling module: the stack itself (unrolled) or the scanned group (indices local
  to the group; `layer_period` makes them act alike).
  """
  if not cfg.use_altup:
    for i in range(num_layers):
      state = layer_call(i, state)
    return state
  predicted = cfg.altup_layer_input == 'predicted'
  for i in range(num_layers):
    block = cfg.active_block(i)
    coefficients = _coefficients(cfg, f'altup_{i}')
    if not cfg.altup_fused_updates:  # predict -> layer -> correct, two passes over the stream
      x = state
      p, g = coefficients(altup.select_block(x, block))
      xhat = altup.predict(x, p)
      source = xhat if predicted else x
      out = layer_call(i, altup.select_block(source, block).astype(x.dtype))
      g = _corrector(cfg, coefficients, g, out)
      state = with_sharding_constraint(altup.correct(xhat, out, g, block).astype(x.dtype),
                                       BLOCK_AXES)
      continue
    z, g_prev, delta = state  # the stream is y = z + g_prev (x) delta
    blocks = isinstance(z, tuple)  # the K blocks as separate arrays (`begin_stream`)
    dtype = (z[0] if blocks else z).dtype
    if not blocks and cfg.altup_coefficients != 'dynamic':
      # Stacked stream, static coefficients: one pass over the stream forward and backward.
      p, g = coefficients()
      x_active, xhat, xhat_active = altup.stacked_deferred_step(z, g_prev, delta, p, block)
      x_active = x_active.astype(dtype)  # y^{j*}
    else:
      x_active = altup.corrected_block(z, g_prev, delta, block).astype(dtype)  # y^{j*}
      p, g = coefficients(x_active)
      # One pass over the stream: [b, l, k, d], or K blocks [b, l, d].
      predict = altup.predict_deferred_blocks if blocks else altup.predict_deferred
      xhat = predict(z, g_prev, delta, p)
      xhat_active = xhat[block] if blocks else xhat[..., block, :]
    out = layer_call(i, xhat_active.astype(dtype) if predicted else x_active)
    g = _corrector(cfg, coefficients, g, out)
    delta = with_sharding_constraint(out.astype(jnp.float32) - xhat_active, EMBED_AXES)
    z = (tuple(with_sharding_constraint(x.astype(dtype), EMBED_AXES) for x in xhat) if blocks
         else with_sharding_constraint(xhat.astype(dtype), BLOCK_AXES))
    state = (z, g, delta)
  return state


def encoder_layers(cfg: AltUpConfig, x, num_layers: int, mask, bias, segment_ids, positions,
                   max_segments: int, deterministic: bool, remat_layers: bool = True,
                   grid: bool = False):
  """Encoder layers 0..num_layers-1 (`layers_{i}`, `altup_{i}`, `sequence_altup_{i}`) built in the
  calling module; each T5.1.1 layer under cfg.remat_policy if remat_layers (False in a scanned
  group, which is rematerialised as a whole). grid: the rows are unpacked (Sequence-AltUp then
  takes its anchors as a strided slice)."""
  layer_cls = _remat(cfg, EncoderLayer, static_argnums=(3,)) if remat_layers else EncoderLayer
  layer_modules = [layer_cls(cfg, cfg.is_sparse_layer(i), name=f'layers_{i}')
                   for i in range(num_layers)]
  stride = cfg.sequence_altup_stride
  scalars = [SequenceAltUpScalars(name=f'sequence_altup_{i}')
             if stride > 1 and cfg.sequence_altup_mode == 'predict_correct' else None
             for i in range(num_layers)]

  def layer_call(i, h):
    if stride == 1:
      return layer_modules[i](h, mask, bias, deterministic)

    def on_anchors(h_anchors, slot_positions, slot_valid):  # the anchors, their mask and bias
      sub_mask = slot_valid[:, None, :, None] & slot_valid[:, None, None, :]
      if isinstance(slot_positions, slice):  # unpacked rows: the anchors are a strided slice
        if mask is not None:
          sub_mask = sub_mask & (mask[:, :, slot_positions, slot_positions] > 0)
        return layer_modules[i](h_anchors, sub_mask.astype(cfg.dtype),
                                bias[:, :, slot_positions, slot_positions], deterministic)
      if mask is not None:
        rows = jnp.take_along_axis(mask, slot_positions[:, None, :, None], axis=2)
        sub_mask = sub_mask & (jnp.take_along_axis(rows, slot_positions[:, None, None, :],
                                                   axis=3) > 0)
      sub_bias = jnp.moveaxis(
          bias[0][:, slot_positions[:, :, None], slot_positions[:, None, :]], 0, 1)
      return layer_modules[i](h_anchors, sub_mask.astype(cfg.dtype), sub_bias, deterministic)

    alpha, beta = scalars[i]() if scalars[i] is not None else (1.0, 1.0)
    return sequence.sequence_altup_step(
        h, on_anchors, stride, cfg.sequence_offset(i), alpha, beta, cfg.sequence_altup_mode,
        segment_ids=segment_ids, positions=positions, max_segments=max_segments, grid=grid)

  return run_layers(cfg, x, num_layers, layer_call)


def decoder_layers(cfg: AltUpConfig, y, num_layers: int, encoded, decoder_mask,
                   encoder_decoder_mask, bias, deterministic: bool, decode: bool,
                   decode_length=None, remat_layers: bool = True):
  """Decoder layers 0..num_layers-1 (`layers_{i}`, `altup_{i}`) built in the calling module;
  remat_layers as in `encoder_layers`."""
  layer_cls = (_remat(cfg, DecoderLayer, static_argnums=(5, 6, 7)) if remat_layers
               else DecoderLayer)
  layer_modules = [layer_cls(cfg, cfg.is_sparse_layer(i), name=f'layers_{i}')
                   for i in range(num_layers)]
  return run_layers(cfg, y, num_layers, lambda i, h: layer_modules[i](
      h, encoded, decoder_mask, encoder_decoder_mask, bias, deterministic, decode, decode_length))


class EncoderLayerGroup(nn.Module):
  """`num_layers` consecutive encoder layers: the body of the scanned encoder (carry, None)."""
  config: AltUpConfig
  num_layers: int = 1
  max_segments: int = 1
  grid: bool = False

  @nn.compact
  def __call__(self, x, mask, bias, segment_ids, positions, deterministic):
    return encoder_layers(self.config, x, self.num_layers, mask, bias, segment_ids, positions,
                          self.max_segments, deterministic, remat_layers=False,
                          grid=self.grid), None


class DecoderLayerGroup(nn.Module):
  """`num_layers` consecutive decoder layers: the body of the scanned decoder (carry, None)."""
  config: AltUpConfig
  num_layers: int = 1

  @nn.compact
  def __call__(self, y, encoded, decoder_mask, encoder_decoder_mask, bias, deterministic, decode,
               decode_length=None):
    return decoder_layers(self.config, y, self.num_layers, encoded, decoder_mask,
                          encoder_decoder_mask, bias, deterministic, decode, decode_length,
                          remat_layers=False), None


def scanned(module: nn.Module, group_cls, stack_layers: int, num_args: int, static_argnums,
            **attrs):
  """The stack's layers as one scan over groups of `layer_period` layers (scalable_t5's layout:
  parameters stacked at `param_scan_axis` on the 'layers' logical axis, caches and sown
  intermediates at axis 0; every call argument broadcast to all groups). Under a remat policy the
  whole group body, AltUp's predict/correct included, is rematerialised (scalable_t5 remats its
  scan body too): the backward pass keeps one [b, l, K, d] carry per group."""
  cfg = module.config
  period = attrs.get('num_layers')
  axis = cfg.param_scan_axis
  params_spec = axis if module.is_mutable_collection('params') else nn_partitioning.ScanIn(axis)
  return nn_partitioning.scan_with_axes(
      _remat(cfg, group_cls, static_argnums),
      variable_axes={'params': params_spec, 'cache': 0, 'intermediates': 0},
      split_rngs={'params': True, 'dropout': True},
      in_axes=(nn.broadcast,) * num_args,
      length=stack_layers // period,
      axis_name='layers')(config=cfg, name='layers', **attrs)


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
    elif cfg.altup_embedding == 'projected':  # [b, l, d] -> [b, l, k, d]
      x = altup.project_streams(x, self._stream_maps('altup_embed_projection')).astype(cfg.dtype)
    else:
      x = altup.replicate(x, cfg.altup_k)  # [b, l, d] -> [b, l, k, d]
    return with_sharding_constraint(x, BLOCK_AXES)

  def _stream_maps(self, name: str):
    """K-1 learned d x d maps of blocks 1..K-1 ('projected' embedding, 'unproject' reduction),
    initialised at the identity so that the K blocks start equal."""
    k, d = self.config.altup_k, self.config.emb_dim
    init = lambda rng, shape, dtype: jnp.broadcast_to(jnp.eye(d, dtype=dtype), shape)
    return param_with_axes(name, init, (k - 1, d, d), jnp.float32,
                           axes=('altup_blocks', 'embed', 'altup_embed_out'))

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
      if cfg.altup_reduction == 'unproject':
        x = altup.unproject_streams(x, self._stream_maps('altup_unembed_projection'))
      else:
        x = altup.reduce_blocks(x, cfg.altup_reduction, projection)
      x = x.astype(cfg.dtype)
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
    # Sequence-AltUp follows each segment's own positions (packed rows); unpacked: one segment.
    if encoder_segment_ids is None:
      segment_ids, max_segments = (encoder_input_tokens > 0).astype(jnp.int32), 1
      positions = jnp.broadcast_to(jnp.arange(length), encoder_input_tokens.shape)
    else:
      segment_ids, max_segments = encoder_segment_ids, cfg.sequence_altup_max_segments
      positions = (sequence.segment_positions(segment_ids) if encoder_positions is None
                   else encoder_positions)
    x = begin_stream(cfg, x)
    grid = encoder_segment_ids is None
    if cfg.scan_layers:
      x, _ = scanned(self, EncoderLayerGroup, self.num_layers, 5, (5,),
                     num_layers=cfg.layer_period(encoder=True), max_segments=max_segments,
                     grid=grid)(x, encoder_mask, bias, segment_ids, positions, deterministic)
    else:
      x = encoder_layers(cfg, x, self.num_layers, encoder_mask, bias, segment_ids, positions,
                         max_segments, deterministic, grid=grid)
    return self.finish(end_stream(cfg, x), deterministic)


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
    y = begin_stream(cfg, self.embed(decoder_input_tokens, deterministic))
    if cfg.scan_layers:
      y, _ = scanned(self, DecoderLayerGroup, self.num_layers, 7, (5, 6, 7),
                     num_layers=cfg.layer_period(encoder=False))(
                         y, encoded, decoder_mask, encoder_decoder_mask, bias, deterministic, decode,
                         length)
    else:
      y = decoder_layers(cfg, y, self.num_layers, encoded, decoder_mask, encoder_decoder_mask,
                         bias, deterministic, decode, length)
    y = self.finish(end_stream(cfg, y), deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1]).astype(cfg.dtype)
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, dtype=jnp.float32, kernel_axes=('embed', 'vocab'),
                                   name='logits_dense')(y)
    return with_sharding_constraint(logits, ('batch', 'length', 'vocab'))


class Transformer(nn.Module):
  """AltUp T5.1.1 encoder-decoder; drop-in for T5X's `t5x.examples.t5.network.Transformer`."""
  config: AltUpConfig

  @property
  def scan_layers(self) -> bool:
    """T5X's models.py and utils.py read `module.scan_layers` (cached decoding then expects the
    cache's batch axis at 1, after the stacked layer axis), as for scalable_t5."""
    return self.config.scan_layers

  def setup(self):
    cfg = self.config
    if not isinstance(cfg, AltUpConfig):
      raise TypeError(f'Transformer.config must be an altup_t5x AltUpConfig, got {type(cfg)!r}.')
    self.shared_embedding = layers.Embed(num_embeddings=cfg.vocab_size, features=cfg.embedding_dim,
                                         dtype=cfg.dtype, one_hot=cfg.one_hot_embedding,
                                         name='token_embedder')
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

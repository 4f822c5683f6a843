"""One frozen configuration for the T5.1.1 encoder-decoder and its AltUp settings.

Field names of the T5.1.1 part follow T5X's `t5x.examples.t5.network.T5Config`, so gin files written
for T5X carry over. The AltUp fields are described in the README ("AltUp settings") and in
`altup_t5x.altup`. Every value is checked in `AltUpConfig.__post_init__`, so a bad setting fails when
the config is built (for gin: when the model is built), long before anything is compiled.
"""
import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple

import jax.numpy as jnp

SELECTIONS = ('alternating', 'same')
LAYER_INPUTS = ('input', 'predicted')
EMBEDDINGS = ('wide', 'recycled', 'projected')
REDUCTIONS = ('mean', 'sum', 'projection', 'unproject')
COEF_INITS = ('identity', 'normal', 'gemma3n')
COEFFICIENTS = ('static', 'dynamic')
CORRECT_ROUTERS = ('input', 'output')
SEQUENCE_MODES = ('predict_correct', 'skip')
MOE_ROUTINGS = ('top_k', 'expert_choice')
ACTIVATIONS = ('gelu', 'linear', 'relu', 'silu', 'swish', 'tanh')
DTYPES = ('float32', 'bfloat16', 'float16')
REMAT_POLICIES = ('none', 'minimal', 'full')
PARAM_SCAN_AXES = (0, 1)

# T5.1.1 sizes as in T5X's `t5x/examples/t5/t5_1_1/*.gin` (small, base, large, xl, xxl); `tiny` is
# the size T5X uses in its own end-to-end tests.
SIZES = {
    'tiny': dict(emb_dim=8, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                 head_dim=3, mlp_dim=16),
    'small': dict(emb_dim=512, num_heads=6, num_encoder_layers=8, num_decoder_layers=8,
                  head_dim=64, mlp_dim=1024),
    'base': dict(emb_dim=768, num_heads=12, num_encoder_layers=12, num_decoder_layers=12,
                 head_dim=64, mlp_dim=2048),
    'large': dict(emb_dim=1024, num_heads=16, num_encoder_layers=24, num_decoder_layers=24,
                  head_dim=64, mlp_dim=2816),
    'xl': dict(emb_dim=2048, num_heads=32, num_encoder_layers=24, num_decoder_layers=24,
               head_dim=64, mlp_dim=5120),
    'xxl': dict(emb_dim=4096, num_heads=64, num_encoder_layers=24, num_decoder_layers=24,
                head_dim=64, mlp_dim=10240),
}


class ConfigError(ValueError):
  """A setting has a value outside what it allows; the message names both."""


class RunnerError(ValueError):
  """A problem with the run's configuration, found before anything is compiled."""


def _check_choice(name: str, value: Any, allowed: Sequence[str]):
  if value not in allowed:
    raise ConfigError(f'AltUpConfig.{name}={value!r} is not supported; allowed values: '
                      f'{", ".join(repr(a) for a in allowed)}.')


def _check_int(name: str, value: Any, minimum: int):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(f'AltUpConfig.{name}={value!r} must be an integer >= {minimum}.')


def _check_rate(name: str, value: Any):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
    raise ConfigError(f'AltUpConfig.{name}={value!r} must be a number in [0, 1).')


def _check_positive(name: str, value: Any):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
    raise ConfigError(f'AltUpConfig.{name}={value!r} must be a number > 0.')


def dtype_name(dtype: Any) -> str:
  """'float32' for jnp.float32, 'float32', np.dtype('float32'), ..."""
  try:
    return jnp.dtype(dtype).name
  except TypeError as e:
    raise ConfigError(f'AltUpConfig.dtype={dtype!r} is not a dtype; allowed: {DTYPES}.') from e


@dataclasses.dataclass(frozen=True)
class AltUpConfig:
  """T5.1.1 encoder-decoder hyperparameters plus Alternating Updates.

  T5.1.1 fields (same names and meaning as T5X's `T5Config`):
    vocab_size: size of the (shared) token vocabulary, e.g. 32128 for T5's SentencePiece model.
    dtype: activation dtype ('bfloat16' on TPU/GPU). Parameters are always float32.
    emb_dim, num_heads, head_dim, mlp_dim, num_encoder_layers, num_decoder_layers: sizes.
    mlp_activations: gated MLP activations; ('gelu', 'linear') is T5.1.1's gated-GELU.
    dropout_rate: dropout after embeddings, attention, MLP and final norm (T5X's placement).
    logits_via_embedding: tie the output projection to the embedding table (False for T5.1.1).
    float32_attention_logits: compute attention logits/softmax in float32.
    relative_attention_num_buckets, relative_attention_max_distance: T5's relative position bias.

  AltUp fields (arXiv 2301.13310, README "AltUp settings"):
    altup_k: number of blocks K. Each token is kept as K blocks of width emb_dim; every layer runs on
      one block. K=1 builds exactly the plain T5.1.1 network (no AltUp parameters at all).
    altup_selection: 'alternating' (block `layer_index mod K`, the paper's default) or 'same'
      (always block 0).
    altup_layer_input: what the layer reads: 'input' (the raw block x^{j*}, as the paper describes)
      or 'predicted' (the predicted block xhat^{j*}, as Gemma 3n does).
    altup_embedding: 'wide' (a vocab x K*emb_dim table, AltUp proper), 'recycled' (the vocab x
      emb_dim table replicated K times; Recycled-AltUp) or 'projected' (Gemma 3n's stream
      initialisation: a vocab x emb_dim table e; block 0 is e, block i >= 1 is e @ W_i rescaled to
      e's RMS magnitude, with learned emb_dim x emb_dim maps W_i initialised at the identity).
    altup_reduction: how K blocks become one before the final norm: 'mean' (default), 'sum' (the
      paper's wording for Recycled-AltUp) or 'projection' (a learned K*d -> d map, initialised to
      the mean). The default is 'mean' because the final RMS norm makes sum and mean differ only
      in how its epsilon is scaled, and mean keeps an identity-initialised Recycled model exactly
      equal to its K=1 counterpart. 'unproject' is Gemma 3n's: block i >= 1 through a learned
      emb_dim x emb_dim map U_i (identity at init), rescaled to block 0's RMS magnitude, then the
      mean of all K blocks.
    altup_coef_init: 'identity' (predictor p = I, corrector g = 1: every block receives the same
      residual update; with replicated inputs the network starts equal to the baseline) or
      'normal' (identity plus N(0, altup_coef_init_scale) noise) or, for dynamic coefficients,
      'gemma3n' (Gemma 3n's: predictor weights ~ N(0, 1e-4), corrector weights ~ N(0, 1e-2)).
    altup_coef_init_scale: standard deviation of the noise for altup_coef_init='normal'.
    altup_coefficients: 'static' (learned K*K + K scalars per layer, the paper) or 'dynamic'
      (per-token coefficients from a small router r(h) = tanh(W_r rmsnorm(h) / d), as Gemma 3n:
      P = I + clip(W_p) r(x_active), g = 1 + clip(W_g) r(h_g), h_g set by altup_correct_router).
    altup_coef_clip: the dynamic coefficients' weights W_p and W_g are clipped to +-altup_coef_clip
      in the forward pass (the weights themselves are never modified; Gemma 3n uses 120).
    altup_correct_router: what the corrector's router reads (dynamic coefficients): 'input' (the
      layer's input active block, the same router output as the predictor's: one router pass per
      layer) or 'output' (the layer's output xtilde, with the same router weights and norm: Gemma
      3n's corrector).
    altup_fused_updates: True (default) carries the stream between layers with its correction
      deferred, y = z + g (x) delta, so that the correct of layer i and the predict of layer i+1
      are one pass over the [b, l, K, d] stream (P (z + g (x) delta) = P z + (P g) (x) delta);
      False runs the textbook predict / layer / correct per layer (two passes), kept as the
      reference the fused path is tested against. Both compute the same function.

  Sequence-AltUp (encoder only; see `altup_t5x.sequence`):
    sequence_altup_stride: s > 1 runs each encoder layer on every s-th position only (the offset
      alternates with the layer index); 1 disables it.
    sequence_altup_mode: 'predict_correct' (skipped tokens predicted from themselves and corrected
      with the innovation of their anchor, learned scalars) or 'skip' (stride-and-skip: skipped
      tokens left unchanged, the naive comparison).
    sequence_altup_max_segments: the most examples a packed encoder row is expected to hold; sets
      the static anchor capacity of packed rows (floor((l + k (s-1-o)) / s) slots). A row holding
      more short examples may overflow it: its last anchors are dropped (their windows left
      unchanged by that layer), as MoE drops tokens over capacity. Unpacked rows never overflow.

  Scaling (as T5X's `t5x/examples/scalable_t5`; see `altup_t5x.network`):
    scan_layers: run each stack as one `nn.scan` over groups of `layer_period` layers, parameters
      stacked on a 'layers' logical axis (checkpoints convert with `altup_t5x.scan_convert`).
    param_scan_axis: where the 'layers' axis is inserted into each stacked parameter (0 or 1;
      scalable_t5's default is 1).
    remat_policy: what a layer keeps for the backward pass: 'none' (everything), 'minimal' (matmul
      outputs without batch dims, `jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims`),
      'full' (only its inputs: the layer is recomputed).
    one_hot_embedding: the token lookup as a one-hot matmul (T5X's choice on TPU, where it
      partitions along the vocab axis) instead of a gather; numerically equal.

  Sparse Mixture-of-Experts MLP (see `altup_t5x.moe`):
    moe_num_experts: 0 (dense everywhere) or the number of experts E of the sparse layers.
    moe_every: every moe_every-th layer (1-based: layers moe_every-1, 2*moe_every-1, ...) is sparse.
    moe_routing: 'top_k' (token choice; moe_top_k=1 is Switch routing) or 'expert_choice'.
    moe_decoder_routing: the decoder's routing; None: moe_routing. Only 'top_k' is allowed where
      the decoder has MoE layers: expert choice is not causal (an expert picks among all positions,
      so a token's output would depend on later tokens). Expert choice in the encoder with a
      token-choice decoder: moe_routing='expert_choice', moe_decoder_routing='top_k'.
    moe_top_k: experts per token for token-choice routing.
    moe_capacity_factor: expert capacity = ceil(capacity_factor * tokens_per_group * top_k / E).
    moe_aux_loss_coef, moe_z_loss_coef: weights of the load-balancing and router z-losses.
  """
  vocab_size: int
  dtype: Any = jnp.float32
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.1
  logits_via_embedding: bool = False
  float32_attention_logits: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  # AltUp.
  altup_k: int = 1
  altup_selection: str = 'alternating'
  altup_layer_input: str = 'input'
  altup_embedding: str = 'wide'
  altup_reduction: str = 'mean'
  altup_coef_init: str = 'identity'
  altup_coef_init_scale: float = 0.01
  altup_coefficients: str = 'static'
  altup_coef_clip: float = 120.0
  altup_correct_router: str = 'input'
  altup_fused_updates: bool = True
  # Sequence-AltUp.
  sequence_altup_stride: int = 1
  sequence_altup_mode: str = 'predict_correct'
  sequence_altup_max_segments: int = 8
  # Mixture of experts.
  moe_num_experts: int = 0
  moe_every: int = 2
  moe_routing: str = 'top_k'
  moe_decoder_routing: Optional[str] = None
  moe_top_k: int = 1
  moe_capacity_factor: float = 1.25
  moe_aux_loss_coef: float = 1e-2
  moe_z_loss_coef: float = 1e-4
  # Scaling.
  scan_layers: bool = False
  param_scan_axis: int = 1
  remat_policy: str = 'none'
  one_hot_embedding: bool = False

  def __post_init__(self):
    _check_int('vocab_size', self.vocab_size, 1)
    for name in ('emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'relative_attention_num_buckets',
                 'relative_attention_max_distance'):
      _check_int(name, getattr(self, name), 1)
    for name in ('num_encoder_layers', 'num_decoder_layers'):
      _check_int(name, getattr(self, name), 0)
    _check_choice('dtype', dtype_name(self.dtype), DTYPES)
    if isinstance(self.mlp_activations, str) or not self.mlp_activations:
      raise ConfigError(f'AltUpConfig.mlp_activations={self.mlp_activations!r} must be a non-empty '
                        f'tuple of names from {ACTIVATIONS}.')
    for act in self.mlp_activations:
      _check_choice('mlp_activations', act, ACTIVATIONS)
    _check_rate('dropout_rate', self.dropout_rate)
    _check_int('altup_k', self.altup_k, 1)
    _check_choice('altup_selection', self.altup_selection, SELECTIONS)
    _check_choice('altup_layer_input', self.altup_layer_input, LAYER_INPUTS)
    _check_choice('altup_embedding', self.altup_embedding, EMBEDDINGS)
    _check_choice('altup_reduction', self.altup_reduction, REDUCTIONS)
    _check_choice('altup_coef_init', self.altup_coef_init, COEF_INITS)
    if (isinstance(self.altup_coef_init_scale, bool) or
        not isinstance(self.altup_coef_init_scale, (int, float)) or self.altup_coef_init_scale < 0):
      raise ConfigError(f'AltUpConfig.altup_coef_init_scale={self.altup_coef_init_scale!r} must be '
                        'a number >= 0.')
    _check_choice('altup_coefficients', self.altup_coefficients, COEFFICIENTS)
    _check_positive('altup_coef_clip', self.altup_coef_clip)
    _check_choice('altup_correct_router', self.altup_correct_router, CORRECT_ROUTERS)
    if self.altup_coef_init == 'gemma3n' and self.altup_coefficients != 'dynamic':
      raise ConfigError("AltUpConfig.altup_coef_init='gemma3n' initialises the weights of dynamic "
                        "coefficients; it needs altup_coefficients='dynamic' (static "
                        "coefficients: 'identity' or 'normal').")
    _check_int('sequence_altup_stride', self.sequence_altup_stride, 1)
    _check_choice('sequence_altup_mode', self.sequence_altup_mode, SEQUENCE_MODES)
    _check_int('sequence_altup_max_segments', self.sequence_altup_max_segments, 1)
    _check_int('moe_num_experts', self.moe_num_experts, 0)
    if self.moe_num_experts == 1:
      raise ConfigError('AltUpConfig.moe_num_experts=1 is not a mixture; use 0 (dense) or >= 2.')
    _check_int('moe_every', self.moe_every, 1)
    _check_choice('moe_routing', self.moe_routing, MOE_ROUTINGS)
    if self.moe_decoder_routing is not None:
      _check_choice('moe_decoder_routing', self.moe_decoder_routing, MOE_ROUTINGS)
    if (self.decoder_moe_routing == 'expert_choice' and
        any(self.is_sparse_layer(i) for i in range(self.num_decoder_layers))):
      raise ConfigError(
          f"AltUpConfig.moe_routing={self.moe_routing!r}, moe_decoder_routing="
          f"{self.moe_decoder_routing!r} would use expert-choice routing in the decoder's MoE "
          "layers, which is not causal (each expert picks its tokens among all positions, so a "
          "token's output depends on later tokens and cached decoding cannot reproduce training). "
          "Expert choice is for the encoder: set moe_decoder_routing='top_k'.")
    _check_int('moe_top_k', self.moe_top_k, 1)
    if self.moe_num_experts and self.moe_top_k > self.moe_num_experts:
      raise ConfigError(f'AltUpConfig.moe_top_k={self.moe_top_k} exceeds moe_num_experts='
                        f'{self.moe_num_experts}.')
    for name in ('moe_capacity_factor',):
      _check_positive(name, getattr(self, name))
    for name in ('moe_aux_loss_coef', 'moe_z_loss_coef'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f'AltUpConfig.{name}={value!r} must be a number >= 0.')
    for name in ('scan_layers', 'one_hot_embedding', 'altup_fused_updates'):
      if not isinstance(getattr(self, name), bool):
        raise ConfigError(f'AltUpConfig.{name}={getattr(self, name)!r} must be True or False.')
    if isinstance(self.param_scan_axis, bool) or self.param_scan_axis not in PARAM_SCAN_AXES:
      raise ConfigError(f'AltUpConfig.param_scan_axis={self.param_scan_axis!r} is not supported; '
                        f'allowed values: 0, 1.')
    _check_choice('remat_policy', self.remat_policy, REMAT_POLICIES)
    if self.scan_layers:
      for name, period in (('num_encoder_layers', self.layer_period(encoder=True)),
                           ('num_decoder_layers', self.layer_period(encoder=False))):
        if getattr(self, name) % period:
          raise ConfigError(
              f'AltUpConfig.scan_layers=True scans groups of {period} layers (the period of the '
              f'active block, MoE layers and Sequence-AltUp offsets), but {name}='
              f'{getattr(self, name)} is not a multiple of {period}; use scan_layers=False.')
    if self.logits_via_embedding and self.altup_k > 1 and self.altup_embedding == 'wide':
      raise ConfigError('AltUpConfig.logits_via_embedding=True needs a vocab x emb_dim table, but '
                        "altup_embedding='wide' with altup_k > 1 makes it vocab x (altup_k*emb_dim); "
                        "use altup_embedding='recycled' or logits_via_embedding=False.")
    # Normalise containers so the config stays hashable (flax modules hash their attributes).
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))

  # Derived sizes: computed here only.
  @property
  def use_altup(self) -> bool:
    return self.altup_k > 1

  @property
  def embedding_dim(self) -> int:
    """Width of the token embedding table."""
    return self.emb_dim * (self.altup_k if self.altup_embedding == 'wide' else 1)

  @property
  def widened_dim(self) -> int:
    """Width of the AltUp-widened representation, K * emb_dim."""
    return self.emb_dim * self.altup_k

  @property
  def decoder_moe_routing(self) -> str:
    """The routing of the decoder's MoE layers."""
    return self.moe_routing if self.moe_decoder_routing is None else self.moe_decoder_routing

  def is_sparse_layer(self, layer_index: int) -> bool:
    """Whether a layer's MLP is a mixture of experts."""
    return self.moe_num_experts > 0 and layer_index % self.moe_every == self.moe_every - 1

  def sequence_offset(self, layer_index: int) -> int:
    """The first computed position of an encoder layer under Sequence-AltUp."""
    return layer_index % self.sequence_altup_stride

  def layer_period(self, encoder: bool = True) -> int:
    """The smallest P such that layer i and layer i + P are built alike (same active block, MoE
    or dense MLP, Sequence-AltUp offset): the body of a scanned stack."""
    period = self.altup_k if self.altup_selection == 'alternating' else 1
    if self.moe_num_experts:
      period = math.lcm(period, self.moe_every)
    if encoder and self.sequence_altup_stride > 1:
      period = math.lcm(period, self.sequence_altup_stride)
    return period

  def active_block(self, layer_index: int) -> int:
    """The block j* a layer runs on."""
    if self.altup_selection == 'same':
      return 0
    return layer_index % self.altup_k

  @classmethod
  def from_size(cls, size: str, **overrides) -> 'AltUpConfig':
    """A config of one of the T5.1.1 SIZES, with any field overridden."""
    if size not in SIZES:
      raise ConfigError(f'size={size!r} is not one of {", ".join(map(repr, SIZES))}.')
    kwargs = dict(vocab_size=32128)
    kwargs.update(SIZES[size])
    kwargs.update(overrides)
    return cls(**kwargs)

  def replace(self, **changes) -> 'AltUpConfig':
    return dataclasses.replace(self, **changes)

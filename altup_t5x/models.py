"""`EncoderDecoderModel`: T5X's model API (same method names and semantics) around `Transformer`.

The wrapper owns everything that is not the network: the loss (cross-entropy with z-loss, label
smoothing and a loss normalizing factor), evaluation metrics, decoding with the network's cache
(greedy and beam search, `altup_t5x.decoding`) and scoring. It works with any module that has
T5X's encoder-decoder network interface (`__call__`, `encode`, `decode`, as
`t5x.examples.t5.network.Transformer` has them).

    model = EncoderDecoderModel(Transformer(config=cfg), vocab, vocab, z_loss=1e-4)
    variables = model.get_initial_variables(rng, {'encoder_input_tokens': (2, 16),
                                                  'decoder_input_tokens': (2, 8)})
    loss, metrics = model.loss_fn(variables['params'], batch, dropout_rng)
    decodes, aux = model.predict_batch_with_aux(variables['params'], batch, num_decodes=4)
"""
import functools
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from altup_t5x import decoding
from altup_t5x import losses
from altup_t5x import moe

PyTree = Any
Batch = Mapping[str, jnp.ndarray]

DECODE_METHODS = ('beam_search', 'greedy')


class EncoderDecoderModel:
  """T5X-style encoder-decoder model.

  Attributes:
    module: the flax network (T5X's encoder-decoder interface).
    input_vocabulary, output_vocabulary: seqio vocabularies.
    optimizer: an optax GradientTransformation (bound by the model gin, as T5X's `optimizer_def`).
    decode_fn: 'beam_search' (T5X's default) or 'greedy'.
    label_smoothing, z_loss, loss_normalizing_factor: see `altup_t5x.losses`.
    default_decoder_params: defaults for `predict_batch_with_aux(decoder_params=...)`, e.g.
      {'alpha': 0.6}.
  """
  FEATURE_CONVERTER_CLS = None  # seqio.EncDecFeatureConverter; set lazily to keep seqio optional.

  def __init__(self, module: nn.Module, input_vocabulary=None, output_vocabulary=None,
               optimizer=None, decode_fn: str = 'beam_search', label_smoothing: float = 0.0,
               z_loss: float = 0.0, loss_normalizing_factor: losses.LossNormalizingFactor = None,
               default_decoder_params: Optional[Mapping[str, Any]] = None):
    if decode_fn not in DECODE_METHODS:
      raise ValueError(f'EncoderDecoderModel.decode_fn={decode_fn!r} is not supported; allowed: '
                       f'{DECODE_METHODS}.')
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f'EncoderDecoderModel.label_smoothing={label_smoothing!r} must be in [0, 1).')
    losses.check_loss_normalizing_factor(loss_normalizing_factor)
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary
    self.optimizer = optimizer
    self.decode_fn = decode_fn
    self.label_smoothing = label_smoothing
    self.z_loss = z_loss
    self.loss_normalizing_factor = loss_normalizing_factor
    self.default_decoder_params = dict(default_decoder_params or {})
    vocab_size = getattr(getattr(module, 'config', None), 'vocab_size', None)
    if output_vocabulary is not None and vocab_size is not None:
      for name, v in (('input', input_vocabulary), ('output', output_vocabulary)):
        if v is not None and v.vocab_size > vocab_size:
          raise ValueError(
              f'The {name} vocabulary has {v.vocab_size} ids but the network embeds only '
              f'{vocab_size} (AltUpConfig.vocab_size / gin NUM_EMBEDDINGS): set NUM_EMBEDDINGS '
              f'>= {v.vocab_size}.')

  @property
  def eos_id(self) -> int:
    return 1 if self.output_vocabulary is None else self.output_vocabulary.eos_id

  @classmethod
  def feature_converter(cls, pack: bool = True):
    import seqio  # pylint: disable=g-import-not-at-top
    return seqio.EncDecFeatureConverter(pack=pack)

  # ----------------------------------------------------------------------------------------------
  # Initialisation and forward pass.

  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Tuple[int, ...]],
                            input_types: Optional[Mapping[str, Any]] = None) -> PyTree:
    """Returns {'params': ..., 'params_axes': ...} for inputs of the given shapes."""
    input_types = input_types or {}
    enc_shape = input_shapes['encoder_input_tokens']
    dec_shape = input_shapes.get('decoder_input_tokens', input_shapes.get('decoder_target_tokens'))
    enc_type = input_types.get('encoder_input_tokens', jnp.int32)
    dec_type = input_types.get('decoder_input_tokens', jnp.int32)
    params_rng, dropout_rng = jax.random.split(rng)
    return self.module.init({'params': params_rng, 'dropout': dropout_rng},
                            jnp.ones(enc_shape, enc_type), jnp.ones(dec_shape, dec_type),
                            jnp.ones(dec_shape, dec_type), enable_dropout=False)

  def _compute_logits(self, params: PyTree, batch: Batch,
                      dropout_rng: Optional[jax.Array] = None, mutable=False):
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
        {'params': params},
        batch['encoder_input_tokens'], batch['decoder_input_tokens'],
        batch['decoder_target_tokens'],
        encoder_segment_ids=batch.get('encoder_segment_ids'),
        decoder_segment_ids=batch.get('decoder_segment_ids'),
        encoder_positions=batch.get('encoder_positions'),
        decoder_positions=batch.get('decoder_positions'),
        enable_dropout=dropout_rng is not None, rngs=rngs, mutable=mutable)

  # ----------------------------------------------------------------------------------------------
  # Loss and evaluation.

  def loss_fn(self, params: PyTree, batch: Batch, dropout_rng: Optional[jax.Array]
              ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
    """Loss (normalised as configured) and metric sums; dropout on iff dropout_rng is given.

    Mixture-of-experts layers add their load-balancing and router z-losses (mean over MoE layers
    times the config's moe_aux_loss_coef / moe_z_loss_coef), as T5X's MoeEncoderDecoderModel does.
    """
    logits, state = self._compute_logits(params, batch, dropout_rng, mutable=['intermediates'])
    loss, metrics = losses.weighted_loss_and_metrics(
        logits, batch['decoder_target_tokens'], batch.get('decoder_loss_weights'),
        label_smoothing=self.label_smoothing, z_loss=self.z_loss,
        loss_normalizing_factor=self.loss_normalizing_factor,
        segment_ids=batch.get('decoder_segment_ids'))
    cfg = getattr(self.module, 'config', None)
    if cfg is not None and getattr(cfg, 'moe_num_experts', 0):
      aux, router_z = moe.aux_losses(state.get('intermediates', {}), cfg.moe_aux_loss_coef,
                                     cfg.moe_z_loss_coef)
      loss = loss + aux + router_z
      metrics['loss'] = loss
      metrics['moe_aux_loss'] = aux + router_z
    return loss, metrics

  def eval_fn(self, params: PyTree, batch: Batch) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
    """As loss_fn without dropout; metrics aggregate with `losses.summarize_metrics`."""
    return self.loss_fn(params, batch, dropout_rng=None)

  def score_batch(self, params: PyTree, batch: Batch, return_intermediates: bool = False
                  ) -> Union[jnp.ndarray, Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]]:
    """Log-likelihood of each target sequence, [b] (sum over tokens weighted by loss weights)."""
    logits = self._compute_logits(params, batch).astype(jnp.float32)
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights')
    if weights is None:
      weights = targets > 0
    logp = jax.nn.log_softmax(logits, axis=-1)
    token_scores = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    token_scores = token_scores * weights.astype(jnp.float32)
    sequence_scores = jnp.sum(token_scores, axis=-1)
    if return_intermediates:
      return sequence_scores, {'token_scores': token_scores}
    return sequence_scores

  # ----------------------------------------------------------------------------------------------
  # Decoding.

  def _init_cache(self, params: PyTree, encoder_shape, decoder_shape) -> PyTree:
    """The network's empty decoding cache for batch rows `decoder_shape[0]`."""
    _, variables = self.module.apply(
        {'params': params},
        encoder_input_tokens=jnp.ones(encoder_shape, jnp.int32),
        decoder_input_tokens=jnp.ones(decoder_shape, jnp.int32),
        decoder_target_tokens=jnp.ones(decoder_shape, jnp.int32),
        decode=True, enable_dropout=False, mutable=['cache'])
    return variables['cache']

  def predict_batch(self, params: PyTree, batch: Batch, rng: Optional[jax.Array] = None
                    ) -> jnp.ndarray:
    """Best decode per example, [b, target_length]."""
    return self.predict_batch_with_aux(params, batch, rng)[0]

  def predict_batch_with_aux(self, params: PyTree, batch: Batch, rng: Optional[jax.Array] = None,
                             decoder_params: Optional[Mapping[str, Any]] = None,
                             return_all_decodes: bool = False, num_decodes: int = 1,
                             prompt_with_targets: bool = False
                             ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
    """Decodes the batch's inputs with the network's cache.

    The decode length is the batch's target length. With decode_fn='beam_search', `num_decodes`
    is the beam size (1 = greedy); with 'greedy' it must be 1.

    Returns:
      decodes: [b, L] (best first), or [b, num_decodes, L] with return_all_decodes.
      aux: {'scores': [b] or [b, num_decodes]} (length-penalised log-likelihoods).
    """
    del rng  # Both methods are deterministic.
    if prompt_with_targets:
      raise NotImplementedError('prompt_with_targets is not supported by this runner.')
    params_ = dict(self.default_decoder_params)
    params_.update(decoder_params or {})
    method = params_.pop('decode_fn', self.decode_fn)
    alpha = params_.pop('alpha', 0.6)
    if params_:
      raise ValueError(f'Unknown decoder_params {sorted(params_)}; allowed: decode_fn, alpha.')
    if method == 'greedy' and num_decodes != 1:
      raise ValueError('decode_fn=greedy returns one decode: set num_decodes=1 or use beam_search.')

    encoder_tokens = batch['encoder_input_tokens']
    batch_size = encoder_tokens.shape[0]
    length = batch['decoder_input_tokens'].shape[1]
    rows = batch_size * num_decodes
    cache = self._init_cache(params, (rows,) + encoder_tokens.shape[1:], (rows, length))
    encoded = self.module.apply({'params': params}, encoder_tokens, enable_dropout=False,
                                method=self.module.encode)
    encoded = decoding.expand_beams(encoded, num_decodes)
    encoder_tokens = decoding.expand_beams(encoder_tokens, num_decodes)

    def tokens_to_logits(token_ids, cache, step):
      del step  # The network tracks its position in `cache_index`.
      logits, new_vars = self.module.apply(
          {'params': params, 'cache': cache}, encoded, encoder_tokens, token_ids, token_ids,
          enable_dropout=False, decode=True, max_decode_length=length, mutable=['cache'],
          method=self.module.decode)
      return logits[:, -1, :], new_vars['cache']

    # Scanned layers stack the cache on a leading layer axis (T5X's `cache_offset`).
    scanned = bool(getattr(self.module, 'scan_layers', False))
    if method == 'greedy':
      seqs, scores = decoding.greedy_search(cache, tokens_to_logits, batch_size=batch_size,
                                            max_decode_len=length, eos_id=self.eos_id)
      seqs, scores = seqs[:, None], scores[:, None]
    else:
      seqs, scores = decoding.beam_search(cache, tokens_to_logits, batch_size=batch_size,
                                          beam_size=num_decodes, max_decode_len=length,
                                          eos_id=self.eos_id, alpha=alpha,
                                          cache_offset=1 if scanned else 0)
    if return_all_decodes:
      return seqs, {'scores': scores}
    return seqs[:, 0], {'scores': scores[:, 0]}


def count_params(params: PyTree) -> int:
  """Number of parameters in a tree of arrays, `jax.ShapeDtypeStruct`s or shape tuples.

  Shapes count as well as arrays so that the planner (abstract shapes) and the checkpoint
  converter (a checkpoint's shapes, read before any tensor) count like the trainer.
  """
  is_shape = lambda x: isinstance(x, tuple) and all(isinstance(d, (int, np.integer)) for d in x)
  leaves = jax.tree_util.tree_leaves(params, is_leaf=is_shape)
  return sum(math.prod(int(d) for d in (x if is_shape(x) else np.shape(x))) for x in leaves)

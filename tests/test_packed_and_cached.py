"""Every setting under T5X's real conditions: packed encoder rows and cached decoding.

- packed == alone: several examples packed into one encoder row (segment ids and positions as
  T5X's feature converter makes them) give each example exactly the encoding it gets alone;
- decoder causality: changing later decoder inputs never changes an earlier position's logits;
- cached greedy decoding equals the argmax of the teacher-forced pass, token by token, for every
  MoE setting (with our decoder, and with T5X's `predict_batch` where T5X is importable).
"""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from altup_t5x import models, moe
from altup_t5x.config import ConfigError
from altup_t5x.network import Transformer

make_config = functools.partial(tiny_config, num_encoder_layers=3)  # TINY, 3 encoder layers
BIG_CAPACITY = dict(moe_capacity_factor=100.0)  # no token is ever dropped
ENCODER_SETTINGS = {
    'dense': {},
    'altup_k2': dict(altup_k=2),
    'recycled_k2': dict(altup_k=2, altup_embedding='recycled'),
    'dynamic_k2': dict(altup_k=2, altup_coefficients='dynamic'),
    **{f'sequence_s{s}': dict(altup_k=2, sequence_altup_stride=s) for s in (2, 3, 4)},
    **{f'stride_skip_s{s}': dict(sequence_altup_stride=s, sequence_altup_mode='skip')
       for s in (2, 3, 4)},
    'moe_top2': dict(altup_k=2, moe_num_experts=4, moe_every=2, moe_top_k=2, **BIG_CAPACITY),
    'moe_top1_every_layer': dict(moe_num_experts=4, moe_every=1, moe_top_k=1, **BIG_CAPACITY),
    'moe_expert_choice_encoder': dict(altup_k=2, moe_num_experts=4, moe_every=1,
                                      moe_routing='expert_choice', moe_decoder_routing='top_k',
                                      **BIG_CAPACITY),
}
SEGMENT_LENGTHS = (5, 3, 1, 4, 2)  # odd lengths, one shorter than every offset > 0
ROW = 17  # 15 tokens + 2 padding


def _packed_row(seed=0):
  rng = np.random.RandomState(seed)
  examples = [rng.randint(1, 40, n) for n in SEGMENT_LENGTHS]
  tokens, segments, positions = (np.zeros((1, ROW), np.int32) for _ in range(3))
  start = 0
  for i, ex in enumerate(examples):
    tokens[0, start:start + len(ex)] = ex
    segments[0, start:start + len(ex)] = i + 1
    positions[0, start:start + len(ex)] = np.arange(len(ex))
    start += len(ex)
  alone = np.zeros((len(examples), ROW), np.int32)
  for i, ex in enumerate(examples):
    alone[i, :len(ex)] = ex
  return examples, tokens, segments, positions, alone


def _encoder(cfg):
  module = Transformer(cfg)
  dec = jnp.ones((1, 3), jnp.int32)
  params = module.init(jax.random.PRNGKey(0), jnp.ones((1, ROW), jnp.int32), dec, dec,
                       enable_dropout=False)['params']
  # Sharper routers and coefficients than the init gives, so routing differs between tokens.
  params = jax.tree_util.tree_map(lambda x: x * 2.0, params)

  @jax.jit
  def encode(tokens, segments=None, positions=None):
    return module.apply({'params': params}, tokens, segments, False, positions,
                        method=module.encode)
  return encode


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=() if n in ('sequence_s3', 'stride_skip_s2', 'moe_top2', 'altup_k2')
                 else pytest.mark.slow) for n in sorted(ENCODER_SETTINGS)])
def test_packed_row_equals_each_example_alone(name):
  examples, tokens, segments, positions, alone = _packed_row()
  encode = _encoder(make_config(**ENCODER_SETTINGS[name]))
  packed = np.asarray(encode(tokens, segments, positions))
  # T5X's `encode` gets no positions: derived from the segment ids, they are the same.
  np.testing.assert_array_equal(np.asarray(encode(tokens, segments)), packed)
  single = np.asarray(encode(alone))  # each example alone, unpacked and padded
  start = 0
  for i, ex in enumerate(examples):
    np.testing.assert_allclose(packed[0, start:start + len(ex)], single[i, :len(ex)],
                               rtol=1e-5, atol=1e-5, err_msg=f'{name}: example {i}')
    start += len(ex)


@pytest.mark.parametrize('stride,mode', [(2, 'predict_correct'),
                                         pytest.param(3, 'skip', marks=pytest.mark.slow)])
def test_sequence_altup_never_mixes_segments_even_over_capacity(stride, mode):
  """With an anchor capacity too small for the row (max_segments=1, five short segments), some
  anchors are dropped, but no segment's output ever depends on another segment's tokens."""
  _, tokens, segments, positions, _ = _packed_row()
  encode = _encoder(make_config(altup_k=2, sequence_altup_stride=stride,
                                sequence_altup_mode=mode, sequence_altup_max_segments=1))
  base = np.asarray(encode(tokens, segments, positions))
  for seg in range(1, len(SEGMENT_LENGTHS) + 1):
    changed = np.where(segments == seg, (tokens * 7 + 3) % 39 + 1, tokens)
    out = np.asarray(encode(changed, segments, positions))
    others = (segments[0] != seg) & (segments[0] > 0)
    np.testing.assert_array_equal(out[0, others], base[0, others])
    assert not np.allclose(out[0, segments[0] == seg], base[0, segments[0] == seg])


# ---------------------------------------------------------------- decoder
MOE_DECODER_SETTINGS = {  # small capacities: tokens are dropped in the teacher-forced pass
    'moe_top2_k2': dict(altup_k=2, moe_num_experts=4, moe_every=2, moe_top_k=2,
                        moe_capacity_factor=0.5),
    'moe_top2_every_layer': dict(altup_k=2, moe_num_experts=4, moe_every=1, moe_top_k=2,
                                 moe_capacity_factor=1.0),
    'moe_switch_top1': dict(moe_num_experts=4, moe_every=1, moe_top_k=1, moe_capacity_factor=0.5),
    'moe_expert_choice_encoder': dict(altup_k=2, moe_num_experts=4, moe_every=1,
                                      moe_routing='expert_choice', moe_decoder_routing='top_k',
                                      moe_capacity_factor=0.75),
}
DECODER_SETTINGS = {
    'dense': {}, 'altup_k2': dict(altup_k=2), 'dynamic_k2': dict(altup_k=2,
                                                                 altup_coefficients='dynamic'),
    'sequence_s2': dict(altup_k=2, sequence_altup_stride=2), **MOE_DECODER_SETTINGS,
}
DEC_LEN = 7


def _params(names, default):
  """Every setting; those outside `default` are marked slow (the default suite stays fast)."""
  return [pytest.param(n, marks=() if n in default else pytest.mark.slow) for n in sorted(names)]


NO_EOS = types.SimpleNamespace(eos_id=99, vocab_size=6)  # never ends early: every step decodes


def _full_model(settings, seed=0):
  cfg = make_config(vocab_size=6, **settings)
  model = models.EncoderDecoderModel(Transformer(cfg), NO_EOS, NO_EOS)
  variables = model.get_initial_variables(
      jax.random.PRNGKey(seed),
      {'encoder_input_tokens': (2, 5), 'decoder_input_tokens': (2, DEC_LEN)})
  # Sharper distributions than the init gives: well separated argmaxes, uneven routing.
  return model, jax.tree_util.tree_map(lambda x: x * 3.0, variables['params'])


def _teacher_forced(model, params, enc, dec_in, with_metrics=False):
  out = model.module.apply({'params': params}, jnp.asarray(enc), jnp.asarray(dec_in),
                           jnp.ones_like(jnp.asarray(dec_in)), enable_dropout=False,
                           mutable=['intermediates'])
  logits, state = out
  if with_metrics:
    return np.asarray(logits), state['intermediates']
  return np.asarray(logits)


ENC = np.array([[2, 3, 4, 5, 1], [4, 4, 5, 1, 0]], np.int32)


@pytest.mark.parametrize('name', _params(DECODER_SETTINGS, ('altup_k2', 'moe_top2_every_layer')))
def test_decoder_is_causal(name):
  model, params = _full_model(DECODER_SETTINGS[name])
  rng = np.random.RandomState(1)
  dec = rng.randint(2, 6, (2, DEC_LEN)).astype(np.int32)
  dec[:, 0] = 0
  base = _teacher_forced(model, params, ENC, dec)
  for t in (1, 3, 5, 6):
    changed = dec.copy()
    changed[:, t:] = (dec[:, t:] - 1) % 4 + 2  # a different token in 2..5 at t and after
    out = _teacher_forced(model, params, ENC, changed)
    np.testing.assert_allclose(out[:, :t], base[:, :t], rtol=0, atol=1e-6,
                               err_msg=f'{name}: positions < {t}')
    assert not np.allclose(out[:, t:], base[:, t:])


def test_expert_choice_in_the_decoder_is_refused():
  for settings in (dict(moe_routing='expert_choice'), dict(moe_decoder_routing='expert_choice')):
    with pytest.raises(ConfigError, match=r'decoder.*not causal.*moe_decoder_routing=.top_k.'):
      make_config(moe_num_experts=4, **settings)
  # Encoder-only expert choice, or a decoder without MoE layers, is fine.
  make_config(moe_num_experts=4, moe_routing='expert_choice', moe_decoder_routing='top_k')
  make_config(num_decoder_layers=1, moe_num_experts=4, moe_every=2, moe_routing='expert_choice')


def _greedy_reference(model, params):
  """Greedy decoding with the teacher-forced pass only (no cache): [2, DEC_LEN]."""
  seqs = np.zeros((2, DEC_LEN), np.int32)
  for t in range(DEC_LEN):
    dec_in = np.pad(seqs[:, :-1], ((0, 0), (1, 0)))
    logits = _teacher_forced(model, params, ENC, dec_in)
    seqs[:, t] = np.argmax(logits[:, t], axis=-1)
  return seqs


def _decoder_tokens_dropped(model, params, seqs):
  _, inter = _teacher_forced(model, params, ENC, np.pad(seqs[:, :-1], ((0, 0), (1, 0))), True)
  return float(moe.layer_metrics(inter['decoder'])['fraction_tokens_left_behind'])


@pytest.mark.parametrize('name', _params(MOE_DECODER_SETTINGS, ('moe_top2_k2',)))
def test_cached_greedy_equals_full_forward_argmax(name):
  model, params = _full_model(MOE_DECODER_SETTINGS[name])
  ref = _greedy_reference(model, params)
  batch = {'encoder_input_tokens': jnp.asarray(ENC),
           'decoder_input_tokens': jnp.zeros((2, DEC_LEN), jnp.int32),
           'decoder_target_tokens': jnp.zeros((2, DEC_LEN), jnp.int32)}
  greedy, _ = model.predict_batch_with_aux(params, batch, decoder_params={'decode_fn': 'greedy'})
  np.testing.assert_array_equal(np.asarray(greedy), ref)
  # Beam search reorders the cached expert counts with the beams: every returned sequence has
  # the log-likelihood the teacher-forced pass gives it.
  beams, aux = model.predict_batch_with_aux(params, batch, num_decodes=3, return_all_decodes=True,
                                            decoder_params={'alpha': 0.0})
  for k in range(3):
    seqs = np.asarray(beams[:, k])
    logp = jax.nn.log_softmax(_teacher_forced(model, params, ENC,
                                              np.pad(seqs[:, :-1], ((0, 0), (1, 0)))), axis=-1)
    want = np.take_along_axis(np.asarray(logp), seqs[..., None], -1)[..., 0].sum(-1)
    np.testing.assert_allclose(np.asarray(aux['scores'][:, k]), want, rtol=1e-4, atol=1e-4)
  assert _decoder_tokens_dropped(model, params, ref) > 0  # capacity drops were exercised


@pytest.mark.t5x
@pytest.mark.parametrize('name', _params(MOE_DECODER_SETTINGS, ('moe_top2_every_layer',)))
def test_t5x_predict_batch_equals_full_forward_argmax(name):
  """T5X's own EncoderDecoderModel.predict_batch (beam search, one beam) on our MoE network."""
  t5x_models = pytest.importorskip('t5x.models', reason='T5X is not installed (see README)')
  t5x_decoding = pytest.importorskip('t5x.decoding')
  seqio = pytest.importorskip('seqio')
  ours, params = _full_model(MOE_DECODER_SETTINGS[name])
  ref = _greedy_reference(ours, params)
  vocab = seqio.PassThroughVocabulary(size=6, eos_id=99)  # never ends early
  theirs = t5x_models.EncoderDecoderModel(ours.module, vocab, vocab, optimizer_def=None,
                                          decode_fn=t5x_decoding.beam_search)
  batch = {'encoder_input_tokens': jnp.asarray(ENC),
           'decoder_input_tokens': jnp.zeros((2, DEC_LEN), jnp.int32),
           'decoder_target_tokens': jnp.zeros((2, DEC_LEN), jnp.int32)}
  decodes, _ = theirs.predict_batch_with_aux(params, batch, num_decodes=1,
                                             decoder_params={'alpha': 0.0})
  np.testing.assert_array_equal(np.asarray(decodes), ref)
  assert _decoder_tokens_dropped(ours, params, ref) > 0

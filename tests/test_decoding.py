"""Greedy and beam search against brute-force references on a tiny real network.

The references use only the teacher-forced forward pass (no cache), so these tests also check
that cached one-token-at-a-time decoding equals the full forward pass.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from altup_t5x import decoding
from altup_t5x import models
from altup_t5x.network import Transformer

VOCAB = 5      # ids 0 (pad/bos), 1 (eos), 2, 3, 4
LENGTH = 3
EOS = 1


def _model(altup_k=2, seed=0):
  cfg = tiny_config(vocab_size=VOCAB, emb_dim=8, head_dim=4, mlp_dim=16, num_encoder_layers=1,
                    altup_k=altup_k, altup_coef_init='normal', altup_coef_init_scale=0.3)
  model = models.EncoderDecoderModel(Transformer(cfg))
  variables = model.get_initial_variables(
      jax.random.PRNGKey(seed), {'encoder_input_tokens': (2, 4), 'decoder_input_tokens': (2, LENGTH)})
  # Sharper distributions than the init gives, so argmaxes are well separated.
  params = jax.tree_util.tree_map(lambda x: x * 3.0, variables['params'])
  return model, params


ENCODER = np.array([[2, 3, 4, 1], [4, 4, 1, 0]], np.int32)


def _batch(targets):
  targets = np.asarray(targets, np.int32)
  enc = np.repeat(ENCODER[:1], len(targets), axis=0) if len(targets) != len(ENCODER) else ENCODER
  return {'encoder_input_tokens': jnp.asarray(enc), 'decoder_target_tokens': jnp.asarray(targets),
          'decoder_input_tokens': jnp.asarray(np.pad(targets[:, :-1], ((0, 0), (1, 0))))}


def _full_logp(model, params, encoder_row, prefixes):
  """log p(next | prefix) from the full forward pass, [n, LENGTH, VOCAB]."""
  prefixes = np.asarray(prefixes, np.int32)
  enc = np.repeat(encoder_row[None], len(prefixes), axis=0)
  dec_in = np.pad(prefixes[:, :-1], ((0, 0), (1, 0)))
  # Non-zero dummy targets so every position attends to the encoder.
  logits = model.module.apply({'params': params}, jnp.asarray(enc), jnp.asarray(dec_in),
                              jnp.ones_like(jnp.asarray(dec_in)), enable_dropout=False)
  return np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))


def _sequence_logp(model, params, encoder_row, seq):
  """Sum of log-probs up to and including the first EOS (or the whole length)."""
  logp = _full_logp(model, params, encoder_row, [seq])[0]
  total = 0.0
  for t, tok in enumerate(seq):
    total += logp[t, tok]
    if tok == EOS:
      break
  return total


def _all_sequences():
  """Every distinct output: tokens up to the first EOS, zeros after."""
  seen = set()
  for seq in itertools.product(range(VOCAB), repeat=LENGTH):
    seq = list(seq)
    if EOS in seq:
      i = seq.index(EOS)
      seq = seq[:i + 1] + [0] * (LENGTH - i - 1)
    seen.add(tuple(seq))
  return sorted(seen)


@pytest.mark.parametrize('altup_k', [1, 2])
def test_greedy_matches_full_forward_argmax(altup_k):
  model, params = _model(altup_k)
  batch = _batch(np.zeros((2, LENGTH)))
  decodes, aux = model.predict_batch_with_aux(params, batch, decoder_params={'decode_fn': 'greedy'})
  for b in range(2):
    prefix = [0] * LENGTH
    expected_score = 0.0
    for t in range(LENGTH):
      logp = _full_logp(model, params, ENCODER[b], [prefix])[0, t]
      tok = int(np.argmax(logp))
      prefix[t] = tok
      expected_score += logp[tok]
      if tok == EOS:
        break
    np.testing.assert_array_equal(np.asarray(decodes[b]), prefix)
    np.testing.assert_allclose(float(aux['scores'][b]), expected_score, rtol=1e-5, atol=1e-5)


def test_beam_of_one_equals_greedy():
  model, params = _model()
  batch = _batch(np.zeros((2, LENGTH)))
  greedy, g_aux = model.predict_batch_with_aux(params, batch, decoder_params={'decode_fn': 'greedy'})
  beam, b_aux = model.predict_batch_with_aux(params, batch, num_decodes=1,
                                             decoder_params={'alpha': 0.0})
  np.testing.assert_array_equal(np.asarray(greedy), np.asarray(beam))
  np.testing.assert_allclose(np.asarray(g_aux['scores']), np.asarray(b_aux['scores']), rtol=1e-5)


@pytest.mark.parametrize('alpha', [0.0, 0.6])
def test_wide_beam_finds_exhaustive_argmax(alpha):
  """A beam as wide as the whole output space returns its top sequences exactly, in order."""
  model, params = _model()
  seqs = _all_sequences()
  k = VOCAB ** LENGTH  # wider than the number of distinct prefixes: beam search is exhaustive
  batch = _batch(np.zeros((2, LENGTH)))
  decodes, aux = model.predict_batch_with_aux(params, batch, num_decodes=k,
                                              return_all_decodes=True,
                                              decoder_params={'alpha': alpha})
  for b in range(2):
    def score(s):
      length = s.index(EOS) + 1 if EOS in s else LENGTH
      return _sequence_logp(model, params, ENCODER[b], s) / ((5 + length) / 6) ** alpha
    ref = sorted(((score(list(s)), s) for s in seqs), reverse=True)
    assert ref[0][0] > ref[1][0] + 1e-4, 'the argmax must be unique for this check'
    np.testing.assert_array_equal(np.asarray(decodes[b, 0]), ref[0][1])
    # The top-5 scores are the exhaustive top-5 (ties may swap sequences), and every returned
    # sequence has the score beam search reported for it.
    top = 5
    np.testing.assert_allclose(np.asarray(aux['scores'][b, :top]), [r[0] for r in ref[:top]],
                               rtol=1e-4, atol=1e-5)
    for s, reported in zip(np.asarray(decodes[b, :top]), np.asarray(aux['scores'][b, :top])):
      np.testing.assert_allclose(score([int(t) for t in s]), reported, rtol=1e-4, atol=1e-5)


def test_narrow_beam_is_no_worse_than_greedy():
  model, params = _model(seed=3)
  batch = _batch(np.zeros((2, LENGTH)))
  _, g = model.predict_batch_with_aux(params, batch, decoder_params={'decode_fn': 'greedy'})
  _, b = model.predict_batch_with_aux(params, batch, num_decodes=3, decoder_params={'alpha': 0.0})
  assert np.all(np.asarray(b['scores']) >= np.asarray(g['scores']) - 1e-5)


def test_score_batch_matches_token_log_probs():
  model, params = _model()
  targets = np.array([[2, 3, 1], [4, 1, 0]])
  scores = model.score_batch(params, _batch(targets))
  for b in range(2):
    ref = _sequence_logp(model, params, ENCODER[b], list(targets[b]))
    np.testing.assert_allclose(float(scores[b]), ref, rtol=1e-5)


def test_gather_cache_beams_keeps_cache_index():
  cache = {'layer': {'cached_key': jnp.arange(6.0).reshape(6, 1), 'cache_index': jnp.array(4)}}
  out = decoding.gather_cache_beams(cache, jnp.array([[2, 2, 0], [1, 0, 0]]))
  np.testing.assert_array_equal(np.asarray(out['layer']['cached_key'][:, 0]), [2, 2, 0, 4, 3, 3])
  assert int(out['layer']['cache_index']) == 4

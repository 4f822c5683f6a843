"""Gemma 3n's AltUp, option for option, against a NumPy implementation of its published equations.

The equations (google-deepmind/gemma, gemma/gm/nn/gemma3n/_modules.py `AltUp` and
_transformer.py's stream initialisation and reduction), written here in NumPy float64 with
Gemma's own parameter layout:

  router    r(h)  = tanh(rmsnorm(h) (1 + s) / d @ W_r)                   rmsnorm eps 1e-6
  predict   xhat_i = x_i + sum_j (sum_m r(x_0)_m clip(W_p)[m, i, j]) x_j
  correct   y_i    = xhat_i + (1 + sum_m r(xtilde)_m clip(W_g)[m, i]) (xtilde - xhat_0)
  streams   x_0 = e;  x_i = e W_i * rms(e) / max(rms(e W_i), 1e-12)
  reduce    (x_0 + sum_i x_i U_i * rms(x_0) / max(rms(x_i U_i), 1e-12)) / K

Our modules take the same weights (our router norm's scale is Gemma's 1 + s), with random values
and clipped entries, and must agree to float32 rounding.
"""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altup_t5x import altup, network, scan_convert, upcycle
from altup_t5x.config import AltUpConfig, ConfigError
from altup_t5x.network import Transformer
import numpy_reference as ref  # tests/numpy_reference.py
from conftest import make_batch, tiny_config

K, D = 4, 8
GEMMA3N = dict(altup_k=4, altup_selection='same', altup_layer_input='predicted',
               altup_coefficients='dynamic', altup_correct_router='output',
               altup_embedding='projected', altup_reduction='unproject', altup_coef_clip=120.0)
# conftest's tiny network with 4 + 4 layers and d=8 (K=4 streams of a d-wide embedding).
TINY = dict(vocab_size=24, emb_dim=D, num_heads=2, head_dim=4, mlp_dim=12, num_encoder_layers=4,
            num_decoder_layers=4, dropout_rate=0.0)


# ------------------------- Gemma 3n's equations, NumPy float64 -----------------------------------
def gemma_rmsnorm(x, s):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * (1.0 + s)


def gemma_router(w, h):
  return np.tanh(gemma_rmsnorm(h, w['norm_s']) * (1.0 / D) @ w['router'])


def gemma_predict(w, x, clip):  # x: list of K [n, d]
  coefs = np.einsum('...p,pij->...ij', gemma_router(w, x[0]), np.clip(w['pred'], -clip, clip))
  return [x[i] + sum(coefs[..., i, j, None] * x[j] for j in range(K)) for i in range(K)]


def gemma_correct(w, predictions, activated, clip):
  coefs = np.einsum('...p,pi->...i', gemma_router(w, activated),
                    np.clip(w['corr'], -clip, clip)) + 1.0
  innovation = activated - predictions[0]
  return [predictions[i] + coefs[..., i, None] * innovation for i in range(K)]


def gemma_magnitude(x):
  return np.mean(x ** 2, -1, keepdims=True) ** 0.5


def gemma_streams(e, projections):
  target = gemma_magnitude(e)
  out = [e]
  for i in range(1, K):
    xi = e @ projections[i - 1]
    out.append(xi * target / np.maximum(gemma_magnitude(xi), 1e-12))
  return out


def gemma_reduce(x, unprojections):
  target = gemma_magnitude(x[0])
  out = [x[0]]
  for i in range(1, K):
    xi = x[i] @ unprojections[i - 1]
    out.append(xi * target / np.maximum(gemma_magnitude(xi), 1e-12))
  return np.mean(np.stack(out), axis=0)


def gemma_weights(seed=0):
  rng = np.random.RandomState(seed)
  return dict(norm_s=rng.normal(0, 0.3, D), router=rng.normal(0, 1.0, (D, K)),
              # Large enough that some entries fall outside the clip used below.
              pred=rng.normal(0, 0.3, (K, K, K)), corr=rng.normal(0, 0.5, (K, K)))


def ours_params(w):
  """The same weights in our DynamicAltUpCoefficients' layout."""
  return {'router_norm': {'scale': jnp.asarray(1.0 + w['norm_s'], jnp.float32)},
          'router': jnp.asarray(w['router'], jnp.float32),
          'predict': jnp.asarray(w['pred'], jnp.float32),
          'correct': jnp.asarray(w['corr'], jnp.float32)}


CLIP = 0.4  # clips some of the random weights, so the clip itself is checked


def _cfg(**kw):
  return tiny_config(**{**TINY, **GEMMA3N, 'altup_coef_clip': CLIP, **kw})


def test_router_predict_and_correct_coefficients_match_gemma3n():
  w = gemma_weights()
  assert np.any(np.abs(w['pred']) > CLIP) and np.any(np.abs(w['corr']) > CLIP)
  rng = np.random.RandomState(1)
  x = [rng.normal(0, 1, (3, 5, D)) for _ in range(K)]
  activated = rng.normal(0, 1, (3, 5, D))
  module = network.DynamicAltUpCoefficients(_cfg())
  p, _ = module.apply({'params': ours_params(w)}, jnp.asarray(x[0], jnp.float32))
  _, g = module.apply({'params': ours_params(w)}, jnp.asarray(activated, jnp.float32))
  xhat = altup.predict(jnp.asarray(np.stack(x, -2), jnp.float32), p)
  want_pred = np.stack(gemma_predict(w, x, CLIP), -2)
  err_predict = np.max(np.abs(np.asarray(xhat) - want_pred))
  y = altup.correct(xhat, jnp.asarray(activated, jnp.float32), g, 0)
  want = np.stack(gemma_correct(w, list(np.moveaxis(want_pred, -2, 0)), activated, CLIP), -2)
  err_correct = np.max(np.abs(np.asarray(y) - want))
  print(f'predict max |ours - gemma3n| {err_predict:.2e}; correct {err_correct:.2e}')
  assert err_predict < 1e-5 and err_correct < 1e-5


def test_stream_init_and_reduction_match_gemma3n():
  rng = np.random.RandomState(2)
  e = rng.normal(0, 1, (3, 5, D))
  w = rng.normal(0, 0.5, (K - 1, D, D))
  u = rng.normal(0, 0.5, (K - 1, D, D))
  streams = altup.project_streams(jnp.asarray(e, jnp.float32), jnp.asarray(w, jnp.float32))
  want = np.stack(gemma_streams(e, w), -2)
  err_init = np.max(np.abs(np.asarray(streams) - want))
  x = rng.normal(0, 1, (3, 5, K, D))
  reduced = altup.unproject_streams(jnp.asarray(x, jnp.float32), jnp.asarray(u, jnp.float32))
  err_reduce = np.max(np.abs(np.asarray(reduced) - gemma_reduce(list(np.moveaxis(x, -2, 0)), u)))
  print(f'stream init max |ours - gemma3n| {err_init:.2e}; reduction {err_reduce:.2e}')
  assert err_init < 1e-5 and err_reduce < 1e-5
  # Identity maps: K copies of e in, their mean (= e) out.
  eye = jnp.broadcast_to(jnp.eye(D), (K - 1, D, D))
  copies = altup.project_streams(jnp.asarray(e, jnp.float32), eye)
  np.testing.assert_allclose(np.asarray(copies), np.repeat(e[..., None, :], K, -2), atol=1e-6)
  np.testing.assert_allclose(np.asarray(altup.unproject_streams(copies, eye)), e, atol=1e-6)


class _OneStep(nn.Module):
  """One AltUp step of our stack code (`network.run_layers`) around a fixed nonlinear layer."""
  config: AltUpConfig
  a: np.ndarray

  @nn.compact
  def __call__(self, x):
    layer = lambda i, h: jnp.tanh(h @ self.a) + h
    state = network.run_layers(self.config, network.begin_stream(self.config, x), 1, layer)
    return network.end_stream(self.config, state)


@pytest.mark.parametrize('fused', [True, False])
def test_one_predict_compute_correct_step_matches_gemma3n(fused):
  w = gemma_weights(3)
  rng = np.random.RandomState(4)
  x = [rng.normal(0, 1, (2, 6, D)) for _ in range(K)]
  a = rng.normal(0, 0.5, (D, D))
  cfg = _cfg(altup_fused_updates=fused)
  y = _OneStep(cfg, a).apply({'params': {'altup_0': ours_params(w)}},
                             jnp.asarray(np.stack(x, -2), jnp.float32))
  predictions = gemma_predict(w, x, CLIP)
  activated = np.tanh(predictions[0] @ a) + predictions[0]
  want = np.stack(gemma_correct(w, predictions, activated, CLIP), -2)
  err = np.max(np.abs(np.asarray(y) - want))
  print(f'one step (fused={fused}) max |ours - gemma3n| {err:.2e}')
  assert err < 1e-5


def _data(seed=0):
  return make_batch(seed, le=7, ld=5, vocab=TINY['vocab_size'], low=2)


def _random_params(cfg, data, seed=0):
  """Initialised params with every AltUp weight (router, W_p, W_g, stream maps) random."""
  params = flax.core.unfreeze(jax.jit(lambda: Transformer(cfg).init(
      jax.random.PRNGKey(seed), *data, enable_dropout=False))()['params'])
  rng = np.random.RandomState(seed)
  flat = flax.traverse_util.flatten_dict(params)
  for path, v in flat.items():
    if any(p.startswith('altup_') for p in path):
      scale = 0.3 if path[-1] in ('predict', 'correct') else 0.2
      noise = rng.normal(0, scale, v.shape).astype(np.float32)
      flat[path] = v + noise
  return flax.traverse_util.unflatten_dict(flat)


def _logits(cfg, params, data):
  return np.asarray(jax.jit(lambda p: Transformer(cfg).apply(
      {'params': p}, *data, enable_dropout=False))(params))


@pytest.mark.parametrize('fused', [True, False])
def test_gemma3n_network_matches_numpy_reference(fused):
  cfg = _cfg(altup_fused_updates=fused)
  data = _data()
  params = _random_params(cfg, data)
  want = ref.forward(params, cfg, *data)
  np.testing.assert_allclose(_logits(cfg, params, data), want, rtol=2e-4, atol=2e-4)


def test_identity_initialised_gemma3n_model_equals_its_dense_model():
  cfg = tiny_config(**{**TINY, **GEMMA3N})
  dense_cfg = upcycle.dense_config_of(cfg)
  data = _data(1)
  dense = flax.core.unfreeze(Transformer(dense_cfg).init(jax.random.PRNGKey(0), *data,
                                                          enable_dropout=False)['params'])
  params = upcycle.upcycle_params(dense, cfg)
  # The network's own initialisation is the identity too (no upcycle needed for a fresh model).
  fresh = flax.core.unfreeze(Transformer(cfg).init(jax.random.PRNGKey(0), *data,
                                                    enable_dropout=False)['params'])
  np.testing.assert_array_equal(fresh['encoder']['altup_embed_projection'],
                                np.broadcast_to(np.eye(D), (K - 1, D, D)))
  np.testing.assert_array_equal(fresh['decoder']['altup_unembed_projection'],
                                np.broadcast_to(np.eye(D), (K - 1, D, D)))
  np.testing.assert_allclose(_logits(cfg, params, data), _logits(dense_cfg, dense, data),
                             rtol=1e-5, atol=1e-5)


def test_gemma3n_scan_equals_unrolled():
  cfg = _cfg()
  scanned_cfg = cfg.replace(scan_layers=True)
  data = _data(2)
  params = _random_params(cfg, data)
  scanned = scan_convert.to_scanned(params, scanned_cfg.layer_period(True),
                                    scanned_cfg.layer_period(False), scanned_cfg.param_scan_axis)
  np.testing.assert_allclose(_logits(scanned_cfg, scanned, data), _logits(cfg, params, data),
                             rtol=1e-5, atol=1e-5)


def test_gemma3n_cached_decode_equals_full_forward():
  cfg = _cfg()
  enc, dec_in, targets = _data(3)
  params = _random_params(cfg, (enc, dec_in, targets))
  full = _logits(cfg, params, (enc, dec_in, jnp.ones_like(targets)))
  module = Transformer(cfg)
  length = dec_in.shape[1]
  _, cache = module.apply({'params': params}, encoder_input_tokens=enc,
                          decoder_input_tokens=dec_in, decoder_target_tokens=dec_in, decode=True,
                          enable_dropout=False, mutable=['cache'])
  cache = cache['cache']
  encoded = module.apply({'params': params}, enc, enable_dropout=False, method=module.encode)
  step = jax.jit(lambda cache, token: module.apply(
      {'params': params, 'cache': cache}, encoded, enc, token, jnp.ones_like(token),
      enable_dropout=False, decode=True, max_decode_length=length, mutable=['cache'],
      method=module.decode))
  stepped = []
  for t in range(length):
    logits, mutated = step(cache, dec_in[:, t:t + 1])
    cache = mutated['cache']
    stepped.append(np.asarray(logits[:, 0]))
  np.testing.assert_allclose(np.stack(stepped, 1), full, rtol=1e-5, atol=1e-5)


def test_gemma3n_options_are_checked():
  with pytest.raises(ConfigError, match="altup_correct_router='middle'.*'input', 'output'"):
    tiny_config(**TINY, altup_k=2, altup_correct_router='middle')
  with pytest.raises(ConfigError, match="altup_coef_init='gemma3n'.*altup_coefficients='dynamic'"):
    tiny_config(**TINY, altup_k=2, altup_coef_init='gemma3n')
  # 'gemma3n' initialisation: W_p ~ N(0, 1e-4), W_g ~ N(0, 1e-2), as Gemma 3n's AltUp.
  cfg = tiny_config(**{**TINY, **GEMMA3N, 'emb_dim': 64, 'altup_coef_init': 'gemma3n'})
  params = network.DynamicAltUpCoefficients(cfg).init(jax.random.PRNGKey(0),
                                                      jnp.ones((1, 1, 64)))['params']
  assert 0.5e-4 < float(jnp.std(params['predict'])) < 2e-4
  assert 0.5e-2 < float(jnp.std(params['correct'])) < 2e-2
  with pytest.raises(upcycle.UpcycleError, match="altup_coef_init='gemma3n'"):
    upcycle.check_upcycle(cfg)

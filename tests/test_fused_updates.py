"""Fused predict/correct (AltUpConfig.altup_fused_updates, the default) computes the same function
as the textbook order, and the stream held in bfloat16 loses no more than the plain model does.

Fused: the stream is carried as (z, g, delta) with the correction deferred, so the correct of
layer i and the predict of layer i+1 are one pass over [b, l, K, d]. Unfused: predict, the layer,
correct, each layer. The two differ only in float rounding; logits and every gradient must agree.
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from altup_t5x.network import Transformer
from conftest import make_batch, tiny_config

# conftest's tiny network, 4 + 4 layers (K=4 alternation reaches every block), random coefficients.
FIELDS = dict(vocab_size=32, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=12, num_encoder_layers=4,
            num_decoder_layers=4, dropout_rate=0.0, altup_coef_init='normal',
            altup_coef_init_scale=0.3)
GEMMA3N = dict(altup_k=4, altup_selection='same', altup_layer_input='predicted',
               altup_coefficients='dynamic', altup_correct_router='output',
               altup_embedding='projected', altup_reduction='unproject')
SETTINGS = {
    'k2': dict(altup_k=2),
    'k4': dict(altup_k=4),
    'recycled_k2_sum': dict(altup_k=2, altup_embedding='recycled', altup_reduction='sum'),
    'k2_same_predicted_projection': dict(altup_k=2, altup_selection='same',
                                         altup_layer_input='predicted',
                                         altup_reduction='projection'),
    'k2_dynamic': dict(altup_k=2, altup_coefficients='dynamic'),
    'gemma3n_k4': GEMMA3N,
    'k2_moe': dict(altup_k=2, moe_num_experts=2, moe_every=2, moe_top_k=1,
                   moe_capacity_factor=2.0),
    'k2_sequence_s2': dict(altup_k=2, sequence_altup_stride=2),
    'k2_scan': dict(altup_k=2, scan_layers=True),
    'k2_scan_remat_full': dict(altup_k=2, scan_layers=True, remat_policy='full'),
    'k2_remat_minimal': dict(altup_k=2, remat_policy='minimal'),
    'gemma3n_k4_scan_remat_minimal': dict(GEMMA3N, scan_layers=True, remat_policy='minimal'),
    'k4_scan_remat_minimal': dict(altup_k=4, scan_layers=True, remat_policy='minimal'),
    'k3_moe': dict(altup_k=3, moe_num_experts=2, moe_every=2, moe_top_k=1,
                   moe_capacity_factor=2.0),
}


def _data(seed=0):
  return make_batch(seed, le=8, ld=5, vocab=32, low=2)


def _loss_and_grads(cfg, params, data):
  def loss(p):
    logits = Transformer(cfg).apply({'params': p}, *data, enable_dropout=False)
    return jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(data[2], cfg.vocab_size)), logits
  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return np.asarray(logits), flax.traverse_util.flatten_dict(flax.core.unfreeze(grads))


def _params(cfg, data):
  params = flax.core.unfreeze(jax.jit(lambda: Transformer(cfg).init(
      jax.random.PRNGKey(0), *data, enable_dropout=False))()['params'])
  # Stream maps away from the identity (Gemma 3n's), so that every block differs.
  flat = flax.traverse_util.flatten_dict(params)
  rng = np.random.RandomState(1)
  for path, v in flat.items():
    if path[-1] in ('altup_embed_projection', 'altup_unembed_projection'):
      flat[path] = v + rng.normal(0, 0.2, v.shape).astype(np.float32)
  return flax.traverse_util.unflatten_dict(flat)


# One setting of each kind in the default suite (dynamic, Gemma 3n, MoE, Sequence-AltUp, scan +
# remat); the rest with the slow tests.
DEFAULT = ('k2', 'k4', 'k2_dynamic', 'gemma3n_k4', 'k2_moe', 'k2_sequence_s2', 'k2_scan_remat_full',
           'k4_scan_remat_minimal')


@pytest.mark.parametrize('name', [pytest.param(n, marks=() if n in DEFAULT else pytest.mark.slow)
                                  for n in sorted(SETTINGS)])
def test_fused_equals_unfused(name):
  fused = tiny_config(**{**FIELDS, **SETTINGS[name]})
  unfused = fused.replace(altup_fused_updates=False)
  data = _data()
  params = _params(fused, data)
  logits_f, grads_f = _loss_and_grads(fused, params, data)
  logits_u, grads_u = _loss_and_grads(unfused, params, data)
  np.testing.assert_allclose(logits_f, logits_u, rtol=1e-5, atol=1e-5)
  assert grads_f.keys() == grads_u.keys()
  for path in grads_f:
    np.testing.assert_allclose(np.asarray(grads_f[path]), np.asarray(grads_u[path]), rtol=1e-4,
                               atol=1e-5, err_msg='/'.join(path))
  # The gradients reach every AltUp parameter (the deferred correction is differentiated).
  for path, g in grads_f.items():
    if any(p.startswith('altup_') for p in path):
      assert np.any(np.asarray(g) != 0), '/'.join(path)


def _bf16_errors(settings, seeds):
  """Per seed: RMS of (bfloat16 logits - float32 logits) / RMS of the float32 logits, same
  parameters (each program compiled once, the seeds' data and parameters passed in)."""
  cfg = tiny_config(**{**FIELDS, **settings})
  init = jax.jit(lambda key, data: Transformer(cfg).init(key, *data,
                                                         enable_dropout=False)['params'])
  apply = {c.dtype: jax.jit(lambda p, data, c=c: Transformer(c).apply(
      {'params': p}, *data, enable_dropout=False)) for c in (cfg, cfg.replace(dtype='bfloat16'))}
  errors = []
  for seed in seeds:
    data = _data(seed)
    params = init(jax.random.PRNGKey(seed), data)
    exact, rounded = (np.asarray(apply[c](params, data), np.float64)
                      for c in (cfg.dtype, 'bfloat16'))
    errors.append(np.sqrt(np.mean((rounded - exact) ** 2)) / np.sqrt(np.mean(exact ** 2)))
  return errors


def test_bfloat16_stream_error_is_at_most_twice_the_plain_models():
  """The [b, l, K, d] stream is held in the activation dtype (float32 coefficients and
  arithmetic): its rounding error in bfloat16 stays within 2x the K=1 network's."""
  seeds = range(3)
  plain = np.mean(_bf16_errors(dict(altup_k=1), seeds))
  for settings in (dict(altup_k=2), dict(altup_k=4), GEMMA3N):
    err = np.mean(_bf16_errors(settings, seeds))
    print(f'{settings}: bfloat16 relative logit error {err:.4f} (K=1: {plain:.4f})')
    assert err <= 2 * plain, (settings, err, plain)


@pytest.mark.parametrize('k', [1, 2, 3, 4])
@pytest.mark.parametrize('per_token', [False, True])
def test_blocks_layout_equals_a_numpy_deferred_predict(k, per_token):
  """predict_deferred_blocks / corrected_block on K separate blocks equal NumPy's
  P (z + g (x) delta) and z^j + g[j] delta, static or per-token coefficients."""
  from altup_t5x import altup  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(k)
  b, l, d = 2, 3, 5
  z = rng.normal(size=(b, l, k, d)).astype(np.float32)
  delta = rng.normal(size=(b, l, d)).astype(np.float32)
  lead = (b, l) if per_token else ()
  p = rng.normal(size=lead + (k, k)).astype(np.float32)
  g = rng.normal(size=lead + (k,)).astype(np.float32)
  y = z.astype(np.float64) + g[..., :, None] * delta[..., None, :]  # the corrected stream
  want = np.einsum('...ij,...jd->...id', p.astype(np.float64), y)
  zs = tuple(jnp.asarray(z[..., j, :]) for j in range(k))
  got = altup.predict_deferred_blocks(zs, jnp.asarray(g), jnp.asarray(delta), jnp.asarray(p))
  assert len(got) == k
  np.testing.assert_allclose(np.stack(got, axis=-2), want, rtol=1e-5, atol=1e-5)
  stacked = altup.predict_deferred(jnp.asarray(z), jnp.asarray(g), jnp.asarray(delta),
                                   jnp.asarray(p))
  np.testing.assert_allclose(np.stack(got, axis=-2), stacked, rtol=1e-5, atol=1e-5)
  for j in range(k):
    np.testing.assert_allclose(altup.corrected_block(zs, jnp.asarray(g), jnp.asarray(delta), j),
                               y[..., j, :], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(altup.corrected_block(jnp.asarray(z), jnp.asarray(g),
                                                     jnp.asarray(delta), j),
                               y[..., j, :], rtol=1e-6, atol=1e-6)


def test_fused_stream_layout_by_k():
  """Fused AltUp carries K <= BLOCKS_LAYOUT_MAX_K blocks as separate arrays, more stacked; both
  end as the same [b, l, k, d] blocks."""
  from altup_t5x import network  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.RandomState(0).normal(size=(2, 3, 4, 5)).astype(np.float32))
  for k in (2, 4):
    cfg = tiny_config(altup_k=k)
    xk = x[..., :k, :]
    state = network.begin_stream(cfg, xk)
    assert isinstance(state[0], tuple) == (k <= network.BLOCKS_LAYOUT_MAX_K)
    np.testing.assert_array_equal(network.end_stream(cfg, state), xk)


@pytest.mark.parametrize('k', [3, 4])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_stacked_step_equals_numpy_and_its_backward_equals_autodiff(k, dtype):
  """altup.stacked_deferred_step (the stacked stream with static coefficients) returns NumPy's
  z^{j*} + g[j*] delta, P (z + g (x) delta) and its block j*; its hand-written backward pass equals
  JAX's autodiff of the plain formulas (corrected_block, predict_deferred, a slice) for every
  active block, in the stream's dtype."""
  from altup_t5x import altup  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(k)
  b, l, d = 2, 3, 5
  z = jnp.asarray(rng.normal(size=(b, l, k, d)), dtype)
  g = jnp.asarray(1 + 0.3 * rng.normal(size=(k,)), jnp.float32)
  delta = jnp.asarray(rng.normal(size=(b, l, d)), jnp.float32)
  p = jnp.asarray(np.eye(k) + 0.3 * rng.normal(size=(k, k)), jnp.float32)
  cotangents = tuple(jnp.asarray(rng.normal(size=s), jnp.float32)
                     for s in ((b, l, d), (b, l, k, d), (b, l, d)))
  y = (np.asarray(z, np.float64) + np.asarray(g, np.float64)[:, None] *
       np.asarray(delta, np.float64)[..., None, :])
  xhat = np.einsum('ij,...jd->...id', np.asarray(p, np.float64), y)
  for block in range(k):
    def plain(z, g, delta, p, block=block):
      predicted = altup.predict_deferred(z, g, delta, p)
      return altup.corrected_block(z, g, delta, block), predicted, predicted[..., block, :]
    ours = lambda z, g, delta, p, block=block: altup.stacked_deferred_step(z, g, delta, p, block)
    with jax.default_matmul_precision('highest'):
      got, vjp = jax.vjp(ours, z, g, delta, p)
      _, vjp_plain = jax.vjp(plain, z, g, delta, p)
      grads, grads_plain = vjp(cotangents), vjp_plain(cotangents)
    for a, want in zip(got, (y[..., block, :], xhat, xhat[..., block, :])):
      np.testing.assert_allclose(np.asarray(a), want, rtol=1e-5, atol=1e-5)
    for name, a, want in zip(('z', 'g', 'delta', 'p'), grads, grads_plain):
      assert a.dtype == want.dtype and a.shape == want.shape, name
      tol = 1e-5 if a.dtype == jnp.float32 else 1e-2  # bfloat16: both round once to 8 bits
      scale = float(np.max(np.abs(np.asarray(want, np.float32))))
      err = float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(want, np.float32))))
      assert err <= tol * scale, (name, block, err, scale)


def test_static_stacked_stream_takes_the_hand_written_backward():
  """Fused AltUp with static coefficients and a stacked stream (K > BLOCKS_LAYOUT_MAX_K) runs
  altup.stacked_deferred_step (a custom VJP in the traced program); dynamic coefficients do not."""
  from altup_t5x import network  # pylint: disable=g-import-not-at-top
  data = _data()
  for settings, expected in ((dict(altup_k=4), True), (dict(altup_k=4, altup_coefficients='dynamic'),
                                                       False)):
    cfg = tiny_config(**settings)
    assert cfg.altup_k > network.BLOCKS_LAYOUT_MAX_K
    params = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.PRNGKey(0), *data,
                                                          enable_dropout=False))['params']
    jaxpr = str(jax.make_jaxpr(lambda p: Transformer(cfg).apply({'params': p}, *data,
                                                                enable_dropout=False))(params))
    assert ('custom_vjp_call' in jaxpr) == expected, settings

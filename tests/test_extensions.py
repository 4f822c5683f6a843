"""Sequence-AltUp, sparse MoE, input-dependent coefficients and upcycling."""
import functools
import math
import os
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_batch, tiny_config
from altup_t5x import moe, sequence, upcycle
from altup_t5x.network import DynamicAltUpCoefficients, Transformer

tokens = functools.partial(make_batch, le=9, ld=6, pad=False)  # unpadded


def init_apply(cfg, data, seed=0, params=None):
  module = Transformer(cfg)
  if params is None:
    params = module.init(jax.random.PRNGKey(seed), *data, enable_dropout=False)['params']
  run = jax.jit(lambda p: module.apply({'params': p}, *data, enable_dropout=False))
  return params, np.asarray(run(params))


# ---------------------------------------------------------------- Sequence-AltUp
def np_sequence_step(x, layer, stride, offset, alpha, beta, mode, causal):
  """Loop reference of the formulas in altup_t5x/sequence.py."""
  b, l, d = x.shape
  anchors = list(range(offset, l, stride))
  out = layer(x[:, anchors])
  y = x.copy()
  for t in range(l):
    if t in anchors:
      y[:, t] = out[:, anchors.index(t)]
      continue
    candidates = [a for a in anchors if a <= t]
    if not candidates:
      if causal:
        continue  # no anchor at or before t: unchanged
      candidates = [anchors[0]]
    a = candidates[-1]
    if mode == 'predict_correct':
      y[:, t] = alpha * x[:, t] + beta * (out[:, anchors.index(a)] - alpha * x[:, a])
  return y


@pytest.mark.parametrize('stride,offset', [(2, 0), (2, 1), (3, 2), (4, 1)])
@pytest.mark.parametrize('mode', ['predict_correct', 'skip'])
@pytest.mark.parametrize('causal', [False, True])
def test_sequence_step_matches_numpy(stride, offset, mode, causal):
  rng = np.random.RandomState(stride * 10 + offset)
  x = rng.randn(2, 11, 4).astype(np.float32)
  w = rng.randn(4, 4).astype(np.float32)
  layer_np = lambda h: np.tanh(h @ w) + h
  got = sequence.sequence_altup_step(jnp.asarray(x), lambda h, pos, ok: jnp.tanh(h @ w) + h, stride,
                                     offset, 0.7, 1.3, mode, causal)
  want = np_sequence_step(x, layer_np, stride, offset, 0.7, 1.3, mode, causal)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  if mode == 'skip':  # stride-and-skip leaves every skipped token exactly unchanged
    skipped = [t for t in range(11) if (t - offset) % stride != 0 or t < offset]
    np.testing.assert_array_equal(np.asarray(got)[:, skipped], x[:, skipped])


def test_stride_one_is_the_ordinary_layer():
  x = jnp.asarray(np.random.RandomState(0).randn(2, 7, 4), jnp.float32)
  layer = lambda h, pos, ok: jnp.sin(h) * 2
  np.testing.assert_array_equal(np.asarray(sequence.sequence_altup_step(x, layer, 1, 0, 0.3, 5.0)),
                                np.asarray(jnp.sin(x) * 2))
  # And in the network: stride 1 is the default network, bit for bit.
  data = tokens()
  params, plain = init_apply(tiny_config(altup_k=2), data)
  _, strided = init_apply(tiny_config(altup_k=2, sequence_altup_stride=1), data,
                          params=params)
  np.testing.assert_array_equal(plain, strided)


def test_causal_stack_never_looks_ahead():
  rng = np.random.RandomState(1)
  x = rng.randn(1, 12, 3).astype(np.float32)
  w = rng.randn(3, 3).astype(np.float32)

  def causal_layer(h, pos, ok):  # a causal mixing layer: running mean over earlier anchors
    csum = jnp.cumsum(h, axis=1) / jnp.arange(1, h.shape[1] + 1)[None, :, None]
    return jnp.tanh(csum @ w) + h

  def stack(x):
    for i in range(4):
      x = sequence.sequence_altup_step(x, causal_layer, 3, i % 3, 0.9, 1.1, causal=True)
    return np.asarray(x)

  base = stack(jnp.asarray(x))
  for t in range(12):
    changed = x.copy()
    changed[:, t] += 5.0
    out = stack(jnp.asarray(changed))
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert not np.allclose(out[:, t:], base[:, t:])


def test_encoder_with_stride_2_runs_layers_on_half_the_positions():
  cfg = tiny_config(altup_k=2, sequence_altup_stride=2)
  data = tokens()
  params, logits = init_apply(cfg, data)
  assert logits.shape == (2, 6, 40) and np.all(np.isfinite(logits))
  assert set(params['encoder']['sequence_altup_0']) == {'predict', 'correct'}
  assert 'sequence_altup_0' not in params['decoder']  # encoder only
  # The attention inside an encoder layer sees ceil(9 / 2) = 5 query positions at offset 0.
  jaxpr = str(jax.make_jaxpr(lambda p: Transformer(cfg).apply(
      {'params': p}, *data, enable_dropout=False))(params))
  assert 'f32[2,2,5,5]' in jaxpr and 'f32[2,2,4,4]' in jaxpr  # offsets 0 and 1: 5 and 4 anchors


# ---------------------------------------------------------------- Mixture of experts
def np_top_k_routing(logits, k, capacity, causal=False):
  g, n, e = logits.shape
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  dispatch = np.zeros((g, n, e, capacity), bool)
  combine = np.zeros((g, n, e, capacity))
  for gi in range(g):
    order = np.argsort(-probs[gi], axis=-1, kind='stable')[:, :k]  # [n, k]
    gates = np.take_along_axis(probs[gi], order, -1)
    if k > 1:
      gates = gates / gates.sum(-1, keepdims=True)
    fill = np.zeros(e, int)
    # Encoder: first choices of all tokens, then second choices; causal: token by token.
    visits = ([(t, c) for t in range(n) for c in range(k)] if causal else
              [(t, c) for c in range(k) for t in range(n)])
    for t, choice in visits:
      ex = order[t, choice]
      if fill[ex] < capacity:
        dispatch[gi, t, ex, fill[ex]] = True
        combine[gi, t, ex, fill[ex]] = gates[t, choice]
      fill[ex] += 1
  top1 = np.argmax(probs, -1)
  f = np.stack([(top1 == ex).mean(1) for ex in range(e)], -1)
  balance = (f * probs.mean(1)).sum(-1).mean() * e
  return dispatch, combine, balance


@pytest.mark.parametrize('k,capacity', [(1, 2), (1, 5), (2, 3), (2, 8)])
@pytest.mark.parametrize('causal', [False, True])
def test_top_k_routing_matches_numpy(k, capacity, causal):
  logits = np.random.RandomState(k * 7 + capacity).randn(3, 8, 4).astype(np.float32)
  dispatch, combine, balance = moe.top_k_routing(jnp.asarray(logits), k, capacity, causal)
  d_ref, c_ref, b_ref = np_top_k_routing(logits.astype(np.float64), k, capacity, causal)
  np.testing.assert_array_equal(np.asarray(dispatch), d_ref)
  np.testing.assert_allclose(np.asarray(combine), c_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(balance), b_ref, rtol=1e-5)
  if capacity == 2:  # 8 tokens, 4 experts of 2 slots: only balanced routing keeps them all
    assert np.asarray(dispatch).sum() <= 3 * 4 * 2


@pytest.mark.parametrize('k,capacity', [(1, 2), (2, 3), (2, 20)])
def test_causal_routing_step_by_step_equals_whole_sequence(k, capacity):
  """Cached decoding: routing one token at a time from the cached fill counts keeps and gates
  exactly what causal routing of the whole sequence does."""
  logits = jnp.asarray(np.random.RandomState(k + capacity).randn(3, 9, 4), jnp.float32)
  dispatch, combine, _ = moe.top_k_routing(logits, k, capacity, causal=True)
  assert (capacity >= 9) or not np.asarray(dispatch.any((2, 3))).all()  # small capacity drops
  filled = jnp.zeros((3, 4), jnp.int32)
  for t in range(9):
    d, c, _ = moe.top_k_routing(logits[:, t:t + 1], k, capacity, filled=filled)
    assert d.shape == (3, 1, 4, 1)
    np.testing.assert_array_equal(np.asarray(d.any(-1)), np.asarray(dispatch[:, t:t + 1].any(-1)))
    np.testing.assert_allclose(np.asarray(c.sum(-1)), np.asarray(combine[:, t:t + 1].sum(-1)),
                               rtol=1e-6)
    filled = filled + jnp.sum(d, axis=(1, 3)).astype(jnp.int32)


def test_expert_choice_routing_matches_numpy():
  logits = np.random.RandomState(3).randn(2, 6, 3).astype(np.float64)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  dispatch, combine, balance = moe.expert_choice_routing(jnp.asarray(logits, jnp.float32), 2)
  for g in range(2):
    for e in range(3):
      chosen = np.argsort(-probs[g, :, e], kind='stable')[:2]
      for c, t in enumerate(chosen):
        assert np.asarray(dispatch)[g, t, e, c]
        np.testing.assert_allclose(np.asarray(combine)[g, t, e, c], probs[g, t, e], rtol=1e-5)
  assert np.asarray(dispatch).sum() == 2 * 3 * 2 and float(balance) == 0.0


def test_router_z_loss_and_capacity():
  logits = np.random.RandomState(4).randn(2, 5, 3)
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(float(moe.router_z_loss(jnp.asarray(logits, jnp.float32))),
                             (lse ** 2).mean(), rtol=1e-5)
  assert moe.capacity(num_tokens=10, num_experts=4, capacity_factor=1.25, top_k=2) == 7


def test_moe_layer_output_matches_numpy():
  layer = moe.MoeMlp(num_experts=3, intermediate_dim=5, top_k=2, capacity_factor=1.0,
                     intermediate_dropout_rate=0.0)
  x = jnp.asarray(np.random.RandomState(5).randn(2, 6, 4), jnp.float32)
  variables = layer.init(jax.random.PRNGKey(0), x, deterministic=True)
  y, state = layer.apply(variables, x, deterministic=True, mutable=['intermediates'])
  p = jax.tree_util.tree_map(np.asarray, variables['params'])
  xn = np.asarray(x, np.float64)
  cap = moe.capacity(6, 3, 1.0, 2)
  _, combine, balance = np_top_k_routing(xn @ p['router'], 2, cap)
  gelu = lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
  want = np.zeros_like(xn)
  for g in range(2):
    for t in range(6):
      for e in range(3):
        w = combine[g, t, e].sum()
        if w:
          h = gelu(xn[g, t] @ p['wi_0'][e]) * (xn[g, t] @ p['wi_1'][e])
          want[g, t] += w * (h @ p['wo'][e])
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)
  metrics = moe.layer_metrics(state['intermediates'])
  np.testing.assert_allclose(float(metrics['auxiliary_loss']), balance, rtol=1e-5)
  assert set(metrics) == set(moe.MOE_METRICS)


def test_moe_aux_losses_enter_with_their_factors():
  cfg = tiny_config(altup_k=2, moe_num_experts=4, moe_every=1)
  data = tokens()
  module = Transformer(cfg)
  params = module.init(jax.random.PRNGKey(0), *data, enable_dropout=False)['params']
  assert 'router' in params['encoder']['layers_0']['mlp']
  _, state = module.apply({'params': params}, *data, enable_dropout=False,
                          mutable=['intermediates'])
  metrics = moe.layer_metrics(state['intermediates'])
  aux, z = moe.aux_losses(state['intermediates'], 0.5, 0.25)
  np.testing.assert_allclose(float(aux), 0.5 * float(metrics['auxiliary_loss']), rtol=1e-6)
  np.testing.assert_allclose(float(z), 0.25 * float(metrics['router_z_loss']), rtol=1e-6)
  assert float(metrics['auxiliary_loss']) >= 1.0 - 1e-5  # E * sum f P >= 1 with f, P summing to 1


MESH_SCRIPT = textwrap.dedent('''
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np, flax
    from flax.linen import partitioning as nnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from altup_t5x import moe, partitioning
    from altup_t5x.config import AltUpConfig
    from altup_t5x.network import Transformer
    import optax
    cfg = AltUpConfig(vocab_size=40, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24,
                      num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0, altup_k=2,
                      moe_num_experts=8, moe_every=1, moe_top_k=2)
    rng = np.random.RandomState(0)
    enc = jnp.asarray(rng.randint(1, 40, (8, 9)), jnp.int32)
    tgt = jnp.asarray(rng.randint(1, 40, (8, 6)), jnp.int32)
    dec = jnp.concatenate([jnp.zeros((8, 1), jnp.int32), tgt[:, :-1]], 1)
    module = Transformer(cfg)
    variables = module.init(jax.random.PRNGKey(0), enc, dec, tgt, enable_dropout=False)
    params = variables["params"]
    def loss_fn(p, enc, dec, tgt):
      logits, state = module.apply({"params": p}, enc, dec, tgt, enable_dropout=False,
                                   mutable=["intermediates"])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean()
      aux, z = moe.aux_losses(state["intermediates"], 0.01, 0.001)
      return ce + aux + z
    single = float(jax.jit(loss_fn)(params, enc, dec, tgt))
    rules = partitioning.standard_logical_axis_rules()
    axes = flax.core.unfreeze(nnp.get_axis_names(variables["params_axes"]))
    params = flax.core.unfreeze(params)
    results = {}
    for shape in [(8, 1), (4, 2)]:
      mesh = Mesh(np.array(jax.devices()).reshape(shape), ("data", "model"))
      with mesh, nnp.axis_rules(rules):
        p_sh = flax.linen.logical_to_mesh_sharding(axes, mesh, rules)
        b_sh = NamedSharding(mesh, PartitionSpec("data"))
        sharded = jax.device_put(params, p_sh)
        assert sharded["encoder"]["layers_0"]["mlp"]["wo"].sharding.spec[0] == "data"
        batch = [jax.device_put(t, b_sh) for t in (enc, dec, tgt)]
        results[shape] = float(jax.jit(loss_fn)(sharded, *batch))
    print("RESULT", single, results[(8, 1)], results[(4, 2)])
''')


def test_expert_parallel_loss_equals_single_device():
  out = subprocess.run([sys.executable, '-c', MESH_SCRIPT], capture_output=True, text=True,
                       timeout=600, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  line = [l for l in out.stdout.splitlines() if l.startswith('RESULT')]
  assert line, out.stderr[-3000:]
  single, data_parallel, data_model = map(float, line[0].split()[1:])
  assert abs(data_parallel - single) <= 1e-5 * abs(single)
  assert abs(data_model - single) <= 1e-5 * abs(single)


# ---------------------------------------------------------------- dynamic coefficients
def test_dynamic_coefficients_match_numpy():
  cfg = tiny_config(altup_k=3, altup_coefficients='dynamic', altup_coef_init='normal',
                    altup_coef_init_scale=0.5, altup_coef_clip=0.6)
  x = jnp.asarray(np.random.RandomState(6).randn(2, 4, 16), jnp.float32)
  module = DynamicAltUpCoefficients(cfg)
  params = module.init(jax.random.PRNGKey(1), x)['params']
  p, g = module.apply({'params': params}, x)
  w = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  xn = np.asarray(x, np.float64)
  normed = xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + 1e-6) * w['router_norm']['scale']
  r = np.tanh((normed / 16) @ w['router'])  # [b, l, k]
  assert np.abs(w['predict']).max() > 0.6  # the clip is exercised
  wp, wg = np.clip(w['predict'], -0.6, 0.6), np.clip(w['correct'], -0.6, 0.6)
  p_ref = np.eye(3) + np.einsum('blr,rij->blij', r, wp)
  g_ref = 1 + np.einsum('blr,ri->bli', r, wg)
  np.testing.assert_allclose(np.asarray(p), p_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g), g_ref, rtol=1e-5, atol=1e-6)
  # Entries beyond the clip get no gradient; the others do. Weights are never modified.
  grads = jax.grad(lambda prm: sum(jnp.sum(jnp.sin(c)) for c in module.apply({'params': prm}, x)))(
      params)
  outside = np.abs(w['predict']) > 0.6
  assert outside.any() and (~outside).any()
  assert np.all(np.asarray(grads['predict'])[outside] == 0)
  assert np.all(np.asarray(grads['predict'])[~outside] != 0)
  np.testing.assert_array_equal(np.asarray(params['predict']), w['predict'].astype(np.float32))


@pytest.mark.parametrize('selection', ['alternating', 'same'])
def test_dynamic_identity_init_is_function_preserving(selection):
  data = tokens(seed=2)
  base_params, base = init_apply(tiny_config(), data)
  cfg = tiny_config(altup_k=2, altup_embedding='recycled', altup_coefficients='dynamic',
                    altup_selection=selection)
  params = upcycle.upcycle_params(base_params, cfg)
  assert params['encoder']['altup_0']['router'].shape == (16, 2)
  _, got = init_apply(cfg, data, params=params)
  np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- upcycling
@pytest.mark.parametrize('overrides', [
    dict(altup_k=2, altup_embedding='recycled'),
    dict(altup_k=4, altup_embedding='recycled', altup_selection='same'),
    dict(altup_k=2, altup_embedding='wide', altup_reduction='projection'),
])
def test_upcycled_params_give_the_dense_logits(overrides):
  data = tokens(seed=3)
  dense_params, dense_logits = init_apply(tiny_config(), data)
  cfg = tiny_config(**overrides)
  params = upcycle.upcycle_params(dense_params, cfg)
  _, logits = init_apply(cfg, data, params=params)
  np.testing.assert_allclose(logits, dense_logits, rtol=1e-5, atol=1e-5)


def test_upcycling_rejects_mismatched_checkpoints():
  dense_params, _ = init_apply(tiny_config(), tokens())
  with pytest.raises(upcycle.UpcycleError, match='mlp.*shape'):
    upcycle.upcycle_params(dense_params, tiny_config(mlp_dim=32, altup_k=2))
  with pytest.raises(upcycle.UpcycleError, match="altup_coef_init='normal'.*altup_coef_init='identity'"):
    upcycle.upcycle_params(dense_params, tiny_config(altup_k=2, altup_coef_init='normal'))

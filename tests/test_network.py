"""The AltUp T5.1.1 network: references, degenerate cases, decoding, shapes, training signal."""
import functools
import json
import os

import flax
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import make_batch, tiny_config
import numpy_reference
from altup_t5x import SIZES, AltUpConfig, ConfigError
from altup_t5x.network import Transformer

TESTDATA = os.path.join(os.path.dirname(__file__), 'testdata')
# Three decoder layers: the decoder's block selection differs from the encoder's two.
make_config = functools.partial(tiny_config, num_decoder_layers=3)


def init(cfg, seed=0, data=None):
  enc, dec_in, targets = data if data is not None else make_batch()
  variables = Transformer(cfg).init(jax.random.PRNGKey(seed), enc, dec_in, targets,
                                    enable_dropout=False)
  return flax.core.unfreeze(variables['params']), variables


def logits_of(cfg, params, data):
  apply = jax.jit(lambda p, *d: Transformer(cfg).apply({'params': p}, *d, enable_dropout=False))
  return np.asarray(apply(params, *data))


def randomize_coefficients(params, seed):
  """Non-trivial AltUp coefficients, so the references test more than the identity."""
  rng = np.random.RandomState(seed)
  for stack in ('encoder', 'decoder'):
    for name, sub in params[stack].items():
      if name.startswith('altup_') and isinstance(sub, dict) and 'predict' in sub:
        k = sub['predict'].shape[0]
        sub['predict'] = jnp.asarray(np.eye(k) + 0.3 * rng.randn(k, k), jnp.float32)
        sub['correct'] = jnp.asarray(1 + 0.3 * rng.randn(k), jnp.float32)
  return params


def valid(targets):
  return np.asarray(targets) > 0


# (a) against the independent NumPy implementation.
def test_k1_matches_numpy_t5_1_1():
  cfg = make_config(altup_k=1)
  data = make_batch()
  params, _ = init(cfg, data=data)
  got = logits_of(cfg, params, data)
  want = numpy_reference.forward(jax.device_get(params), cfg, *data)
  m = valid(data[2])
  np.testing.assert_allclose(got[m], want[m], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('k,selection,layer_input,embedding,reduction', [
    (2, 'alternating', 'input', 'wide', 'mean'),
    (2, 'same', 'input', 'wide', 'sum'),
    (3, 'alternating', 'predicted', 'wide', 'projection'),
    (4, 'alternating', 'input', 'recycled', 'sum'),
    (4, 'same', 'predicted', 'recycled', 'mean'),
])
def test_altup_matches_numpy(k, selection, layer_input, embedding, reduction):
  cfg = make_config(altup_k=k, altup_selection=selection, altup_layer_input=layer_input,
                    altup_embedding=embedding, altup_reduction=reduction)
  data = make_batch(seed=k)
  params, _ = init(cfg, seed=k, data=data)
  params = randomize_coefficients(params, seed=k)
  if reduction == 'projection':
    for stack in ('encoder', 'decoder'):
      w = params[stack]['altup_reduce']
      params[stack]['altup_reduce'] = w + 0.1 * jax.random.normal(jax.random.PRNGKey(k), w.shape)
  got = logits_of(cfg, params, data)
  want = numpy_reference.forward(jax.device_get(params), cfg, *data)
  m = valid(data[2])
  np.testing.assert_allclose(got[m], want[m], rtol=2e-5, atol=2e-5)


# (b) degenerate cases that must equal the plain model.
def test_k1_is_exactly_the_plain_network():
  cfg = make_config(altup_k=1)
  params, variables = init(cfg)
  names = ['/'.join(p) for p in flax.traverse_util.flatten_dict(params)]
  assert not [n for n in names if 'altup' in n]
  assert set(variables) == {'params', 'params_axes'}
  # K=1 with any AltUp setting is the same network.
  data = make_batch()
  for other in (dict(altup_selection='same'), dict(altup_embedding='recycled'),
                dict(altup_reduction='sum'), dict(altup_layer_input='predicted')):
    np.testing.assert_array_equal(logits_of(make_config(altup_k=1, **other), params, data),
                                  logits_of(cfg, params, data))


@pytest.mark.parametrize('k', [2, 4])
@pytest.mark.parametrize('selection', ['alternating', 'same'])
def test_recycled_identity_init_is_function_preserving(k, selection):
  base_cfg = make_config(altup_k=1)
  data = make_batch(seed=3)
  base_params, _ = init(base_cfg, data=data)
  cfg = make_config(altup_k=k, altup_embedding='recycled', altup_selection=selection)
  params, _ = init(cfg, seed=1, data=data)
  # Same shared weights, AltUp coefficients at their identity initialisation.
  flat = flax.traverse_util.flatten_dict(params)
  base_flat = flax.traverse_util.flatten_dict(base_params)
  altup_keys = [key for key in flat if key not in base_flat]
  assert altup_keys and all(any(part.startswith('altup_') for part in key) for key in altup_keys)
  for key in altup_keys:
    ref = np.eye(k) if key[-1] == 'predict' else np.ones(k)
    np.testing.assert_array_equal(np.asarray(flat[key]), ref)
  for key, value in base_flat.items():
    assert flat[key].shape == value.shape, key
    flat[key] = value
  params = flax.traverse_util.unflatten_dict(flat)
  np.testing.assert_allclose(logits_of(cfg, params, data), logits_of(base_cfg, base_params, data),
                             rtol=1e-6, atol=1e-6)


def test_packed_segments_equal_separate_examples():
  cfg = make_config(altup_k=2)
  a = make_batch(seed=5, b=1, le=4, ld=3, pad=False)
  b = make_batch(seed=6, b=1, le=3, ld=4, pad=False)
  params, _ = init(cfg, data=a)
  module = Transformer(cfg)
  cat = lambda i: jnp.concatenate([a[i], b[i]], axis=1)
  enc_seg = jnp.asarray([[1] * 4 + [2] * 3])
  dec_seg = jnp.asarray([[1] * 3 + [2] * 4])
  packed = jax.jit(lambda *args: module.apply({'params': params}, *args, enable_dropout=False))(
      cat(0), cat(1), cat(2), enc_seg, dec_seg)
  np.testing.assert_allclose(np.asarray(packed[:, :3]), logits_of(cfg, params, a), atol=1e-5)
  np.testing.assert_allclose(np.asarray(packed[:, 3:]), logits_of(cfg, params, b), atol=1e-5)


# (d) decoding with the cache equals the full forward pass.
def decode_step_by_step(cfg, params, enc, tokens):
  """Feeds `tokens` [b, L] one at a time through the cache; returns logits [b, L, vocab]."""
  module = Transformer(cfg)
  length = tokens.shape[1]
  _, cache = module.apply({'params': params}, encoder_input_tokens=enc,
                          decoder_input_tokens=tokens, decoder_target_tokens=tokens,
                          decode=True, enable_dropout=False, mutable=['cache'])
  cache = cache['cache']
  for path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(cache)).items():
    assert path[-1] == 'cache_index' or leaf.shape[0] == tokens.shape[0], path  # batch first
  encoded = module.apply({'params': params}, enc, enable_dropout=False, method=module.encode)
  decode = jax.jit(lambda cache, token: module.apply(
      {'params': params, 'cache': cache}, encoded, enc, token, token, enable_dropout=False,
      decode=True, max_decode_length=length, mutable=['cache'], method=module.decode))
  out = []
  for t in range(length):
    step, mutated = decode(cache, tokens[:, t:t + 1])
    cache = mutated['cache']
    out.append(np.asarray(step[:, 0]))
  return np.stack(out, axis=1)


@pytest.mark.parametrize('k', [1, 2, 4])
@pytest.mark.parametrize('selection', ['alternating', 'same'])
def test_cached_decode_equals_full_forward(k, selection):
  cfg = make_config(altup_k=k, altup_selection=selection)
  enc, dec_in, targets = make_batch(seed=7, pad=False)
  params, _ = init(cfg, data=(enc, dec_in, targets))
  params = randomize_coefficients(params, seed=k)
  full = logits_of(cfg, params, (enc, dec_in, targets))
  stepped = decode_step_by_step(cfg, params, enc, dec_in)
  np.testing.assert_allclose(stepped, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('k', [1, 2])
def test_greedy_decoding_with_cache_equals_recomputation(k):
  cfg = make_config(altup_k=k)
  enc, _, _ = make_batch(seed=8, pad=False)
  params, _ = init(cfg)
  params = randomize_coefficients(params, seed=k)
  module = Transformer(cfg)
  steps = 5
  b = enc.shape[0]
  # Without the cache: re-run the whole decoder on the growing prefix.
  prefix = np.zeros((b, steps + 1), np.int32)
  full = jax.jit(lambda dec: module.apply({'params': params}, enc, dec, jnp.ones_like(dec),
                                          enable_dropout=False))
  for t in range(steps):
    logits = full(jnp.asarray(prefix[:, :steps]))
    prefix[:, t + 1] = np.argmax(np.asarray(logits[:, t]), -1)
  # With the cache.
  _, cache = module.apply({'params': params}, encoder_input_tokens=enc,
                          decoder_input_tokens=jnp.zeros((b, steps), jnp.int32),
                          decoder_target_tokens=jnp.zeros((b, steps), jnp.int32), decode=True,
                          enable_dropout=False, mutable=['cache'])
  cache = cache['cache']
  encoded = module.apply({'params': params}, enc, enable_dropout=False, method=module.encode)
  token = jnp.zeros((b, 1), jnp.int32)
  cached = []
  decode = jax.jit(lambda cache, token: module.apply(
      {'params': params, 'cache': cache}, encoded, enc, token, token, enable_dropout=False,
      decode=True, max_decode_length=steps, mutable=['cache'], method=module.decode))
  for t in range(steps):
    logits, mutated = decode(cache, token)
    cache = mutated['cache']
    token = jnp.argmax(logits[:, -1], -1)[:, None].astype(jnp.int32)
    cached.append(np.asarray(token[:, 0]))
  np.testing.assert_array_equal(np.stack(cached, 1), prefix[:, 1:])


def test_cached_decode_without_max_decode_length_fails_clearly():
  cfg = make_config(altup_k=2)
  enc, dec_in, _ = make_batch(pad=False)
  params, _ = init(cfg)
  module = Transformer(cfg)
  _, cache = module.apply({'params': params}, encoder_input_tokens=enc, decoder_input_tokens=dec_in,
                          decoder_target_tokens=dec_in, decode=True, enable_dropout=False,
                          mutable=['cache'])
  encoded = module.apply({'params': params}, enc, enable_dropout=False, method=module.encode)
  with pytest.raises(ValueError, match='max_decode_length'):
    module.apply({'params': params, **cache}, encoded, enc, dec_in[:, :1], dec_in[:, :1],
                 enable_dropout=False, decode=True, mutable=['cache'], method=module.decode)


# (c) golden shapes, axis names and analytic parameter counts.
def expected_param_count(cfg):
  d, h, n, m, v = cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  k, le, ld = cfg.altup_k, cfg.num_encoder_layers, cfg.num_decoder_layers
  attention = 4 * d * h * n
  mlp = len(cfg.mlp_activations) * d * m + m * d
  relpos = h * cfg.relative_attention_num_buckets
  baseline = (v * d + le * (2 * d + attention + mlp) + relpos + d +
              ld * (3 * d + 2 * attention + mlp) + relpos + d +
              (0 if cfg.logits_via_embedding else d * v))
  if k == 1:
    return baseline
  extra = (k * k + k) * (le + ld)
  if cfg.altup_embedding == 'wide':
    extra += (k - 1) * v * d
  if cfg.altup_reduction == 'projection':
    extra += 2 * k * d * d
  return baseline + extra


def shapes_and_axes(variables):
  params = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables['params']), sep='/')
  axes = nn_partitioning.get_axis_names(variables['params_axes'])
  axes = flax.traverse_util.flatten_dict(flax.core.unfreeze(axes), sep='/')
  assert set(params) == set(axes), set(params) ^ set(axes)  # every parameter has axis names
  return {name: {'shape': list(params[name].shape), 'axes': list(axes[name])}
          for name in sorted(params)}


@pytest.mark.parametrize('name,overrides', [
    ('baseline', dict(altup_k=1)),
    ('altup_k2', dict(altup_k=2)),
    ('recycled_k4_projection', dict(altup_k=4, altup_embedding='recycled',
                                    altup_reduction='projection')),
])
def test_golden_param_shapes_and_axes(name, overrides):
  cfg = make_config(**overrides)
  variables = jax.eval_shape(
      lambda: Transformer(cfg).init(jax.random.PRNGKey(0), *make_batch(), enable_dropout=False))
  got = shapes_and_axes(variables)
  path = os.path.join(TESTDATA, f'params_{name}.json')
  if os.environ.get('ALTUP_UPDATE_GOLDEN'):
    with open(path, 'w') as f:
      json.dump(got, f, indent=1, sort_keys=True)
  with open(path) as f:
    assert got == json.load(f)
  total = sum(int(np.prod(v['shape'])) for v in got.values())
  assert total == expected_param_count(cfg)


@pytest.mark.parametrize('size', ['small', 'base', 'large', 'xl'])
@pytest.mark.parametrize('altup', [dict(altup_k=1), dict(altup_k=2), dict(altup_k=4)])
def test_real_sizes_by_shape_only(size, altup):
  cfg = AltUpConfig.from_size(size, dtype=jnp.bfloat16, **altup)
  tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
  variables = jax.eval_shape(
      lambda e, d: Transformer(cfg).init(jax.random.PRNGKey(0), e, d, d, enable_dropout=False),
      tokens, tokens)
  leaves = jax.tree_util.tree_leaves(variables['params'])
  assert all(leaf.dtype == jnp.float32 for leaf in leaves)  # params float32 under bf16
  assert sum(int(np.prod(leaf.shape)) for leaf in leaves) == expected_param_count(cfg)
  if size == 'small':
    logits = jax.eval_shape(
        lambda v, e, d: Transformer(cfg).apply(v, e, d, d, enable_dropout=False),
        variables, tokens, tokens)
    assert logits.shape == (2, 8, 32128) and logits.dtype == jnp.float32


def test_known_t5_1_1_parameter_counts():
  # T5.1.1 small and base (32128 vocab, untied logits): about 77M and 248M parameters.
  assert round(expected_param_count(AltUpConfig.from_size('small')) / 1e6) == 77
  assert round(expected_param_count(AltUpConfig.from_size('base')) / 1e6) == 248


# Training signal.
def test_gradients_reach_altup_coefficients():
  cfg = make_config(altup_k=2)
  data = make_batch()
  params, _ = init(cfg, data=data)
  params = randomize_coefficients(params, seed=2)

  def loss(p):
    logits = Transformer(cfg).apply({'params': p}, *data, enable_dropout=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, data[2]).mean()

  grads = jax.jit(jax.grad(loss))(params)
  for stack, n in (('encoder', cfg.num_encoder_layers), ('decoder', cfg.num_decoder_layers)):
    for i in range(n):
      for name in ('predict', 'correct'):
        g = np.asarray(grads[stack][f'altup_{i}'][name])
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, (stack, i, name)


def test_dropout_is_active_only_when_enabled():
  cfg = make_config(altup_k=2, dropout_rate=0.3)
  data = make_batch()
  params, _ = init(cfg, data=data)
  module = Transformer(cfg)
  det = module.apply({'params': params}, *data, enable_dropout=False)
  drop = module.apply({'params': params}, *data, enable_dropout=True,
                      rngs={'dropout': jax.random.PRNGKey(1)})
  assert not np.allclose(np.asarray(det), np.asarray(drop))
  np.testing.assert_array_equal(np.asarray(det),
                                np.asarray(module.apply({'params': params}, *data,
                                                        enable_dropout=False)))


def test_toy_copy_task_loss_falls_for_k2():
  vocab, length = 12, 6
  cfg = tiny_config(vocab_size=vocab, emb_dim=32, head_dim=16, mlp_dim=64, altup_k=2)
  module = Transformer(cfg)
  rng = np.random.RandomState(0)

  def sample(n):
    src = rng.randint(2, vocab, (n, length)).astype(np.int32)
    dec_in = np.concatenate([np.zeros((n, 1), np.int32), src[:, :-1]], 1)
    return jnp.asarray(src), jnp.asarray(dec_in), jnp.asarray(src)

  params = module.init(jax.random.PRNGKey(0), *sample(2), enable_dropout=False)['params']
  opt = optax.adam(1e-2)
  state = opt.init(params)

  @jax.jit
  def step(params, state, enc, dec_in, targets):
    def loss_fn(p):
      logits = module.apply({'params': p}, enc, dec_in, targets, enable_dropout=False)
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(400):
    params, state, loss = step(params, state, *sample(32))
    losses.append(float(loss))
  first, last = np.mean(losses[:10]), np.mean(losses[-10:])
  assert first > 2.0, first  # ~ln(10) at the start
  assert last < 0.1 * first, (first, last)


# Every invalid setting: one clear error naming the setting and what is allowed, at config time.
@pytest.mark.parametrize('overrides,pattern', [
    (dict(altup_k=0), r'altup_k=0 must be an integer >= 1'),
    (dict(altup_k=2.0), r'altup_k=2.0 must be an integer'),
    (dict(altup_selection='random'), r"altup_selection='random'.*'alternating', 'same'"),
    (dict(altup_layer_input='output'), r"altup_layer_input='output'.*'input', 'predicted'"),
    (dict(altup_embedding='tall'), r"altup_embedding='tall'.*'wide', 'recycled'"),
    (dict(altup_reduction='max'), r"altup_reduction='max'.*'mean', 'sum', 'projection'"),
    (dict(altup_coef_init='zeros'), r"altup_coef_init='zeros'.*'identity', 'normal'"),
    (dict(altup_coef_init_scale=-1.0), r'altup_coef_init_scale=-1.0 must be a number >= 0'),
    (dict(emb_dim=0), r'emb_dim=0 must be an integer >= 1'),
    (dict(vocab_size=-3), r'vocab_size=-3'),
    (dict(dropout_rate=1.5), r'dropout_rate=1.5 must be a number in \[0, 1\)'),
    (dict(mlp_activations=('gelu', 'softmax')), r"mlp_activations='softmax'"),
    (dict(mlp_activations='gelu'), r'mlp_activations=.*tuple'),
    (dict(dtype='int8'), r"dtype='int8'"),
    (dict(altup_k=2, logits_via_embedding=True), r"logits_via_embedding=True.*'recycled'"),
    (dict(altup_coefficients='learned'), r"altup_coefficients='learned'.*'static', 'dynamic'"),
    (dict(altup_coef_clip=0), r'altup_coef_clip=0 must be a number > 0'),
    (dict(sequence_altup_stride=0), r'sequence_altup_stride=0 must be an integer >= 1'),
    (dict(sequence_altup_mode='drop'), r"sequence_altup_mode='drop'.*'predict_correct', 'skip'"),
    (dict(moe_num_experts=1), r'moe_num_experts=1 is not a mixture'),
    (dict(moe_num_experts=4, moe_top_k=5), r'moe_top_k=5 exceeds moe_num_experts=4'),
    (dict(moe_routing='hash'), r"moe_routing='hash'.*'top_k', 'expert_choice'"),
    (dict(moe_capacity_factor=0.0), r'moe_capacity_factor=0.0 must be a number > 0'),
])
def test_invalid_settings_raise_one_clear_error(overrides, pattern):
  with pytest.raises(ConfigError, match=pattern):
    make_config(**overrides)


def test_unknown_size_is_rejected():
  with pytest.raises(ConfigError, match="size='huge'.*'tiny', 'small'"):
    AltUpConfig.from_size('huge')
  assert set(SIZES) == {'tiny', 'small', 'base', 'large', 'xl', 'xxl'}


def test_recycled_allows_tied_logits():
  cfg = make_config(altup_k=2, altup_embedding='recycled', logits_via_embedding=True)
  data = make_batch()
  params, _ = init(cfg, data=data)
  assert 'logits_dense' not in params['decoder']
  got = logits_of(cfg, params, data)
  want = numpy_reference.forward(jax.device_get(params), cfg, *data)
  m = valid(data[2])
  np.testing.assert_allclose(got[m], want[m], rtol=2e-5, atol=2e-5)

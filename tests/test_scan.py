"""Scaling options: scanned == unrolled stacks, remat == no remat, one-hot == gather lookup,
cached decoding with scanned layers, and the scanned <-> unrolled checkpoint converter."""
import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_batch, tiny_config
from altup_t5x import models
from altup_t5x import moe
from altup_t5x import scan_convert
from altup_t5x.config import AltUpConfig, ConfigError
from altup_t5x.network import Transformer

# Four layers per stack and random (not identity) AltUp coefficients.
make_config = functools.partial(
    tiny_config, vocab_size=32, emb_dim=8, head_dim=4, mlp_dim=12, num_encoder_layers=4,
    num_decoder_layers=4, altup_coef_init='normal', altup_coef_init_scale=0.3)
_data = functools.partial(make_batch, le=8, vocab=32, low=2)


def _loss_and_grads(cfg, params, data):
  def loss(p):
    logits = Transformer(cfg).apply({'params': p}, *data, enable_dropout=False)
    return jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(data[2], cfg.vocab_size)), logits
  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, logits, grads


def _unrolled_params(cfg, data, seed=0):
  # Jitted: an eager init of the MoE/Sequence-AltUp stacks dispatches op by op (~30 s on 2 cores).
  variables = jax.jit(lambda: Transformer(cfg).init(jax.random.PRNGKey(seed), *data,
                                                      enable_dropout=False))()
  return flax.core.unfreeze(variables['params'])


def _assert_trees_close(a, b, **kw):
  flat_a = flax.traverse_util.flatten_dict(a)
  flat_b = flax.traverse_util.flatten_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_allclose(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=str(k), **kw)


SETTINGS = {
    'k1': dict(altup_k=1),
    'k2': dict(altup_k=2),
    'k4_same_projection': dict(altup_k=4, altup_selection='same', altup_reduction='projection'),
    'k4_axis0': dict(altup_k=4, param_scan_axis=0),
    'k2_dynamic_recycled': dict(altup_k=2, altup_coefficients='dynamic',
                                altup_embedding='recycled'),
    'k2_moe_every_2': dict(altup_k=2, moe_num_experts=2, moe_every=2, moe_top_k=1,
                           moe_capacity_factor=2.0),
    'k2_sequence_s2': dict(altup_k=2, sequence_altup_stride=2),
}


@pytest.mark.parametrize('name', sorted(SETTINGS))
def test_scan_equals_unrolled(name):
  unrolled_cfg = make_config(**SETTINGS[name])
  scanned_cfg = unrolled_cfg.replace(scan_layers=True)
  data = _data()
  params = _unrolled_params(unrolled_cfg, data)
  scanned = scan_convert.to_scanned(params, scanned_cfg.layer_period(True),
                                    scanned_cfg.layer_period(False), scanned_cfg.param_scan_axis)
  # The converted tree is exactly the tree a scanned model initialises.
  init_shapes = jax.eval_shape(lambda: Transformer(scanned_cfg).init(
      jax.random.PRNGKey(0), *data, enable_dropout=False)['params'])
  assert (jax.tree_util.tree_map(np.shape, flax.core.unfreeze(init_shapes)) ==
          jax.tree_util.tree_map(np.shape, scanned))
  loss_u, logits_u, grads_u = _loss_and_grads(unrolled_cfg, params, data)
  loss_s, logits_s, grads_s = _loss_and_grads(scanned_cfg, scanned, data)
  np.testing.assert_allclose(np.asarray(logits_s), np.asarray(logits_u), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(loss_s), float(loss_u), rtol=1e-5)
  grads_s = scan_convert.to_unrolled(flax.core.unfreeze(grads_s), scanned_cfg.param_scan_axis)
  _assert_trees_close(grads_s, flax.core.unfreeze(grads_u), rtol=1e-5, atol=1e-5)
  if unrolled_cfg.moe_num_experts:  # MoE metrics are sown stacked by the scan: same means
    metrics = [moe.layer_metrics(jax.jit(lambda p, c=c: Transformer(c).apply(
        {'params': p}, *data, enable_dropout=False, mutable=['intermediates'])[1])(p)[
            'intermediates']) for c, p in ((unrolled_cfg, params), (scanned_cfg, scanned))]
    for name in moe.MOE_METRICS:
      np.testing.assert_allclose(float(metrics[1][name]), float(metrics[0][name]), rtol=1e-5,
                                 atol=1e-6)


@pytest.mark.parametrize('scan', [False, True])
def test_remat_policies_equal_no_remat(scan):
  base = make_config(altup_k=2, scan_layers=scan)
  data = _data(1)
  params = _unrolled_params(base, data)
  loss0, _, grads0 = _loss_and_grads(base, params, data)
  for policy in ('minimal', 'full'):
    loss, _, grads = _loss_and_grads(base.replace(remat_policy=policy), params, data)
    np.testing.assert_allclose(float(loss), float(loss0), rtol=1e-6)
    # Recomputed forward values may round differently: gradients of O(1) agree to 1e-5.
    _assert_trees_close(flax.core.unfreeze(grads), flax.core.unfreeze(grads0), rtol=1e-5,
                        atol=1e-5)


def test_one_hot_embedding_equals_gather():
  cfg = make_config(altup_k=2)
  data = _data(2)
  params = _unrolled_params(cfg, data)
  loss0, logits0, grads0 = _loss_and_grads(cfg, params, data)
  loss1, logits1, grads1 = _loss_and_grads(cfg.replace(one_hot_embedding=True), params, data)
  np.testing.assert_array_equal(np.asarray(logits1), np.asarray(logits0))
  _assert_trees_close(flax.core.unfreeze(grads1), flax.core.unfreeze(grads0), rtol=1e-6, atol=0)


@pytest.mark.parametrize('remat', ['none', 'minimal'])  # the XXL configs decode scanned + minimal
def test_scanned_cached_decode_equals_full_forward(remat):
  cfg = make_config(altup_k=2, scan_layers=True, num_encoder_layers=2, num_decoder_layers=2,
                    remat_policy=remat)
  model = models.EncoderDecoderModel(Transformer(cfg), decode_fn='greedy')
  length = 4
  enc = jnp.asarray(np.array([[3, 4, 5, 6, 1], [7, 8, 9, 1, 0]], np.int32))
  params = model.get_initial_variables(
      jax.random.PRNGKey(3), {'encoder_input_tokens': enc.shape,
                              'decoder_input_tokens': (2, length)})['params']
  params = jax.tree_util.tree_map(lambda x: 3.0 * x, params)  # well separated argmaxes
  batch = {'encoder_input_tokens': enc, 'decoder_input_tokens': jnp.zeros((2, length), jnp.int32),
           'decoder_target_tokens': jnp.zeros((2, length), jnp.int32)}
  decodes, _ = model.predict_batch_with_aux(params, batch)
  # Teacher-forced full forward on the decoded prefix: each token is the argmax of its position.
  decodes = np.asarray(decodes)
  dec_in = np.pad(decodes[:, :-1], ((0, 0), (1, 0)))
  logits = model.module.apply({'params': params}, enc, jnp.asarray(dec_in),
                              jnp.ones_like(jnp.asarray(dec_in)), enable_dropout=False)
  expected = np.argmax(np.asarray(logits), axis=-1)
  for b in range(2):
    eos = list(decodes[b]).index(1) if 1 in decodes[b] else length - 1
    np.testing.assert_array_equal(decodes[b, :eos + 1], expected[b, :eos + 1])
  # Beam search reorders the stacked cache on its batch axis (axis 1).
  beams, _ = model.predict_batch_with_aux(params, batch, num_decodes=1,
                                          decoder_params={'decode_fn': 'beam_search'})
  np.testing.assert_array_equal(np.asarray(beams), decodes)


def test_scanned_golden_shapes():
  cfg = AltUpConfig.from_size('small', altup_k=2, scan_layers=True, dropout_rate=0.0)
  shapes = jax.eval_shape(lambda: Transformer(cfg).init(
      jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32), jnp.ones((1, 4), jnp.int32),
      jnp.ones((1, 4), jnp.int32), enable_dropout=False))
  params = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes['params']), sep='/')
  axes = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes['params_axes']), sep='/')
  # 8 layers in groups of K=2: a 'layers' axis of 4 at position 1.
  assert params['encoder/layers/layers_0/attention/query/kernel'].shape == (512, 4, 384)
  assert params['encoder/layers/layers_1/mlp/wo/kernel'].shape == (1024, 4, 512)
  assert params['encoder/layers/altup_1/predict'].shape == (2, 4, 2)
  assert params['decoder/layers/layers_0/pre_mlp_layer_norm/scale'].shape == (512, 4)
  assert params['encoder/relpos_bias/rel_embedding'].shape == (6, 32)
  assert params['token_embedder/embedding'].shape == (32128, 1024)
  assert axes['encoder/layers/layers_0/attention/query/kernel_axes'].names == (
      'embed', 'layers', 'joined_kv')
  assert axes['encoder/layers/altup_0/predict_axes'].names == (
      'altup_blocks', 'layers', 'altup_blocks_in')
  assert not any('layers_2' in k for k in params)


def _random_tree(seed, cfg):
  shapes = jax.eval_shape(lambda: Transformer(cfg).init(
      jax.random.PRNGKey(0), *_data(), enable_dropout=False)['params'])
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: rng.randn(*s.shape).astype(np.float32),
                                flax.core.unfreeze(shapes))


@pytest.mark.parametrize('axis', [0, 1])
def test_converter_round_trips_exactly(axis):
  cfg = make_config(altup_k=2, sequence_altup_stride=2, moe_num_experts=2, moe_every=4,
                    num_encoder_layers=8, num_decoder_layers=8)
  unrolled = _random_tree(0, cfg)
  scanned = scan_convert.to_scanned(unrolled, cfg.layer_period(True), cfg.layer_period(False),
                                    axis)
  assert set(scanned['encoder']['layers']) >= {'layers_0', 'layers_3', 'altup_3',
                                              'sequence_altup_1'}
  back = scan_convert.to_unrolled(scanned, axis)
  _assert_trees_close(back, unrolled, rtol=0, atol=0)
  again = scan_convert.to_scanned(back, cfg.layer_period(True), cfg.layer_period(False), axis)
  _assert_trees_close(again, scanned, rtol=0, atol=0)
  with pytest.raises(scan_convert.ConvertError, match='already scanned'):
    scan_convert.to_scanned(scanned, 4, 4, axis)
  with pytest.raises(scan_convert.ConvertError, match='not a multiple'):
    scan_convert.to_scanned(unrolled, 3, 3, axis)


def test_converter_cli_on_runner_checkpoint(tmp_path):
  import orbax.checkpoint as ocp
  cfg = make_config(altup_k=2)
  unrolled = _random_tree(1, cfg)
  src = tmp_path / 'model' / 'checkpoints'
  manager = ocp.CheckpointManager(str(src), options=ocp.CheckpointManagerOptions(create=True))
  manager.save(7, args=ocp.args.StandardSave({'step': np.asarray(7), 'params': unrolled,
                                              'opt_state': {}}))
  manager.wait_until_finished()
  out = tmp_path / 'scanned'
  assert scan_convert.main(['--to', 'scanned', '--period', '2', '--in', str(tmp_path / 'model'),
                            '--out', str(out)]) == 0
  assert scan_convert.main(['--to', 'unrolled', '--in', str(out), '--out',
                            str(tmp_path / 'unrolled')]) == 0
  restored = ocp.PyTreeCheckpointer().restore(
      str(tmp_path / 'unrolled' / 'checkpoints' / '7' / 'default'))
  _assert_trees_close(jax.tree_util.tree_map(np.asarray, restored['params']), unrolled, rtol=0,
                      atol=0)
  # Never writes into an existing directory.
  assert scan_convert.main(['--to', 'unrolled', '--in', str(out), '--out', str(out)]) == 1


def test_converter_cli_on_t5x_checkpoint(tmp_path):
  """A T5X checkpoint (written by real t5x.train) -> scanned T5X checkpoint -> unrolled: exact."""
  from altup_t5x import convert
  src = os.path.join(os.path.dirname(__file__), 'testdata', 't5x_tiny_dense')
  original = convert.open_checkpoint(src)
  scanned, back = tmp_path / 'scanned', tmp_path / 'back'
  assert scan_convert.main(['--to', 'scanned', '--period', '1', '--in', src, '--out',
                            str(scanned)]) == 0
  s = convert.open_checkpoint(str(scanned))
  assert s.kind == 't5x' and s.step == original.step
  stacked = [p for p in s.shapes if p[:2] == ('encoder', 'layers')]
  assert stacked and all(p[2] == 'layers_0' for p in stacked)
  n_enc = len({p[1] for p in original.shapes if p[0] == 'encoder' and p[1].startswith('layers_')})
  assert all(s.shapes[p][1] == n_enc for p in stacked)  # param_scan_axis=1
  assert scan_convert.main(['--to', 'unrolled', '--in', str(scanned), '--out', str(back)]) == 0
  b = convert.open_checkpoint(str(back))
  assert b.kind == 't5x' and set(b.shapes) == set(original.shapes)
  for p in original.shapes:
    np.testing.assert_array_equal(b.read(p), original.read(p))


def test_bad_scaling_settings_are_one_clear_error():
  with pytest.raises(ConfigError, match=r"remat_policy='some'.*'none', 'minimal', 'full'"):
    make_config(remat_policy='some')
  with pytest.raises(ConfigError, match='param_scan_axis=2.*0, 1'):
    make_config(param_scan_axis=2)
  with pytest.raises(ConfigError, match='scan_layers=1 must be True or False'):
    make_config(scan_layers=1)
  with pytest.raises(ConfigError, match='groups of 4 layers.*num_encoder_layers=6'):
    make_config(altup_k=4, scan_layers=True, num_encoder_layers=6)
  assert make_config(altup_k=2, moe_num_experts=2, moe_every=3).layer_period() == 6
  assert make_config(altup_k=2, altup_selection='same').layer_period() == 1
  assert make_config(altup_k=2, sequence_altup_stride=3).layer_period(False) == 2

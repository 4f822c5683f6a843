"""Checkpoint conversion: upcycled logits equal the dense logits, runner <-> T5X round trips exactly,
refused variants say why, and an existing output directory is never touched.

The T5X side is checked against checkpoints that real T5X wrote (tests/testdata/t5x_tiny_dense*/,
see tests/testdata/README.md), so these tests run without T5X installed.
"""
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_batch, tiny_config
from altup_t5x import checkpoints, convert, optimizers, upcycle
from altup_t5x.config import AltUpConfig
from altup_t5x.network import Transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(REPO, 'tests', 'testdata', 't5x_tiny_dense')  # T5X HEAD's Orbax format
LEGACY = os.path.join(REPO, 'tests', 'testdata', 't5x_tiny_dense_legacy')  # the public ckpts' format
# configs/smoke/tiny_baseline_pretrain.gin: T5X's tiny size with the embedded vocabulary.
T5X_TINY = dict(vocab_size=1152, emb_dim=8, num_heads=4, head_dim=3, mlp_dim=16,
                num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)

# Every variant that can start as the dense function (gin/altup/* settings).
SUPPORTED = {
    'wide_k2': dict(altup_k=2),
    'wide_k4': dict(altup_k=4),
    'recycled_k2': dict(altup_k=2, altup_embedding='recycled'),
    'recycled_k4': dict(altup_k=4, altup_embedding='recycled'),
    'dynamic_k2': dict(altup_k=2, altup_coefficients='dynamic'),
    'dynamic_k4_same_predicted': dict(altup_k=4, altup_coefficients='dynamic',
                                      altup_selection='same', altup_layer_input='predicted'),
    'projection_k2': dict(altup_k=2, altup_reduction='projection'),
    'same_block_k2': dict(altup_k=2, altup_selection='same'),
}
REFUSED = {
    'dense': (dict(altup_k=1), 'nothing to upcycle'),
    'normal_init': (dict(altup_k=2, altup_coef_init='normal'), "altup_coef_init='normal'"),
    'sum': (dict(altup_k=2, altup_embedding='recycled', altup_reduction='sum'),
            "altup_reduction='sum'.*epsilon"),
    'sequence': (dict(altup_k=2, sequence_altup_stride=2), 'sequence_altup_stride=2'),
    'moe': (dict(altup_k=2, moe_num_experts=4), 'moe_num_experts=4'),
}


_DENSE_LOGITS = {}


def logits(cfg, source):
  key = (cfg, source.path)
  if key in _DENSE_LOGITS:
    return _DENSE_LOGITS[key]
  params = flax.traverse_util.unflatten_dict({p: source.read(p) for p in source.shapes})
  enc, dec, tgt = make_batch(le=9, ld=6, vocab=cfg.vocab_size)
  run = jax.jit(lambda p: Transformer(cfg).apply({'params': p}, enc, dec, tgt,
                                                 enable_dropout=False))
  out = _DENSE_LOGITS[key] = np.asarray(run(params))
  return out


@pytest.fixture(scope='module')
def runner_dense(tmp_path_factory):
  """A dense checkpoint written by the runner's own Checkpointer (params + optax state)."""
  cfg = tiny_config()
  tokens = jnp.ones((1, 4), jnp.int32)
  params = Transformer(cfg).init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                                 enable_dropout=False)['params']
  model_dir = tmp_path_factory.mktemp('runner_dense')
  ckpt = checkpoints.Checkpointer(str(model_dir / 'checkpoints'), async_save=False)
  ckpt.save({'step': jnp.asarray(12, jnp.int32), 'params': params,
             'opt_state': optimizers.adafactor().init(params)}, 12, wait=True)
  ckpt.close()
  return cfg, str(model_dir)


def t5x_dense(path=TESTDATA):
  return AltUpConfig(**T5X_TINY), convert.open_t5x(path)


def test_reads_the_checkpoint_t5x_wrote():
  cfg, source = t5x_dense()
  assert source.kind == 't5x' and source.step == 20
  assert source.shapes == {p: s.shape for p, s in upcycle.param_shapes(cfg).items()}
  out = logits(cfg, source)
  assert np.all(np.isfinite(out)) and out.shape == (2, 6, 1152)


def test_reads_the_legacy_format_t5x_wrote(tmp_path):
  cfg, source = t5x_dense(LEGACY)
  assert isinstance(source, convert.T5XLegacySource) and source.step == 20
  assert source.shapes == {p: s.shape for p, s in upcycle.param_shapes(cfg).items()}
  target = cfg.replace(altup_k=2, altup_embedding='recycled')
  result = convert.open_t5x(convert.upcycle(source, target, str(tmp_path / 'out')))
  np.testing.assert_allclose(logits(target, result), logits(cfg, source), rtol=1e-5, atol=1e-5)
  back = convert.open_runner(convert.convert(source, str(tmp_path / 'runner'), 'runner'))
  for path in source.shapes:
    np.testing.assert_array_equal(source.read(path), back.read(path))


# Under a minute in all; the two variants whose code path test_extensions.py also covers (through
# upcycle.upcycle_params) run with the slow tests.
T5X_VARIANTS = [pytest.param(v, marks=pytest.mark.slow) if v in ('projection_k2', 'same_block_k2')
                else v for v in sorted(SUPPORTED)]


@pytest.mark.parametrize('variant', T5X_VARIANTS)
def test_upcycled_t5x_checkpoint_gives_the_dense_logits(variant, tmp_path):
  cfg, source = t5x_dense()
  target = cfg.replace(**SUPPORTED[variant])
  written = convert.upcycle(source, target, str(tmp_path / 'out'))
  assert written == str(tmp_path / 'out' / 'checkpoint_0')
  result = convert.open_t5x(written)
  assert result.step == 0
  np.testing.assert_allclose(logits(target, result), logits(cfg, source), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('variant,fmt', [('recycled_k2', 't5x'), ('wide_k4', 't5x'),
                                         ('dynamic_k2', 'runner')])
def test_upcycled_runner_checkpoint_gives_the_dense_logits(runner_dense, variant, fmt, tmp_path):
  cfg, model_dir = runner_dense
  source = convert.open_checkpoint(model_dir)
  assert source.kind == 'runner' and source.step == 12
  target = cfg.replace(**SUPPORTED[variant])
  written = convert.upcycle(source, target, str(tmp_path / 'out'), fmt)
  result = convert.open_checkpoint(written)
  assert result.kind == fmt
  np.testing.assert_allclose(logits(target, result), logits(cfg, source), rtol=1e-5, atol=1e-5)
  if fmt == 'runner':  # the runner restores it as INITIAL_CHECKPOINT_PATH / CHECKPOINT_PATH
    abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                                      flax.traverse_util.unflatten_dict(
                                          upcycle.param_shapes(target)))
    params, step = checkpoints.restore_params(str(tmp_path / 'out'), abstract)
    assert step == 0 and params['encoder']['altup_1']['predict'].shape == (2, 2, 2)


def test_wide_embedding_is_the_dense_table_per_block(tmp_path):
  cfg, source = t5x_dense()
  result = convert.open_t5x(convert.upcycle(source, cfg.replace(altup_k=4), str(tmp_path / 'o')))
  dense = source.read(('token_embedder', 'embedding'))
  np.testing.assert_array_equal(result.read(('token_embedder', 'embedding')),
                                np.concatenate([dense] * 4, axis=1))
  np.testing.assert_array_equal(result.read(('decoder', 'altup_1', 'predict')), np.eye(4))
  np.testing.assert_array_equal(result.read(('decoder', 'altup_1', 'correct')), np.ones(4))


def test_runner_t5x_round_trip_is_exact(runner_dense, tmp_path):
  _, model_dir = runner_dense
  source = convert.open_runner(model_dir)
  t5x_dir = convert.convert(source, str(tmp_path / 't5x'), 't5x')
  assert os.path.isdir(os.path.join(t5x_dir, 'state'))
  back = convert.open_runner(convert.convert(convert.open_t5x(t5x_dir), str(tmp_path / 'back'),
                                             'runner'))
  assert back.step == source.step == 12 and back.shapes == source.shapes
  for path in source.shapes:
    a, b = source.read(path), back.read(path)
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_t5x_runner_round_trip_is_exact(tmp_path):
  _, source = t5x_dense()
  runner_dir = convert.convert(source, str(tmp_path / 'runner'), 'runner')
  again = convert.open_t5x(convert.convert(convert.open_runner(runner_dir),
                                           str(tmp_path / 't5x'), 't5x'))
  assert again.step == 20 and again.shapes == source.shapes
  for path in source.shapes:
    np.testing.assert_array_equal(source.read(path), again.read(path))


@pytest.mark.parametrize('variant', sorted(REFUSED))
def test_refused_variants_name_the_reason(runner_dense, variant, tmp_path):
  cfg, model_dir = runner_dense
  overrides, message = REFUSED[variant]
  with pytest.raises(upcycle.UpcycleError, match=message):
    convert.upcycle(convert.open_runner(model_dir), cfg.replace(**overrides),
                    str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out')


def test_mismatched_size_is_refused_before_writing(runner_dense, tmp_path):
  cfg, model_dir = runner_dense
  with pytest.raises(upcycle.UpcycleError, match='mlp.*shape'):
    convert.upcycle(convert.open_runner(model_dir), cfg.replace(altup_k=2, mlp_dim=32),
                    str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out')


def _snapshot(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      with open(p, 'rb') as fh:
        out[os.path.relpath(p, root)] = (fh.read(), os.stat(p).st_mtime_ns)
  return out


@pytest.mark.parametrize('command', ['upcycle', 'runner-to-t5x', 'convert-into-empty-dir'])
def test_existing_output_is_never_touched(runner_dense, command, tmp_path):
  cfg, model_dir = runner_dense
  out = tmp_path / 'existing'
  out.mkdir()
  if command != 'convert-into-empty-dir':
    (out / 'checkpoint_0').mkdir()
    (out / 'checkpoint_0' / 'keep.txt').write_text('user data')
  before = _snapshot(out)
  with pytest.raises(convert.ConvertError, match='already exists'):
    if command == 'upcycle':
      convert.upcycle(convert.open_runner(model_dir), cfg.replace(altup_k=2), str(out))
    else:
      convert.main(['runner-to-t5x', f'--input={model_dir}', f'--output={out}'])
  assert _snapshot(out) == before
  assert sorted(os.listdir(tmp_path)) == ['existing']  # no temporary directory left behind


def test_command_line(runner_dense, tmp_path):
  _, model_dir = runner_dense
  cmd = [sys.executable, '-m', 'altup_t5x.convert', 'upcycle', f'--input={model_dir}',
         f'--output={tmp_path / "k2"}', '--gin_file=gin/t5_1_1/tiny.gin',
         '--gin_file=gin/altup/recycled_k2.gin', '--gin.NUM_EMBEDDINGS=40', '--gin.EMBED_DIM=16',
         '--gin.NUM_HEADS=2', '--gin.HEAD_DIM=8', '--gin.MLP_DIM=24']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'upcycled' in proc.stdout and os.path.isdir(tmp_path / 'k2' / 'checkpoint_0' / 'state')
  again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
  assert again.returncode == 2 and 'already exists' in again.stderr
  assert 'Traceback' not in again.stderr


@pytest.mark.t5x
def test_restore_gin_gives_t5x_a_fallback_that_changes_nothing():
  """gin/t5x_restore_missing_from_scratch.gin as T5X reads it (end to end: README)."""
  pytest.importorskip('t5x.utils', reason='T5X is not installed (it is not on PyPI; see README)')
  import gin
  from t5x import utils as t5x_utils
  gin.clear_config()
  try:
    gin.parse_config_file(os.path.join(REPO, 'gin', 't5x_restore_missing_from_scratch.gin'))
    cfg = gin.get_configurable(t5x_utils.RestoreCheckpointConfig)(path='/x', mode='specific')
  finally:
    gin.clear_config()
  assert cfg.fallback_to_scratch and cfg.state_transformation_fns
  # T5X's check passes and builds the fallback; the transformation keeps every entry as it is.
  fallback = t5x_utils.get_fallback_state(cfg, lambda rng: {'target': {'a': 1}}, np.zeros(2))
  assert fallback == {'target': {'a': 1}}
  ckpt = {'target': {'w': np.arange(3.0)}, 'state': {'step': np.int32(20)}}
  model = {'target': {'w': 0, 'altup_0': {'predict': 0}}, 'state': {'step': 0}}
  out = ckpt
  for fn in cfg.state_transformation_fns:
    out = fn(out, model)
  assert set(out) == {'target', 'state'} and out['state']['step'] == 20
  np.testing.assert_array_equal(out['target']['w'], np.arange(3.0))
  assert 'altup_0' not in out['target']

"""The standalone runner end to end, at T5X's tiny size on the embedded task (CPU).

Default run: train -> checkpoint -> eval -> infer (predict and score) round trip, the clear
errors and NaN handling. `-m slow`: 8 fake-device meshes, killing and resuming runs.
"""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import seqio

from altup_t5x import cli
from altup_t5x.data import datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
TINY = ['gin/t5_1_1/tiny.gin', 'gin/altup/k2.gin', 'gin/runner/model.gin']
QUIET_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu',
                 XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1')


def _configure(run_gin, bindings, arch=TINY):
  cli.parse_gin(arch + [run_gin, 'gin/runner/cpu_tiny.gin'], [REPO], bindings)


def _train(model_dir, steps, *extra, arch=TINY):
  from altup_t5x import train
  _configure('gin/runner/pretrain.gin',
             [f'MODEL_DIR = {str(model_dir)!r}', f'TRAIN_STEPS = {steps}', 'CHECKPOINT_PERIOD = 3',
              'KEEP_CHECKPOINTS = 2', *extra], arch)
  return cli.call_configured(train.train, 'train')


def _losses(model_dir):
  """{step: loss} from train_metrics.jsonl (a resumed run's later rows win)."""
  out = {}
  with open(os.path.join(model_dir, 'train_metrics.jsonl')) as f:
    for line in f:
      row = json.loads(line)
      out[row['step']] = row['loss']
  return out


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('run') / 'k2'
  result = _train(model_dir, 7)
  return model_dir, result


def test_train_checkpoint_eval_infer_round_trip(trained, tmp_path, capsys):
  from altup_t5x import eval as eval_lib
  from altup_t5x import infer as infer_lib
  model_dir, result = trained
  assert result['status'] == 'completed' and result['step'] == 7
  assert np.isfinite(result['loss'])
  # Periodic (3, 6) and final (7) saves, keep-2.
  assert sorted(int(s) for s in os.listdir(model_dir / 'checkpoints') if s.isdigit()) == [6, 7]
  assert os.path.isdir(model_dir / 'train')  # TensorBoard
  losses = _losses(model_dir)
  assert sorted(losses) == list(range(1, 8)) and losses[7] < losses[1]

  _configure('gin/runner/eval.gin', [f'CHECKPOINT_PATH = {str(model_dir)!r}',
                                      f'EVAL_OUTPUT_DIR = {str(tmp_path / "eval")!r}',
                                      'EVAL_STEPS = 2', 'MAX_PREDICT_EXAMPLES = 3'])
  capsys.readouterr()
  metrics = cli.call_configured(eval_lib.evaluate, 'eval')
  assert metrics['step'] == 7
  # Limited metrics say so, with the split's size (the embedded validation split, these lengths).
  out = capsys.readouterr().out
  total = len(eval_lib.raw_examples(
      seqio.get_mixture_or_task('altup_embedded_span_corruption'),
      datasets.DatasetConfig('altup_embedded_span_corruption', {'inputs': 32, 'targets': 8},
                             split='validation'), None))
  assert f'(metrics on 16 of {total} examples: EVAL_STEPS=2)' in out, out
  assert f'(metrics on 3 of {total} examples: MAX_PREDICT_EXAMPLES=3)' in out, out
  assert 0.0 <= metrics['accuracy'] <= 1.0 and np.isfinite(metrics['cross_ent_loss'])
  task = 'altup_embedded_span_corruption'
  assert 0.0 <= metrics[f'{task}/decode_exact_match'] <= 100.0
  assert 0.0 <= metrics[f'{task}/sequence_accuracy'] <= 100.0  # the task's own seqio metric
  assert json.load(open(tmp_path / 'eval' / 'metrics.json'))['step'] == 7

  rows = {}
  for mode in ('predict', 'score'):
    _configure('gin/runner/infer.gin', [f'CHECKPOINT_PATH = {str(model_dir / "checkpoints")!r}',
                                         f'INFER_OUTPUT_DIR = {str(tmp_path / "infer")!r}',
                                         f'infer_script.infer.mode = {mode!r}', 'MAX_EXAMPLES = 3',
                                         'NUM_DECODES = 2'])
    rows[mode] = cli.call_configured(infer_lib.infer, 'infer')
    assert len(rows[mode]) == 3
    assert os.path.exists(tmp_path / 'infer' / f'altup_embedded_span_corruption-{mode}.jsonl')
  assert all(isinstance(r['prediction'], str) and np.isfinite(r['score']) for r in rows['predict'])
  assert all(r['score'] < 0 for r in rows['score'])


def test_resume_is_noop_when_done_and_continues_with_more_steps(trained, tmp_path):
  model_dir, _ = trained
  result = _train(model_dir, 7)
  assert result['start_step'] == 7 and result['step'] == 7


# ------------------------------------------------------------------------------------------------
# One clear error each, before anything is compiled.

@pytest.fixture
def no_compile(monkeypatch):
  """Any jit compilation of a train/eval step fails the test."""
  from altup_t5x import trainer
  def boom(*a, **k):
    raise AssertionError('compiled before the error was raised')
  monkeypatch.setattr(trainer.Trainer, 'init_state', boom)
  monkeypatch.setattr(trainer.Trainer, 'train_step', boom)
  monkeypatch.setattr(trainer.Trainer, 'eval_step', boom)


def test_missing_gin_file(no_compile):
  with pytest.raises(cli.RunnerError, match=r"gin file 'gin/runner/nope.gin' not found"):
    cli.parse_gin(TINY + ['gin/runner/nope.gin'], [REPO])


def test_malformed_gin_file(tmp_path, no_compile):
  bad = tmp_path / 'bad.gin'
  bad.write_text('MODEL_DIR = \n  train_script.train(((\n')
  with pytest.raises(cli.RunnerError, match='malformed gin configuration'):
    cli.parse_gin(TINY + [str(bad)], [REPO])


def test_unknown_task(tmp_path, no_compile):
  with pytest.raises(cli.RunnerError, match=r"MIXTURE_OR_TASK_NAME='no_such_task' is not a "
                                              r"registered seqio task.*altup_embedded"):
    _train(tmp_path / 'x', 2, "MIXTURE_OR_TASK_NAME = 'no_such_task'")


@pytest.mark.parametrize('lengths,match', [
    ("{'inputs': 32, 'targets': 4}", r"TASK_FEATURE_LENGTHS\['targets'\]=4 cannot hold the data"),
    ("{'inputs': 32, 'targets': 1}", r"cannot hold the data: it must be an integer >= 2"),
    ("{'inputs': 32}", r'must give exactly the features'),
])
def test_feature_lengths_that_cannot_hold_the_data(tmp_path, no_compile, lengths, match):
  with pytest.raises(cli.RunnerError, match=match):
    _train(tmp_path / 'x', 2, f'TASK_FEATURE_LENGTHS = {lengths}')


def test_checkpoint_of_another_architecture(trained, tmp_path, no_compile):
  from altup_t5x import eval as eval_lib
  model_dir, _ = trained  # an AltUp K=2 run
  baseline = ['gin/t5_1_1/tiny.gin', 'gin/altup/baseline.gin', 'gin/runner/model.gin']
  with pytest.raises(cli.RunnerError, match='different architecture.*altup_0'):
    _train(model_dir, 9, arch=baseline)  # resuming
  _configure('gin/runner/eval.gin', [f'CHECKPOINT_PATH = {str(model_dir)!r}',
                                      f'EVAL_OUTPUT_DIR = {str(tmp_path)!r}'], baseline)
  with pytest.raises(cli.RunnerError, match='different architecture'):
    cli.call_configured(eval_lib.evaluate, 'eval')


def _cli_train(capsys, *flags):
  """`python -m altup_t5x.train ...` in-process: (exit status, stderr lines)."""
  from altup_t5x import train
  argv = [f'--gin_search_paths={REPO}',
          *[f'--gin_file={f}' for f in TINY + ['gin/runner/pretrain.gin', 'gin/runner/cpu_tiny.gin']],
          '--gin.TRAIN_STEPS=2', *flags]
  capsys.readouterr()
  code = cli.run_cli(train.main, argv, {train.NonFiniteLossError: 3})
  return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize('flag,match', [
    ('--gin.ALTUP_K=0', r'AltUpConfig\.altup_k=0'),
    ("--gin.ALTUP_SELECTION='alternate'", r"AltUpConfig\.altup_selection='alternate' is not supported"),
    ('--gin.DROPOUT_RATE=-0.1', r'AltUpConfig\.dropout_rate=-0\.1'),
    ('--gin.ALTUP_K=(2', r"malformed gin configuration in the binding 'ALTUP_K = \(2'.*TokenError"),
    ('--gin.BATCH_SIZE=0', r'BATCH_SIZE=0 must be a positive integer'),
])
def test_bad_settings_give_one_error_line_and_exit_2(tmp_path, capsys, no_compile, flag, match):
  code, err = _cli_train(capsys, f'--gin.MODEL_DIR={tmp_path / "m"}', flag)
  assert code == 2 and len(err) == 1 and err[0].startswith('ERROR: '), err
  assert re.search(match, err[0]), err[0]


def test_model_dir_that_is_a_file(tmp_path, capsys, no_compile):
  path = tmp_path / 'a_file'
  path.write_text('x')
  code, err = _cli_train(capsys, f'--gin.MODEL_DIR={path}')
  assert code == 2 and err == [f"ERROR: MODEL_DIR='{path}' is a file; expected a directory "
                               "(created if missing)."]
  code, err = _cli_train(capsys, f'--gin.MODEL_DIR={path / "run"}')
  assert code == 2 and len(err) == 1 and f"is inside '{path}', which is a file" in err[0]


def test_tfds_task_whose_data_is_not_prepared(tmp_path, capsys, no_compile, monkeypatch):
  from tensorflow_datasets.core import constants
  monkeypatch.setattr(constants, 'DATA_DIR', str(tmp_path / 'tfds'))  # an empty TFDS data dir
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  code, err = _cli_train(capsys, f'--gin.MODEL_DIR={tmp_path / "m"}',
                         "--gin.MIXTURE_OR_TASK_NAME='altup_super_glue_boolq_v102'")
  assert code == 2 and len(err) == 1, err
  assert re.search(r"task 'altup_super_glue_boolq_v102' needs the TFDS dataset super_glue/boolq "
                   r'version 1\.0\.2, which is not prepared in the TFDS data dir \(looked for '
                   + re.escape(str(tmp_path / 'tfds')), err[0]), err[0]


def test_corrupt_checkpoint_names_the_file_and_the_previous_intact_step(trained, tmp_path,
                                                                         no_compile):
  import shutil
  from altup_t5x import eval as eval_lib
  model_dir = tmp_path / 'copy'
  shutil.copytree(trained[0], model_dir)
  ckdir = model_dir / 'checkpoints'
  bad = ckdir / '7' / 'default' / '_METADATA'
  bad.write_bytes(np.random.RandomState(0).bytes(bad.stat().st_size))
  before = sorted(str(p) for p in model_dir.rglob('*'))
  match = (rf'checkpoint {ckdir}/7 is unreadable or corrupt: {bad} \(.*\)\. Nothing was deleted; '
           rf'the previous intact checkpoint is step 6 \({ckdir}/6\)')
  with pytest.raises(cli.RunnerError, match=match):
    _train(model_dir, 9)  # resuming
  _configure('gin/runner/eval.gin', [f'CHECKPOINT_PATH = {str(model_dir)!r}',
                                      f'EVAL_OUTPUT_DIR = {str(tmp_path / "eval")!r}'])
  with pytest.raises(cli.RunnerError, match=match):
    cli.call_configured(eval_lib.evaluate, 'eval')
  assert sorted(str(p) for p in model_dir.rglob('*')) == before  # nothing deleted or added


def test_stderr_filter_drops_only_the_no_cuda_noise(capfd):
  with cli._filtered_stderr(cli._NO_CUDA_NOISE):  # pylint: disable=protected-access
    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written '
                b'to STDERR\nI0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers on '
                b'your machine, GPU will not be used.\nE0000 1 cuda_platform.cc:52] failed call '
                b'to cuInit: INTERNAL: CUDA error\nE0000 1 other.cc:1] a real error\n')
  assert capfd.readouterr().err == 'E0000 1 other.cc:1] a real error\n'


@pytest.mark.skipif(cli.cuda_driver_present(), reason='the noise is dropped only without CUDA')
def test_entry_points_import_tensorflow_without_cuda_noise():
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'CUDA_VISIBLE_DEVICES', 'JAX_PLATFORMS')}
  code = ('from altup_t5x import cli; cli.import_tensorflow_quietly(); import tensorflow as tf; '
          'import jax; print(int(tf.constant(1) + 1), jax.default_backend())')
  proc = subprocess.run([PY, '-c', code], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and proc.stdout.split() == ['2', 'cpu'], proc.stderr
  assert not re.search(r'cuda|cuInit|InitializeLog', proc.stderr, re.I), proc.stderr


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  from altup_t5x import train
  model_dir = tmp_path / 'nan'
  _train(model_dir, 3)
  # An absurd learning rate blows the parameters up; the loss overflows on the next step.
  with pytest.raises(train.NonFiniteLossError, match=r'training loss is (nan|inf).*last good '
                                                     r'checkpoint \(step 3\)'):
    _train(model_dir, 9, 'BASE_LEARNING_RATE = 1e30')
  assert sorted(int(s) for s in os.listdir(model_dir / 'checkpoints') if s.isdigit()) == [3]


# ------------------------------------------------------------------------------------------------
# Meshes: 8 fake CPU devices in a subprocess (no TensorFlow needed: synthetic batches).

MESH_SCRIPT = textwrap.dedent('''
  import json, sys, tempfile
  import jax, jax.numpy as jnp, numpy as np
  from altup_t5x import checkpoints, models, optimizers, partitioning, trainer as trainer_lib
  from altup_t5x.config import AltUpConfig
  from altup_t5x.network import Transformer
  assert jax.device_count() == 8, jax.devices()
  cfg = AltUpConfig(vocab_size=64, emb_dim=8, num_heads=4, head_dim=4, mlp_dim=16,
                    num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.1, altup_k=2)
  model = models.EncoderDecoderModel(Transformer(cfg), z_loss=1e-4,
                                     optimizer=optimizers.adafactor(0.05))
  rng = np.random.RandomState(0)
  def batch():
    t = rng.randint(2, 64, size=(8, 6)).astype(np.int32); t[:, -1] = 0
    return {'encoder_input_tokens': rng.randint(1, 64, size=(8, 10)).astype(np.int32),
            'decoder_target_tokens': t,
            'decoder_input_tokens': np.pad(t[:, :-1], ((0, 0), (1, 0))),
            'decoder_loss_weights': (t > 0).astype(np.int32)}
  batches = [batch() for _ in range(3)]
  shapes = trainer_lib.model_input_shapes({'inputs': 10, 'targets': 6})
  out = {}
  for name, devices, parts in [('1', jax.devices()[:1], 1), ('8x1', None, 1), ('4x2', None, 2),
                               ('2x4', None, 4)]:
    part = partitioning.Partitioner(parts, devices=devices)
    tr = trainer_lib.Trainer(model, part, shapes, seed=0)
    state = tr.init_state()
    losses = []
    for b in batches:
      state, m = tr.train_step(state, part.shard_batch(b))
      losses.append(float(m['loss']))
    out[name] = losses
    if name == '1':
      ckdir = tempfile.mkdtemp()
      ck = checkpoints.Checkpointer(ckdir, async_save=False)
      ck.save(state, 3, wait=True)
      ref_params = jax.device_get(state['params'])
  # Restore the 1-device checkpoint onto a 4x2 mesh.
  part = partitioning.Partitioner(2)
  tr = trainer_lib.Trainer(model, part, shapes, seed=0)
  restored = checkpoints.Checkpointer(ckdir).restore(tr.abstract_state)
  kernel = restored['params']['decoder']['logits_dense']['kernel']
  out['restored_sharding'] = str(kernel.sharding.spec)
  out['restored_equal'] = all(np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(jax.device_get(restored['params'])),
      jax.tree_util.tree_leaves(ref_params)))
  print('RESULT ' + json.dumps(out))
''')


@pytest.mark.slow  # ~1 min idle, ~5 min on the shared 2-core machine (4 meshes compiled)
def test_meshes_give_the_same_loss_and_checkpoints_move_between_meshes():
  env = dict(QUIET_ENV, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  proc = subprocess.run([PY, '-c', MESH_SCRIPT], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  out = json.loads(lines[0][len('RESULT '):])
  print(out)
  for mesh in ('8x1', '4x2', '2x4'):
    np.testing.assert_allclose(out[mesh], out['1'], rtol=1e-5)
  assert out['restored_equal']
  assert 'model' in out['restored_sharding']


# ------------------------------------------------------------------------------------------------
# Kill and resume (subprocesses; slow).

def _train_cmd(model_dir, steps):
  return [PY, '-m', 'altup_t5x.train', f'--gin_search_paths={REPO}',
          *[f'--gin_file={f}' for f in TINY + ['gin/runner/pretrain.gin',
                                                'gin/runner/cpu_tiny.gin']],
          f'--gin.MODEL_DIR={model_dir}', f'--gin.TRAIN_STEPS={steps}',
          '--gin.CHECKPOINT_PERIOD=2', '--gin.KEEP_CHECKPOINTS=3']


def _start_and_kill_at(model_dir, steps, at_step, sig):
  proc = subprocess.Popen(_train_cmd(model_dir, steps), cwd=REPO, env=QUIET_ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  path = os.path.join(model_dir, 'train_metrics.jsonl')
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and max(_losses(model_dir), default=0) >= at_step:
      break
    time.sleep(0.2)
  assert proc.poll() is None, proc.stdout.read()[-3000:]
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=300)
  return proc.returncode, out


@pytest.mark.slow
def test_sigterm_and_kill9_then_resume_match_an_uninterrupted_run(tmp_path):
  steps = 14
  ref_dir = tmp_path / 'ref'
  subprocess.run(_train_cmd(ref_dir, steps), cwd=REPO, env=QUIET_ENV, check=True,
                 capture_output=True, timeout=600)
  reference = _losses(ref_dir)

  run_dir = tmp_path / 'run'
  code, out = _start_and_kill_at(run_dir, steps, 5, signal.SIGTERM)
  assert code == 0 and 'SIGTERM: saved step' in out, out[-3000:]
  sigterm_step = max(int(s) for s in os.listdir(run_dir / 'checkpoints') if s.isdigit())
  code, out = _start_and_kill_at(run_dir, steps, sigterm_step + 4, signal.SIGKILL)
  assert code == -signal.SIGKILL
  # Only finalised checkpoints are listed; a write cut by kill -9 is a temporary dir at most.
  entries = os.listdir(run_dir / 'checkpoints')
  steps_on_disk = sorted(int(s) for s in entries if s.isdigit())
  for s in steps_on_disk:
    assert os.path.exists(run_dir / 'checkpoints' / str(s) / '_CHECKPOINT_METADATA')
  proc = subprocess.run(_train_cmd(run_dir, steps), cwd=REPO, env=QUIET_ENV, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert f'resumed from' in proc.stdout
  resumed = _losses(run_dir)
  assert sorted(resumed) == sorted(reference) == list(range(1, steps + 1))
  for s in range(1, steps + 1):
    assert resumed[s] == pytest.approx(reference[s], rel=1e-6, abs=1e-6), s

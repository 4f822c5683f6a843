"""The T5X route to a SuperGLUE submission, end to end on mock data (runs where T5X is installed).

Real `t5x.train` finetunes the tiny smoke model (from tests/testdata/t5x_tiny_dense, a checkpoint
real T5X wrote) on the SuperGLUE mixture for 6 steps, saving every 2; `t5x.eval` evaluates every
checkpoint of the model dir (RestoreCheckpointConfig.mode='all'); `t5x.infer` decodes the test
split of every SuperGLUE task with gin/t5x_infer_super_glue_test.gin; altup_t5x.leaderboard turns
that output into the submission zip. The scripts run unchanged through tests/t5x_mock_super_glue.py,
which replaces the TFDS super_glue splits by a few rows and gives the tasks the smoke model's
vocabulary. A few minutes on 2 CPU cores (each script imports T5X and compiles), hence `slow`.
"""
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

HAS_T5X = importlib.util.find_spec('t5x') is not None
pytestmark = [
    pytest.mark.t5x,
    pytest.mark.skipif(not HAS_T5X, reason='T5X is not installed (it is not on PyPI; see README '
                       '"Running with T5X")')]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_PATH = os.path.join(REPO, 'tests', 't5x_mock_super_glue.py')
MIXTURE = 'altup_super_glue_v102_proportional'
FINETUNE_STEPS, PERIOD, START = 6, 2, 20


def _mock_module():
  spec = importlib.util.spec_from_file_location('t5x_mock_super_glue', MOCK_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(log_dir, name, args):
  """Runs `python tests/t5x_mock_super_glue.py <args>` from the repository root; its output."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2')
  out = subprocess.run([sys.executable, MOCK_PATH] + args, cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=1800)
  log = out.stdout + out.stderr
  with open(os.path.join(log_dir, f'{name}.log'), 'w') as f:
    f.write(log)
  assert out.returncode == 0, f'{name} failed:\n' + log[-6000:]
  return log


def _steps(model_dir):
  return sorted(int(n.split('_')[1]) for n in os.listdir(model_dir)
                if re.fullmatch(r'checkpoint_\d+', n))


@pytest.mark.parametrize('benchmark', ['glue', 'super_glue'])
def test_test_split_gin_as_t5x_infer_parses_it(benchmark, monkeypatch):
  """An infer config + gin/t5x_infer_<benchmark>_test.gin, as `python -m t5x.infer` parses them."""
  import gin  # pylint: disable=g-import-not-at-top
  import t5x  # pylint: disable=g-import-not-at-top
  from altup_t5x import leaderboard as lb  # pylint: disable=g-import-not-at-top
  script = importlib.import_module('t5x.infer')
  monkeypatch.setitem(sys.modules, '__main__', script)  # the run gins bind __main__.infer
  monkeypatch.chdir(REPO)
  gin.clear_config()
  gin.add_config_file_search_path(os.path.dirname(os.path.dirname(os.path.abspath(t5x.__file__))))
  try:
    gin.parse_config_files_and_bindings(
        [f'configs/infer/{benchmark}_small_baseline.gin', lb.TEST_GINS[benchmark]],
        ["CHECKPOINT_PATH = '/tmp/unused'", "INFER_OUTPUT_DIR = '/tmp/unused'"],
        finalize_config=True)
    assert gin.query_parameter('utils.DatasetConfig.split') == 'test'
    assert gin.query_parameter('MIXTURE_OR_TASK_NAME/macro.value') == lb.TEST_MIXTURES[benchmark]
    fields = gin.query_parameter('write_inferences_to_file.input_fields_to_include')
    assert set(lb.MULTIRC_IDS + lb.RECORD_IDS + ('idx',)) <= set(fields)
    write_fn = gin.query_parameter('infer.write_fn')
    assert write_fn.selector == 'infer_script.write_inferences_to_file'  # T5X's writer, configured
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_finetune_eval_every_checkpoint_infer_test_split_and_export(tmp_path):
  mock = _mock_module()
  from altup_t5x import leaderboard as lb  # pylint: disable=g-import-not-at-top
  pretrained = tmp_path / 'pretrained' / f'checkpoint_{START}'
  shutil.copytree(os.path.join(REPO, 'tests', 'testdata', 't5x_tiny_dense'), pretrained)
  model, eval_dir, infer_dir = tmp_path / 'model', tmp_path / 'eval', tmp_path / 'infer'
  summary = {}

  # 1. Finetune: T5X's train on the mock SuperGLUE mixture.
  log = _run(tmp_path, 'finetune', [
      't5x.train', '--gin_file=configs/smoke/tiny_baseline_finetune.gin',
      f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained}'", f"--gin.MODEL_DIR='{model}'",
      f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'", f'--gin.TRAIN_STEPS={START + FINETUNE_STEPS}',
      f'--gin.utils.SaveCheckpointConfig.period={PERIOD}',
      f'--gin.EVAL_PERIOD={FINETUNE_STEPS}'])
  losses = {int(s): float(v) for s, v in
            re.findall(r'\[(\d+)\] collection=train .*?[ ,]loss=([-0-9.eE+]+)', log)}
  assert sorted(losses) == list(range(START + PERIOD, START + FINETUNE_STEPS + 1, PERIOD))
  assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
  steps = _steps(model)
  assert steps == list(range(START, START + FINETUNE_STEPS + 1, PERIOD))
  summary['train_loss'] = losses
  summary['checkpoints'] = steps

  # 2. Evaluate every checkpoint of the model dir.
  _run(tmp_path, 'eval', [
      't5x.eval', '--gin_file=configs/smoke/tiny_baseline_eval.gin',
      f"--gin.CHECKPOINT_PATH='{model}'", f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'",
      f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'", "--gin.utils.RestoreCheckpointConfig.mode='all'"])
  evaluated = open(eval_dir / f'eval.{MIXTURE}.ckpt').read().split()
  assert evaluated == [str(model / f'checkpoint_{s}') for s in steps]
  metric_files = sorted((eval_dir / 'inference_eval').glob('*-metrics.jsonl'))
  assert len(metric_files) == 8  # the eight SuperGLUE tasks; the diagnostics are test-only
  for path in metric_files:
    assert [json.loads(line)['step'] for line in open(path)] == steps, path
  summary['checkpoints_evaluated'] = len(evaluated)
  summary['eval_metrics'] = {p.name[:-len('-metrics.jsonl')]: json.loads(open(p).readlines()[-1])
                             for p in metric_files}

  # 3. Decode the test split of every leaderboard task.
  _run(tmp_path, 'infer', [
      't5x.infer', '--gin_file=configs/smoke/tiny_baseline_infer.gin',
      '--gin_file=gin/t5x_infer_super_glue_test.gin',
      f"--gin.CHECKPOINT_PATH='{model / f'checkpoint_{steps[-1]}'}'",
      f"--gin.INFER_OUTPUT_DIR='{infer_dir}'"])
  predictions = {}
  for entry in lb.FILES['super_glue']:
    path = infer_dir / f'{entry.task}-predict.jsonl-00000-of-00001'
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == mock.NUM_ROWS['test'], path
    keys = {'multirc': lb.MULTIRC_IDS, 'record': lb.RECORD_IDS}.get(entry.style, ('idx',))
    assert all(set(keys) <= set(r['inputs']) and r['inputs']['targets_pretokenized'] == '<unk>'
               for r in rows), rows[0]
    predictions[entry.task] = len(rows)
  summary['predictions'] = predictions

  # 4. The submission, ids checked against the (mock) test split.
  out = str(tmp_path / 'super_glue.zip')
  with mock.mock():
    try:
      lb.export('super_glue', [str(infer_dir)], out)
      summary['refused'] = None
    except lb.LeaderboardError as e:  # a 6-step tiny model decodes few valid labels
      problems = str(e).splitlines()[1:]
      assert problems and all('predictions are not a label of the task' in p for p in problems), e
      assert not os.path.exists(out)
      summary['refused'] = len(problems)
      report = lb.export('super_glue', [str(infer_dir)], out, unknown_label='first')
      summary['report'] = report
  with zipfile.ZipFile(out) as z:
    texts = {n: z.read(n).decode() for n in z.namelist()}
  assert sorted(texts) == sorted(e.filename for e in lb.FILES['super_glue'])
  for entry in lb.FILES['super_glue']:
    lines = [json.loads(line) for line in texts[entry.filename].splitlines()]
    config = re.sub(r'^altup_super_glue_|_v102$', '', entry.task)
    test_rows = mock.rows('wsc.fixed' if config == 'wsc' else config, 'test')
    if entry.style == 'multirc':
      got = [(p['idx'], q['idx'], a['idx']) for p in lines for q in p['passage']['questions']
             for a in q['answers']]
      assert got == [(r['idx']['paragraph'], r['idx']['question'], r['idx']['answer'])
                     for r in test_rows]
    elif entry.style == 'record':
      assert [x['idx'] for x in lines] == [r['idx']['query'] for r in test_rows]
    else:
      assert [x['idx'] for x in lines] == [r['idx'] for r in test_rows]
  summary['files'] = {n: [len(t.splitlines()), t.splitlines()[0]] for n, t in sorted(texts.items())}

  # The same export from the command line, ids checked against the mock split's sizes.
  sizes = ','.join(f'{e.name}={mock.NUM_ROWS["test"]}' for e in lb.FILES['super_glue'])
  cli = subprocess.run(
      [sys.executable, '-m', 'altup_t5x.leaderboard', '--benchmark=super_glue',
       f'--predictions={infer_dir}', f'--output={tmp_path / "cli.zip"}', '--ids_from=size',
       f'--test_sizes={sizes}', '--unknown_label=first'],
      cwd=REPO, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert cli.returncode == 0, cli.stderr
  with zipfile.ZipFile(tmp_path / 'cli.zip') as z:
    assert {n: z.read(n).decode() for n in z.namelist()} == texts
  print('\nT5X route summary:', json.dumps(summary, indent=1, default=str))

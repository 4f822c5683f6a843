"""Leaderboard submissions (altup_t5x.leaderboard) from mock test splits, against golden files.

Every TFDS test split is replaced by a few hand-written rows (tfds.testing.mock_data); each task's
seqio pipeline turns them into examples, a fake model predicts each example's target, and the
predictions are written as T5X's `t5x.infer` and the runner's `altup_t5x.infer` write them. The
submission must then equal tests/testdata/leaderboard/<file>, written by hand in the formats of
the leaderboards' own toolkit (jiant; see the note at the top of altup_t5x/leaderboard.py).
"""
import functools
import json
import os
import shutil
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from altup_t5x import eval as eval_lib
from altup_t5x import leaderboard as lb
from altup_t5x.data import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, 'tests', 'testdata', 'leaderboard')
LENGTHS = {'inputs': 128, 'targets': 24}


def _nli(pairs, a='premise', b='hypothesis'):
  return [{a: f'First {i}.', b: f'Second {i}.', 'label': label, 'idx': i} for i, label in pairs]


# Rows of each TFDS test split, some out of id order (the files must come out sorted by id).
ROWS = {
    'super_glue/boolq': [{'question': f'q{i}', 'passage': f'p{i}', 'label': label, 'idx': i}
                         for i, label in ((1, 0), (0, 1), (2, 1))],
    'super_glue/cb': _nli([(2, 2), (0, 0), (1, 1)]),
    'super_glue/copa': [{'premise': 'P.', 'choice1': 'A.', 'choice2': 'B.', 'question': 'cause',
                         'label': label, 'idx': i} for i, label in ((0, 1), (1, 0))],
    'super_glue/multirc': [
        {'paragraph': f'Par {p}.', 'question': f'Q {q}?', 'answer': f'A {a}', 'label': label,
         'idx': {'paragraph': p, 'question': q, 'answer': a}}
        for p, q, a, label in ((0, 1, 2, 0), (1, 2, 3, 1), (0, 0, 1, 0), (0, 0, 0, 1))],
    'super_glue/record': [
        {'passage': 'Paris is big.', 'query': '@placeholder is big.', 'entities': ['Paris'],
         'answers': ['Paris'], 'idx': {'passage': 0, 'query': 0}},
        {'passage': 'Bob Smith ran.', 'query': '@placeholder ran.',
         'entities': ['Bob Smith', 'Bob'], 'answers': ['Bob Smith'],
         'idx': {'passage': 1, 'query': 1}}],
    'super_glue/rte': _nli([(1, 0), (0, 1)]),
    'super_glue/wic': [{'sentence1': 'A bank.', 'sentence2': 'The bank.', 'word': 'bank',
                        'start1': 2, 'start2': 4, 'end1': 6, 'end2': 8, 'label': label, 'idx': i}
                       for i, label in ((0, 1), (1, 0))],
    'super_glue/wsc.fixed': [{'text': 'Mark told Pete he lied.', 'span1_text': 'Mark',
                              'span1_index': 0, 'span2_text': 'he', 'span2_index': 3,
                              'label': label, 'idx': i} for i, label in ((1, 1), (0, 0))],
    'super_glue/axb': _nli([(0, 0), (1, 1)], a='sentence1', b='sentence2'),
    'super_glue/axg': _nli([(1, 0), (0, 1)]),
    'glue/cola': [{'sentence': f'S {i}.', 'label': label, 'idx': i}
                  for i, label in ((0, 1), (1, 0))],
    'glue/sst2': [{'sentence': f'S {i}.', 'label': label, 'idx': i}
                  for i, label in ((1, 1), (0, 0))],
    'glue/mrpc': _nli([(0, 1), (1, 0)], a='sentence1', b='sentence2'),
    'glue/stsb': [{'sentence1': 'A.', 'sentence2': 'B.', 'label': np.float32(v), 'idx': i}
                  for i, v in ((2, 5.0), (0, 3.4), (1, 0.0))],
    'glue/qqp': _nli([(0, 1), (1, 0)], a='question1', b='question2'),
    'glue/mnli_matched': _nli([(0, 0), (1, 1), (2, 2)]),
    'glue/mnli_mismatched': _nli([(1, 0), (0, 2)]),
    'glue/qnli': _nli([(0, 1), (1, 0)], a='question', b='sentence'),
    'glue/rte': _nli([(0, 0), (1, 1)], a='sentence1', b='sentence2'),
    'glue/wnli': _nli([(0, 1), (1, 0)], a='sentence1', b='sentence2'),
    'glue/ax': _nli([(2, 0), (0, 2), (1, 1)]),
}


def _as_dataset(self, split, **unused_kwargs):
  assert str(split) == 'test', split
  key = f'{self.name}/{self.builder_config.name}'
  return functools.reduce(lambda a, b: a.concatenate(b),
                          [tf.data.Dataset.from_tensors(r) for r in ROWS[key]])


def _mock():
  return tfds.testing.mock_data(as_dataset_fn=_as_dataset)


@pytest.fixture(scope='module')
def examples():
  """{seqio task: its preprocessed test examples} for every leaderboard file."""
  # Bytes: offline, and decoding gives back every target string exactly (the runner decodes ids).
  tasks.register_tasks(vocabulary=seqio.ByteVocabulary())
  out = {}
  with _mock():
    for entry in lb.FILES['glue'] + lb.FILES['super_glue']:
      task = seqio.get_mixture_or_task(entry.task)
      ds = task.get_dataset(LENGTHS, split='test', shuffle=False, use_cached=False,
                            try_in_mem_cache=False)
      out[entry.task] = list(ds.as_numpy_iterator())
  yield out
  tasks.register_tasks()


def _json_compat(value):
  """As T5X's write_inferences_to_file stores a feature: ints become floats, bytes str."""
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.integer):
    return float(value)
  return value.tolist() if isinstance(value, np.ndarray) else value


def _kept(ex):
  """The features gin/t5x_infer_test_split.gin keeps (input_fields_to_include)."""
  fields = ('idx', 'idx/paragraph', 'idx/question', 'idx/answer', 'idx/passage', 'idx/query',
            'inputs_pretokenized', 'targets_pretokenized')
  return {k: _json_compat(v) for k, v in ex.items() if k in fields}


def write_t5x(out_dir, examples, benchmark, shards=1, keep_ids=True):
  """T5X's files, <task>-predict.jsonl-SSSSS-of-NNNNN; the fake model predicts the target."""
  os.makedirs(out_dir, exist_ok=True)
  for entry in lb.FILES[benchmark]:
    exs = examples[entry.task]
    for shard in range(shards):
      lines = []
      for ex in exs[shard::shards]:
        inputs = _kept(ex) if keep_ids else {k: _json_compat(v) for k, v in ex.items()
                                             if k.endswith('_pretokenized')}
        lines.append(json.dumps({'inputs': inputs,
                                 'prediction': ex['targets_pretokenized'].decode()}))
      name = f'{entry.task}-predict.jsonl-{shard:05d}-of-{shards:05d}'
      with open(os.path.join(out_dir, name), 'w') as f:
        f.write(''.join(line + '\n' for line in lines))
  return out_dir


class _TeacherTrainer:
  """A 'model' whose decodes are the example's target tokens, for eval.predict_examples."""
  partitioner = types.SimpleNamespace(shard_batch=lambda batch: batch)

  def predict_step(self, params, batch, num_decodes=1, decoder_params=None):
    del params, num_decodes, decoder_params
    tokens = batch['decoder_target_tokens']
    return tokens, {'scores': np.zeros(tokens.shape[0], np.float32)}


def write_runner(out_dir, examples, benchmark):
  """The runner's files, <task>-predict.jsonl: eval.predict_examples' rows, as infer.py writes."""
  os.makedirs(out_dir, exist_ok=True)
  cfg = types.SimpleNamespace(batch_size=2, task_feature_lengths=LENGTHS)
  for entry in lb.FILES[benchmark]:
    task = seqio.get_mixture_or_task(entry.task)
    rows = eval_lib.predict_examples(_TeacherTrainer(), None, task, cfg, examples[entry.task])
    with open(os.path.join(out_dir, f'{entry.task}-predict.jsonl'), 'w') as f:
      for r in rows:
        f.write(json.dumps(r) + '\n')
  return out_dir


def _zip_texts(path):
  with zipfile.ZipFile(path) as z:
    return {n: z.read(n).decode() for n in z.namelist()}


def _golden(benchmark):
  return {e.filename: open(os.path.join(GOLDEN, e.filename)).read() for e in lb.FILES[benchmark]}


@pytest.mark.parametrize('benchmark', lb.BENCHMARKS)
def test_t5x_predictions_make_the_golden_submission(benchmark, examples, tmp_path):
  preds = write_t5x(str(tmp_path / 'infer'), examples, benchmark)
  out = str(tmp_path / 'submission.zip')
  with _mock():
    report = lb.export(benchmark, [preds], out)
  texts = _zip_texts(out)
  assert texts == _golden(benchmark)  # every file, at the zip's root, nothing else
  assert len(texts) == {'glue': 11, 'super_glue': 10}[benchmark]
  assert report[-1] == f'wrote {out} ({len(texts)} files)'
  assert all('ids checked against the TFDS test split' in line for line in report[:-1])


@pytest.mark.parametrize('benchmark', lb.BENCHMARKS)
def test_runner_predictions_make_the_golden_submission(benchmark, examples, tmp_path):
  preds = write_runner(str(tmp_path / 'infer'), examples, benchmark)
  out = str(tmp_path / 'submission.zip')
  with _mock():
    lb.export(benchmark, [preds], out, fmt='runner')
  assert _zip_texts(out) == _golden(benchmark)


def test_runner_rows_carry_the_example_ids(examples):
  task = seqio.get_mixture_or_task(tasks.super_glue_task_name('multirc'))
  cfg = types.SimpleNamespace(batch_size=3, task_feature_lengths=LENGTHS)
  rows = eval_lib.predict_examples(_TeacherTrainer(), None, task, cfg, examples[task.name])
  got = [(r['idx/paragraph'], r['idx/question'], r['idx/answer'], r['prediction']) for r in rows]
  want = [(r['idx']['paragraph'], r['idx']['question'], r['idx']['answer'],
           ('False', 'True')[r['label']]) for r in ROWS['super_glue/multirc']]
  assert got == want


def test_sharded_t5x_output_and_predictions_in_two_directories(examples, tmp_path):
  """All shards of a run are read; the diagnostic sets may come from another directory."""
  preds = write_t5x(str(tmp_path / 'main'), examples, 'glue', shards=2)
  other = tmp_path / 'mnli_model'
  other.mkdir()
  for name in os.listdir(preds):
    if name.startswith(tasks.glue_task_name('ax')):
      shutil.move(os.path.join(preds, name), other / name)
  out = str(tmp_path / 'glue.zip')
  with _mock():
    lb.export('glue', [preds, str(other)], out)
  assert _zip_texts(out) == _golden('glue')
  os.remove(os.path.join(preds, f'{tasks.glue_task_name("cola")}-predict.jsonl-00001-of-00002'))
  with _mock(), pytest.raises(lb.LeaderboardError, match=r'altup_glue_cola_v2: T5X shards \[0\]'):
    lb.export('glue', [preds, str(other)], out)


def _edit(path, fn):
  """Rewrites a JSONL file with fn(list of row dicts) -> list of row dicts."""
  rows = [json.loads(line) for line in open(path)]
  with open(path, 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in fn(rows)))


def _t5x_file(preds, short, benchmark='super_glue'):
  name = (tasks.super_glue_task_name(short) if benchmark == 'super_glue'
          else tasks.glue_task_name(short))
  return os.path.join(preds, f'{name}-predict.jsonl-00000-of-00001')


def _set_prediction(idx, text):
  def fn(rows):
    for r in rows:
      if r['inputs']['idx'] == idx:
        r['prediction'] = text
    return rows
  return fn


def _refused(benchmark, preds, out, match, **kwargs):
  """The export raises LeaderboardError matching `match` and leaves `out` as it was."""
  before = open(out, 'rb').read() if os.path.exists(out) else None
  with _mock(), pytest.raises(lb.LeaderboardError, match=match) as err:
    lb.export(benchmark, [preds], out, **kwargs)
  after = open(out, 'rb').read() if os.path.exists(out) else None
  assert after == before
  assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith('.tmp-')]
  return str(err.value)


@pytest.fixture
def valid(examples, tmp_path):
  """(predictions dir, output path holding an earlier valid submission) for SuperGLUE."""
  preds = write_t5x(str(tmp_path / 'infer'), examples, 'super_glue')
  out = str(tmp_path / 'submission.zip')
  with _mock():
    lb.export('super_glue', [preds], out)
  return preds, out


def test_refuses_missing_ids(valid):
  preds, out = valid
  _edit(_t5x_file(preds, 'boolq'), lambda rows: [r for r in rows if r['inputs']['idx'] != 1])
  msg = _refused('super_glue', preds, out, r'BoolQ\.jsonl \(altup_super_glue_boolq_v102\): 1 of 3 '
                 r'ids of the TFDS test split have no prediction: 1$')
  assert msg.startswith('no submission written:')


def test_refuses_missing_multirc_answers(valid):
  preds, out = valid
  _edit(_t5x_file(preds, 'multirc'), lambda rows: rows[1:])
  _refused('super_glue', preds, out, r'MultiRC\.jsonl .*1 of 4 ids of the TFDS test split have no '
           r'prediction: \(0, 1, 2\)')


def test_refuses_duplicate_ids_and_reports_every_problem_at_once(valid):
  preds, out = valid
  _edit(_t5x_file(preds, 'cb'), lambda rows: rows + rows[:1])
  _edit(_t5x_file(preds, 'wic'), _set_prediction(1.0, 'maybe'))
  _edit(_t5x_file(preds, 'wsc'), _set_prediction(0.0, '<extra_id_1>'))
  _edit(_t5x_file(preds, 'wsc'), _set_prediction(1.0, '<extra_id_1>'))
  msg = _refused('super_glue', preds, out, r'CB\.jsonl .*1 ids predicted more than once: 2')
  assert "WSC.jsonl (altup_super_glue_wsc_v102): 2 of 2 predictions are not a label of the task " \
         "(allowed: 'False', 'True'): '<extra_id_1>' (2 ids: 0, 1)" in msg
  assert "WiC.jsonl (altup_super_glue_wic_v102): 1 of 2 predictions are not a label of the task " \
         "(allowed: 'False', 'True'): 'maybe' (id 1)" in msg


def test_unknown_labels_refused_or_written_as_the_first_label(valid):
  preds, out = valid
  _edit(_t5x_file(preds, 'cb'), _set_prediction(0.0, 'entail'))
  _edit(_t5x_file(preds, 'cb'), _set_prediction(2.0, ''))
  _refused('super_glue', preds, out, r"CB\.jsonl .*2 of 3 predictions are not a label of the task "
           r"\(allowed: 'entailment', 'contradiction', 'neutral'\): 'entail' \(id 0\); '' \(id 2\)")
  with _mock():
    report = lb.export('super_glue', [preds], out, unknown_label='first')
  assert 'CB.jsonl: 3 predictions, 3 lines (ids checked against the TFDS test split, 2 unknown ' \
         'labels written as the first)' in report
  assert _zip_texts(out)['CB.jsonl'] == ''.join(
      json.dumps({'idx': i, 'label': label}) + '\n'
      for i, label in ((0, 'entailment'), (1, 'contradiction'), (2, 'entailment')))


def test_stsb_out_of_range_or_not_a_number(examples, tmp_path):
  preds = write_t5x(str(tmp_path / 'infer'), examples, 'glue')
  out = str(tmp_path / 'glue.zip')
  path = _t5x_file(preds, 'stsb', 'glue')
  _edit(path, _set_prediction(0.0, '7.5'))
  _edit(path, _set_prediction(1.0, 'similar'))
  _refused('glue', preds, out, r"STS-B\.tsv .*2 of 3 predictions are not a label of the task "
           r"\(allowed: a number in \[0, 5\]\): '7\.5' \(id 0\); 'similar' \(id 1\)")
  with _mock():
    lb.export('glue', [preds], out, unknown_label='first')
  assert _zip_texts(out)['STS-B.tsv'] == 'index\tprediction\n0\t5.000\n1\t0.000\n2\t5.000\n'


def test_refuses_a_missing_task_and_writes_nothing(valid, tmp_path):
  preds, out = valid
  os.remove(_t5x_file(preds, 'axg'))
  msg = _refused('super_glue', preds, out, r'no predictions for 1 of the 10 files')
  assert 'AX-g.jsonl (altup_super_glue_axg_v102)' in msg and 'RTE model' in msg
  fresh = str(tmp_path / 'new.zip')
  _refused('super_glue', preds, fresh, r'no predictions for 1 of the 10 files')
  assert not os.path.exists(fresh)


def test_refuses_t5x_output_without_ids(examples, tmp_path):
  preds = write_t5x(str(tmp_path / 'infer'), examples, 'super_glue', keep_ids=False)
  _refused('super_glue', preds, str(tmp_path / 'x.zip'),
           r"example ids \['idx'\] are not in the predictions.*gin/t5x_infer_super_glue_test\.gin")


def test_ids_against_published_sizes_without_the_split(valid):
  """No TFDS data: ids must be 0..n-1 of the published size (MultiRC/ReCoRD: the count)."""
  preds, out = valid
  sizes = {e.name: len(ROWS[k]) for e, k in zip(lb.FILES['super_glue'], (
      'super_glue/boolq', 'super_glue/cb', 'super_glue/copa', 'super_glue/multirc',
      'super_glue/record', 'super_glue/rte', 'super_glue/wic', 'super_glue/wsc.fixed',
      'super_glue/axb', 'super_glue/axg'))}
  report = lb.export('super_glue', [preds], out, ids_from='size', test_sizes=sizes)
  assert _zip_texts(out) == _golden('super_glue')
  assert 'BoolQ.jsonl: 3 predictions, 3 lines (ids checked against 3 test examples ' \
         '(--test_sizes))' in report
  msg = _refused('super_glue', preds, out, r'BoolQ\.jsonl .*3242 of 3245 ids of the test split\'s '
                 r'ids 0\.\.3244 have no prediction: 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 and 3232 more',
                 ids_from='size')
  assert 'MultiRC.jsonl (altup_super_glue_multirc_v102): 4 distinct ids, the test split has 9693 ' \
         '(answers)' in msg
  with pytest.raises(lb.LeaderboardError, match="--test_sizes: 'BoolQ.jsonl' is not a super_glue"):
    lb.export('super_glue', [preds], out, ids_from='size', test_sizes={'BoolQ.jsonl': 3})


def test_published_sizes_add_up():
  """MNLI's two test sets are jiant's 19643 (its check for a complete MNLI submission)."""
  sizes = {e.name: e.test_size for e in lb.FILES['glue']}
  assert sizes['MNLI-m'] + sizes['MNLI-mm'] == 19643
  assert [e.filename for e in lb.FILES['super_glue']] == [
      'BoolQ.jsonl', 'CB.jsonl', 'COPA.jsonl', 'MultiRC.jsonl', 'ReCoRD.jsonl', 'RTE.jsonl',
      'WiC.jsonl', 'WSC.jsonl', 'AX-b.jsonl', 'AX-g.jsonl']
  assert [e.filename for e in lb.FILES['glue']] == [
      'CoLA.tsv', 'SST-2.tsv', 'MRPC.tsv', 'STS-B.tsv', 'QQP.tsv', 'MNLI-m.tsv', 'MNLI-mm.tsv',
      'QNLI.tsv', 'RTE.tsv', 'WNLI.tsv', 'AX.tsv']


def test_test_mixtures_hold_exactly_the_leaderboard_tasks(examples):
  for benchmark, mixture in lb.TEST_MIXTURES.items():
    subtasks = seqio.get_mixture_or_task(mixture).tasks
    assert sorted(t.name for t in subtasks) == sorted(e.task for e in lb.FILES[benchmark])
    assert all('test' in t.splits for t in subtasks)


def test_diagnostic_sets_read_as_their_training_task(examples):
  """AX in MNLI's format, AX-b and AX-g in SuperGLUE RTE's (AX-b's sentence1/2 as premise/hyp.)."""
  def first(short, sg=True):
    name = tasks.super_glue_task_name(short) if sg else tasks.glue_task_name(short)
    ex = examples[name][0]
    return ex['inputs_pretokenized'].decode(), ex['targets_pretokenized'].decode()
  assert first('axb') == ('rte hypothesis: Second 0. premise: First 0.', 'entailment')
  assert first('axg') == ('rte hypothesis: Second 1. premise: First 1.', 'entailment')
  assert first('rte') == ('rte hypothesis: Second 1. premise: First 1.', 'entailment')
  assert first('ax', sg=False) == ('mnli hypothesis: Second 2. premise: First 2.', 'entailment')
  assert first('mnli_matched', sg=False)[0] == 'mnli hypothesis: Second 0. premise: First 0.'


def test_bad_settings_are_named(valid, tmp_path):
  preds, out = valid
  with pytest.raises(lb.LeaderboardError, match=r'--output=.*x\.txt: expected a \.zip'):
    lb.export('super_glue', [preds], str(tmp_path / 'x.txt'))
  with pytest.raises(lb.LeaderboardError, match=r'--output=.*: the directory .*nowhere does not'):
    lb.export('super_glue', [preds], str(tmp_path / 'nowhere' / 'x.zip'))
  with pytest.raises(lb.LeaderboardError, match=r'--predictions: .*missing does not exist'):
    lb.export('super_glue', [str(tmp_path / 'missing')], out)
  with pytest.raises(lb.LeaderboardError, match=r"--benchmark='glue2'"):
    lb.export('glue2', [preds], out)
  with pytest.raises(lb.LeaderboardError, match=r'more than one format \(runner, t5x:predict\)'):
    runner = tasks.super_glue_task_name('cb') + '-predict.jsonl'
    shutil.copy(_t5x_file(preds, 'cb'), os.path.join(preds, runner))
    lb.export('super_glue', [preds], out)


def test_command_line(valid, tmp_path):
  """`python -m altup_t5x.leaderboard`: the report on success, exit status 2 and ERROR otherwise."""
  preds, out = valid
  sizes = 'BoolQ=3,CB=3,COPA=2,MultiRC=4,ReCoRD=2,RTE=2,WiC=2,WSC=2,AX-b=2,AX-g=2'
  fresh = str(tmp_path / 'cli.zip')
  cmd = [sys.executable, '-m', 'altup_t5x.leaderboard', '--benchmark=super_glue',
         f'--predictions={preds}', f'--output={fresh}', '--ids_from=size']
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  ok = subprocess.run(cmd + [f'--test_sizes={sizes}'], capture_output=True, text=True, cwd=REPO,
                      env=env)
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.splitlines()[-1] == f'wrote {fresh} (10 files)'
  assert _zip_texts(fresh) == _golden('super_glue')
  os.remove(fresh)
  bad = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
  assert bad.returncode == 2
  assert 'ERROR: no submission written:' in bad.stderr and 'of 3245 ids' in bad.stderr
  assert not os.path.exists(fresh)


def test_a_limited_runner_run_is_named(examples, tmp_path):
  preds = write_runner(str(tmp_path / 'infer'), examples, 'glue')
  path = os.path.join(preds, f'{tasks.glue_task_name("cola")}-predict.jsonl')
  _edit(path, lambda rows: rows[:1])
  _refused('glue', preds, str(tmp_path / 'glue.zip'),
           r'CoLA\.tsv \(altup_glue_cola_v2\): 1 of 2 ids of the TFDS test split have no '
           r'prediction: 1\n.*CoLA\.tsv .*--gin\.MAX_EXAMPLES=None')


def test_refuses_a_list_of_decodes(valid):
  preds, out = valid
  _edit(_t5x_file(preds, 'rte'), lambda rows: [dict(r, prediction=[r['prediction']] * 2)
                                               for r in rows])
  with pytest.raises(lb.LeaderboardError, match=r'-predict\.jsonl-00000-of-00001:1: the prediction '
                     r'is list .*decode one answer per example'):
    lb.export('super_glue', [preds], out)
